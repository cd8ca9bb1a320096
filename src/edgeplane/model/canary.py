"""Canaries compiled into the rules they drive: what a node serves while a canary runs.

A canary owns the routing of one rule: while its weight is released, the rule's final
`proxy: {upstream: stable}` becomes a `split` of stable and canary by that weight (with the
canary's sticky key or cookie), and a copy of the rule with the canary's `match` conditions, placed
just before it, proxies to the canary. The rule as its author wrote it is never edited: a
canary without a released weight (not started, rolled back, aborted) leaves it as it is.
Pure model to model; the node compiles the result like any other rules.
"""

from __future__ import annotations

from .config import Application, Canary, Config, Proxy, Rule, Split, WeightedUpstream

CANARY_KINDS = ("canaries", "canary_weights")  # kinds that change nothing but the applications they route


def with_canaries(config: Config) -> Config:
    """`config` with every canary whose weight is released compiled into its rule."""
    weights = {w.name: w.weight for w in config.canary_weights}
    running = [c for c in config.canaries if c.name in weights]
    if not running:
        return config
    applications = []
    for app in config.applications:
        mine = [c for c in running if c.application == app.name]
        applications.append(routed(app, mine, weights) if mine else app)
    return config.model_copy(update={"applications": applications})


def routed(app: Application, canaries: list[Canary], weights: dict[str, int]) -> Application:
    rules: list[Rule] = []
    for rule in app.rules:
        canary = next((c for c in canaries if rule.name == c.rule), None)
        if canary is None or not isinstance(rule.actions[-1], Proxy):
            rules.append(rule)
            continue
        proxy = rule.actions[-1]
        if canary.match:
            to_canary = proxy.model_copy(update={"upstream": canary.canary})
            rules.append(rule.model_copy(update={"conditions": [*rule.conditions, *canary.match],
                                                 "actions": [*rule.actions[:-1], to_canary]}))
        rules.append(rule.model_copy(update={"actions": [*rule.actions[:-1], split_of(canary, proxy,
                                                                                        weights[canary.name])]}))
    return app.model_copy(update={"rules": rules})


def split_of(canary: Canary, proxy: Proxy, weight: int) -> Split:
    """Stable first, canary last: with a sticky key, users only move toward the canary as it grows."""
    return Split(upstreams=[WeightedUpstream(upstream=canary.stable, weight=100 - weight),
                            WeightedUpstream(upstream=canary.canary, weight=weight)],
                 sticky=canary.sticky, cookie=canary.cookie, cookie_max_age=canary.cookie_max_age,
                 timeout=proxy.timeout, backend_timeout=proxy.backend_timeout, retry=proxy.retry)

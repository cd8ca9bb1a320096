"""The access phase: compiles `authenticate` and `rate-limit` actions into rule steps.

`AccessState` is what a worker keeps across config versions — its counters, the node's
shared counters, Redis connections, fetched keys, verified-credential caches — so a reload
forgets no count and fetches no key again. `node_actions` builds, once per config
version, the compilers `lang/compile.py` calls for these actions. This module decides
nothing itself: the providers (`auth/`) and the limits (`ratelimit.py`) do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..lang.compile import CompileContext, LocalResponse, Step, Suspend
from ..model.config import Authenticate, Config, RateLimitAction
from .cluster_limits import ClusterLimits
from .ratelimit import compile_limit
from .shared import LocalMemory, SharedMemory
from .telemetry import Metrics


class AccessState:
    """A worker's access state. Without a node-wide `shared` file (a worker run alone), node
    scope counts in the worker."""

    def __init__(self, shared: SharedMemory | None = None, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics()  # refusals are counted; admissions are not
        self.local = LocalMemory()
        self.node: LocalMemory | SharedMemory = shared if shared is not None else self.local
        self.redis: dict[str, ClusterLimits] = {}
        self.caches: dict[tuple, Any] = {}  # provider state by (kind, what identifies it): JWKS, verified credentials
        self.config: Config | None = None

    def memory(self, scope: str) -> LocalMemory | SharedMemory:
        return self.local if scope == "worker" else self.node

    def cluster(self) -> ClusterLimits:
        """The Redis of this config version's `settings.redis` (a new client when they changed)."""
        settings = self.config.settings.redis
        cluster = self.redis.get(settings.url)
        if cluster is None or cluster.settings != settings:
            if cluster is not None:
                cluster.close()
            cluster = self.redis[settings.url] = ClusterLimits(settings, self.node, self.metrics)
        return cluster

    def cache(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The state kept for `key` across config versions, made by `make` the first time."""
        value = self.caches.get(key)
        if value is None:
            value = self.caches[key] = make()
        return value

    def status(self) -> dict:
        return {"redis": {url: {"up": c.up, "failures": c.failures} for url, c in self.redis.items()}}


def node_actions(config: Config, context: CompileContext, state: AccessState,
                 upstreams: dict[str, Any]) -> dict[type, Callable[[Any], Step]]:
    """The compilers of this config version's access actions, each provider and limit
    compiled once however many rules use it."""
    from .auth import compile_provider

    state.config = config
    providers = {p.name: p for p in config.auth_providers}
    limits = {r.name: r for r in config.rate_limits}
    compiled: dict[tuple[str, str], Step] = {}

    def once(kind: str, name: str, make: Callable[[], Step]) -> Step:
        step = compiled.get((kind, name))
        if step is None:
            step = compiled[(kind, name)] = make()
        return step

    def authenticate(action: Authenticate) -> Step:
        name = action.provider
        check = once("auth", name, lambda: compile_provider(providers[name], config, context, state, upstreams))
        counted = refusals_counted(name, state.metrics)

        def authenticate_step(request: Any, ops: list) -> Any:
            # A request a provider already accepted (an earlier rule) is not asked again: the
            # credential may have been stripped meanwhile.
            if name in request.providers:
                return None
            outcome = check(request, ops)
            return None if outcome is None else counted(outcome)
        return authenticate_step

    def rate_limit(action: RateLimitAction) -> Step:
        count = once("limit", action.policy, lambda: compile_limit(limits[action.policy], context, state))
        return lambda request, ops: count(request, ops)  # each rule its own step object
    return {Authenticate: authenticate, RateLimitAction: rate_limit}


def refusals_counted(provider: str, metrics: Metrics) -> Callable[[Any], Any]:
    """Passes a provider's outcome on, counting a 401/403 — also one that comes after a wait."""
    def counted(outcome: Any) -> Any:
        if outcome is None:
            return None
        if outcome.__class__ is Suspend:
            outcome.waiting = relay(outcome.waiting)
        elif outcome.__class__ is LocalResponse and outcome.status in (401, 403):
            metrics.count("auth_refused", provider)
        return outcome

    async def relay(waiting: Any) -> Any:
        return counted(await waiting)
    return counted

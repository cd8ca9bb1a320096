"""Compile a validated `Config` into an immutable `Runtime`: what a worker serves with.

Everything a request needs is prepared here once per config version: host tables per
port (`DomainTable`), each application's compiled rule chain, and each upstream's
balancer and outlier detector over endpoints that outlive the runtime. A request
holds the runtime it started with, so a swap never changes a request in flight. Given the
previous runtime, every upstream that did not change is kept, and so is the compile
context when nothing rules are compiled with changed; then every application whose object
is unchanged, and whose rules use no changed upstream, keeps its compiled route: a
one-rule change among 10,000 applications compiles one, an upstream's change the
applications that route to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..lang.compile import CompileContext, compile_rules
from ..model.canary import CANARY_KINDS, with_canaries
from ..model.config import (
    AccessLog,
    Application,
    Certificate,
    Config,
    Limits,
    Rule,
    Upstream,
    UpstreamTimeouts,
    action_upstreams,
)
from .access import AccessState, node_actions
from .acme import challenge_directory
from .balance import Balancer, make_balancer
from .breaker import Breaker
from .domains import DomainTable
from .endpoints import EndpointRegistry
from .locate import PrefixTable, locator
from .outlier import OutlierDetector
from .retry import retry_policy
from .tls import NameCache, Site, TlsTable, compile_tls, upstream_server_name

# Kinds compiled on their own, not into what rules are compiled with: a change to them
# keeps the compile context (and every application that does not use what changed).
COMPILED_ALONE = frozenset({"applications", "upstreams", "certificates", *CANARY_KINDS})


@dataclass(frozen=True, slots=True)
class UpstreamRuntime:
    name: str
    balancer: Balancer
    timeouts: UpstreamTimeouts
    host_header: bytes | None
    keys: frozenset
    single: object = None  # the endpoint, when the upstream has exactly one server
    detector: OutlierDetector | None = None
    breaker: Breaker | None = None


@dataclass(frozen=True, slots=True)
class AppRuntime:
    name: str
    route: object
    source: Application | None = None  # the object it was compiled from


@dataclass(frozen=True, slots=True)
class Runtime:
    version: str
    config: Config
    limits: Limits
    access_log: AccessLog
    ports: dict[int, DomainTable[AppRuntime]]
    upstreams: dict[str, UpstreamRuntime]
    trusted: PrefixTable
    tls: TlsTable
    acme_challenges: Path | None = None  # where HTTP-01 answers are, when the node uses ACME
    context: CompileContext | None = None
    apps: dict[str, AppRuntime] = dataclasses.field(default_factory=dict)

    def lookup(self, port: int, host: str) -> AppRuntime | None:
        table = self.ports.get(port)
        return table.lookup(host) if table is not None else None

    def tls_site(self, port: int, server_name: str) -> Site | None:
        table = self.tls.get(port)
        return table.lookup(server_name) if table is not None else None


def config_version(config: Config) -> str:
    """What the config says (defaults left out, as `dump` does), hashed; pydantic's own JSON
    encoder, ten times faster than `dump`'s indented one on a large config."""
    return hashlib.sha256(config.model_dump_json(exclude_defaults=True).encode()).hexdigest()[:12]


def compile_runtime(config: Config, registry: EndpointRegistry, partition: str = "default",
                    data_dir: Path | None = None, names: NameCache | None = None,
                    access: AccessState | None = None, version: str | None = None,
                    previous: Runtime | None = None) -> Runtime:
    """`version` names the runtime (a hash of the config when not given); `previous` lends
    what it compiled from objects that did not change."""
    config = with_canaries(config)
    names = names or NameCache()
    access = access or AccessState()
    certificates = {c.name: c for c in config.certificates}
    kept = kept_upstreams(previous, config, certificates)
    upstreams: dict[str, UpstreamRuntime] = {}
    for upstream in config.upstreams:
        if upstream.name not in kept:
            upstreams[upstream.name] = compile_upstream(upstream, certificates, registry, names)
            continue
        upstreams[upstream.name] = kept[upstream.name]
        if upstream.tls is not None:  # its client context is still in use: the cache keeps it
            names.upstream(upstream.tls, certificates.get(upstream.tls.certificate))
    if previous is not None and previous.context is not None and same_context(previous, config, upstreams):
        access.config = config  # what node_actions would have set
        return compile_applications(config, partition, upstreams, previous.context,
                                    kept_applications(previous, config, upstreams), data_dir, names, version)
    settings = config.settings
    context = CompileContext(
        timezone=settings.timezone, retry_policy=retry_policy,
        locate=locator([(entry.cidr, entry.location) for entry in settings.locations], settings.geoip_database))
    context = dataclasses.replace(context, node_actions=node_actions(config, context, access, upstreams))
    return compile_applications(config, partition, upstreams, context, {}, data_dir, names, version)


def compile_upstream(upstream: Upstream, certificates: dict[str, Certificate], registry: EndpointRegistry,
                     names: NameCache) -> UpstreamRuntime:
    primaries, backups = [], []
    detection = upstream.outlier_detection
    tls = upstream.tls
    context = names.upstream(tls, certificates.get(tls.certificate)) if tls is not None else None
    for server in upstream.servers:
        # With outlier detection, a server is not also taken out by its first failure.
        endpoint = registry.get(upstream.name, server, upstream.pool, max_fails=0 if detection else 1,
                                tls=(context, upstream_server_name(upstream, server)) if context else None)
        endpoint.detector = None
        (backups if server.backup else primaries).append((endpoint, server.weight))
    everyone = [endpoint for endpoint, _ in primaries + backups]
    breaker = registry.breaker(upstream.name)
    breaker.configure(upstream.circuit_breaker, upstream.retry_budget)
    return UpstreamRuntime(
        name=upstream.name,
        balancer=make_balancer(upstream.balance, primaries, backups, upstream.hash_key),
        timeouts=upstream.timeouts,
        host_header=upstream.host.encode("latin-1") if upstream.host else None,
        keys=frozenset(e.key for e, _ in primaries + backups),
        single=primaries[0][0] if len(primaries) == 1 and not backups else None,
        detector=OutlierDetector(upstream.name, everyone, detection, registry.reporter) if detection else None,
        breaker=breaker,
    )


def kept_upstreams(previous: Runtime | None, config: Config,
                   certificates: dict[str, Certificate]) -> dict[str, UpstreamRuntime]:
    """The previous runtime's upstreams that neither changed nor use a certificate that did."""
    if previous is None or previous.context is None:
        return {}
    before = {u.name: u for u in previous.config.upstreams}
    old_certificates = {c.name: c for c in previous.config.certificates}
    kept = {}
    for upstream in config.upstreams:
        old = before.get(upstream.name)
        if old is None or upstream.name not in previous.upstreams or not (old is upstream or old == upstream):
            continue
        name = upstream.tls.certificate if upstream.tls is not None else None
        if name is not None and old_certificates.get(name) != certificates.get(name):
            continue
        kept[upstream.name] = previous.upstreams[upstream.name]
    return kept


def same_context(previous: Runtime, config: Config, upstreams: dict[str, UpstreamRuntime]) -> bool:
    """What rules are compiled with is unchanged: every object but applications, upstreams
    and certificates (and the canaries, compiled into applications) is the same, and so is
    each upstream an auth provider calls."""
    old = previous.config
    if not all(getattr(old, field) == getattr(config, field) for field in Config.model_fields
               if field not in COMPILED_ALONE):
        return False
    called = [p.ext_authz.upstream for p in config.auth_providers if p.ext_authz is not None]
    return all(upstreams.get(name) is previous.upstreams.get(name) for name in called)


def kept_applications(previous: Runtime, config: Config, upstreams: dict[str, UpstreamRuntime]
                      ) -> dict[str, AppRuntime]:
    """The previous runtime's compiled applications that the same context can keep: those
    whose rules (and the global rules) proxy, split and mirror only to unchanged upstreams."""
    changed = {name for name, upstream in upstreams.items() if previous.upstreams.get(name) is not upstream}
    if not changed:
        return previous.apps
    rules = config.global_rules.before + config.global_rules.after
    if changed & set(upstreams_used(rules)):
        return {}
    return {name: app for name, app in previous.apps.items()
            if app.source is not None and not changed & set(upstreams_used(app.source.rules))}


def upstreams_used(rules: list[Rule]) -> Iterator[str]:
    for rule in rules:
        for action in rule.actions:
            for _field, name in action_upstreams(action):
                yield name


def compile_applications(config: Config, partition: str, upstreams: dict[str, UpstreamRuntime],
                         context: CompileContext, compiled_before: dict[str, AppRuntime], data_dir: Path | None,
                         names: NameCache, version: str | None) -> Runtime:
    """The runtime over these upstreams and context; `compiled_before` are routes compiled
    with them, kept for applications whose object did not change."""
    settings = config.settings
    ports: dict[int, DomainTable[AppRuntime]] = {}
    apps: dict[str, AppRuntime] = {}
    for app in config.applications:
        if partition not in app.partitions:
            continue
        compiled = compiled_before.get(app.name)
        if compiled is None or not (compiled.source is app or compiled.source == app):
            route = compile_rules(app.rules, upstreams, context, config.global_rules.before,
                                  config.global_rules.after)
            compiled = AppRuntime(app.name, route, app)
        apps[app.name] = compiled
        for port in app.ports + app.https_ports:
            table = ports.setdefault(port, DomainTable())
            for domain in app.domains:
                table.add(domain, compiled)
    tls = compile_tls([a for a in config.applications if partition in a.partitions], config.certificates,
                      data_dir, names)
    names.done()
    return Runtime(
        version=version or config_version(config),
        config=config,
        limits=config.settings.limits,
        access_log=config.settings.access_log,
        ports=ports,
        upstreams=upstreams,
        trusted=PrefixTable([(cidr, "trusted") for cidr in settings.trusted_proxies]),
        tls=tls,
        acme_challenges=challenge_directory(data_dir) if settings.acme is not None and data_dir else None,
        context=context,
        apps=apps,
    )


def endpoint_keys(runtime: Runtime) -> set:
    return set().union(*(u.keys for u in runtime.upstreams.values())) if runtime.upstreams else set()

"""Compile rules (conditions -> actions) into one plain `route(request, ops)` call.

All parsing of values (regexes, CIDRs, numbers, time zones, origins) happens here, once
per config version; the callables only compare. With more than a few rules, an index picks
the candidate rules of a request as a bitmask (exact paths by dict, prefixes by a table of
lengths, every regex of the chain in one `RegexSet` scan per variable) and only those are
evaluated, in order (with fewer rules, every rule is a candidate). A rule that changes the
request makes the index look again, so the result always equals evaluating every rule in
turn. A step that must wait (a key fetch, a Redis round trip, a shaping delay) returns a
`Suspend`; the chain resumes after that step once the wait is over, and a chain where
nothing waits runs as one plain synchronous call. This module performs no I/O.
"""

from __future__ import annotations

import bisect
import ipaddress
import operator
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from ..model.config import (
    CLOCK_VARIABLES,
    WEEKDAYS,
    AddRequestHeader,
    AddResponseHeader,
    Condition,
    Cors,
    Deny,
    Hsts,
    HttpsRedirect,
    Mirror,
    Proxy,
    Redirect,
    RemoveRequestHeader,
    RemoveResponseHeader,
    Respond,
    RewritePath,
    RewriteQuery,
    Rule,
    SetRequestHeader,
    SetResponseHeader,
    SetVar,
    Split,
)
from .keys import key_getter, stable_hash
from .regexset import regex_set

Getter = Callable[[Any], "str | list[str]"]
Predicate = Callable[[Any], bool]
Step = Callable[[Any, list], Any]
"""A step changes the request or appends response-header ops to `ops`; a step that decides
the request returns its outcome: a `Forward` or a `LocalResponse`; a step that must wait
returns a `Suspend`. Every step of a rule is its own object (a resumed chain finds its
place by identity)."""

INDEX_THRESHOLD = 8  # below this many rules, evaluating each in turn is cheaper than indexing


@dataclass(frozen=True)
class LocalResponse:
    """A response the node writes itself (respond, redirect, deny, CORS preflight, errors)."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Forward:
    """Proxy to `upstream` (the node's object for it) with the route's timeouts and retry
    policy (as the node prepared it)."""

    upstream: Any
    timeout: float | None = None
    backend_timeout: float | None = None
    retry: Any = None


class Suspend:
    """What a step returns when it must wait. `waiting` is a future (waited on as it is) or a
    coroutine (run as a task); its result is the step's own outcome: None to go on with the
    chain, a `Forward` or `LocalResponse` to decide, or another `Suspend`. The route fills in
    `label` (the rule's) and `resume`, which runs the chain on from the step after this one
    and returns what `route` returns."""

    __slots__ = ("waiting", "label", "resume")

    def __init__(self, waiting: Awaitable) -> None:
        self.waiting = waiting
        self.label: Any = -1
        self.resume: Callable[[], tuple[Any, Any]] | None = None


@dataclass(frozen=True)
class CompileContext:
    """What rules need beyond themselves: the default time zone, address → location, what a
    route's `retry` becomes (the node prepares its own policy object once), and compilers
    for actions whose runtime belongs to the node (authentication, rate limits), by action
    class: each takes the action and returns its step."""

    timezone: str = "UTC"
    locate: Callable[[str], str] = lambda _ip: ""
    retry_policy: Callable[[Any], Any] = lambda retry: retry
    node_actions: dict[type, Callable[[Any], Step]] = field(default_factory=dict)


# --- variables -----------------------------------------------------------------------


def _attribute(name: str) -> Getter:
    return operator.attrgetter(name)


def _clock(kind: str, zone: ZoneInfo) -> Getter:
    def now(_request: Any) -> str:
        moment = datetime.now(zone)
        if kind == "time":
            return f"{moment.hour:02d}:{moment.minute:02d}"
        if kind == "date":
            return moment.strftime("%Y-%m-%d")
        return WEEKDAYS[moment.weekday()]
    return now


# Variables of the TLS connection (`request.tls`, absent on plain ports): how to read each,
# and its value without TLS. The client certificate ones are empty unless one was verified.
_TLS_VARIABLES: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "tls-sni": (lambda tls: tls.sni, ""),
    "tls-version": (lambda tls: tls.version, ""),
    "ja4": (lambda tls: tls.ja4, ""),
    "tls-client-identity": (lambda tls: tls.identity.primary, ""),
    "tls-client-uri": (lambda tls: tls.identity.uris, []),
    "tls-client-dns": (lambda tls: tls.identity.dns, []),
    "tls-client-cn": (lambda tls: tls.identity.cn, ""),
    "tls-client-fingerprint": (lambda tls: tls.identity.fingerprint, ""),
}


def variable_getter(condition: Condition, context: CompileContext) -> Getter:
    var, name = condition.var, condition.name
    simple = {"host": "host", "scheme": "scheme", "method": "method", "uri": "uri", "path": "path",
              "query": "query", "client-ip": "client_ip", "http-version": "version"}
    if var in simple:
        return _attribute(simple[var])
    if var in _TLS_VARIABLES:
        read, absent = _TLS_VARIABLES[var]
        return lambda request: read(request.tls) if request.tls is not None else absent
    if var == "header":
        lname = name.lower()
        return lambda request: request.header(lname)
    if var == "arg":
        return lambda request: request.arg(name)
    if var == "cookie":
        return lambda request: request.cookie(name)
    if var == "var":
        return lambda request: request.variable(name)
    if var == "claim":
        return lambda request: request.claim(name)
    if var == "consumer":
        return lambda request: request.consumer
    if var == "consumer-tier":
        return lambda request: request.tier
    if var == "location":
        locate = context.locate
        return lambda request: locate(request.client_ip)
    if var in CLOCK_VARIABLES:
        return _clock(var, ZoneInfo(condition.tz or context.timezone))
    if var == "random":
        return lambda _request: repr(random.random() * 100)
    raise ValueError(f"unknown variable {var!r}")


def variables_key(specs: list[str], context: CompileContext) -> Callable[[Any], str]:
    """`VARIABLE` / `VARIABLE:NAME` specs (client-ip, consumer, header:X-Api-Key, claim:sub) →
    one string per request: the values joined (several values of one variable by commas)."""
    getters = []
    for spec in specs:
        var, _, name = spec.partition(":")
        getters.append(variable_getter(Condition(var=var, name=name or None, op="exists"), context))

    def value(get: Getter, request: Any) -> str:
        subject = get(request)
        return subject if isinstance(subject, str) else ",".join(subject)
    if len(getters) == 1:
        only = getters[0]

        def single(request: Any) -> str:
            subject = only(request)
            return subject if subject.__class__ is str else ",".join(subject)
        return single
    return lambda request: "\x1f".join(value(get, request) for get in getters)


# --- conditions ----------------------------------------------------------------------


def _value_test(condition: Condition) -> Callable[[str], bool]:
    """A test of one subject string against all of the condition's values (alternatives)."""
    op, caseless = condition.op, condition.caseless
    values = [v.lower() for v in condition.values] if caseless else list(condition.values)

    def folded(test: Callable[[str], bool]) -> Callable[[str], bool]:
        return (lambda s: test(s.lower())) if caseless else test

    if op in ("eq", "ne", "in", "not-in"):
        return folded(frozenset(values).__contains__)
    if op == "prefix":
        prefixes = tuple(values)
        return folded(lambda s: s.startswith(prefixes))
    if op == "suffix":
        suffixes = tuple(values)
        return folded(lambda s: s.endswith(suffixes))
    if op == "contains":
        return folded(lambda s: any(v in s for v in values))
    if op in ("regex", "not-regex"):
        # Each pattern on its own: joined, one pattern's inline flags would break the others.
        flags = re.IGNORECASE if caseless else 0
        searches = [re.compile(pattern, flags).search for pattern in condition.values]
        if len(searches) == 1:
            search = searches[0]
            return lambda s: search(s) is not None
        return lambda s: any(search(s) is not None for search in searches)
    if op in ("cidr", "not-cidr"):
        networks = [ipaddress.ip_network(v, strict=False) for v in condition.values]

        def in_networks(s: str) -> bool:
            try:
                address = ipaddress.ip_address(s)
            except ValueError:
                return False
            return any(address in network for network in networks)
        return in_networks
    compare = getattr(operator, op)
    if condition.var in CLOCK_VARIABLES:  # zero-padded clock strings order like their times
        return lambda s: any(compare(s, bound) for bound in values)
    bounds = [float(v) for v in condition.values]

    def numeric(s: str) -> bool:
        try:
            number = float(s)
        except ValueError:
            return False
        return any(compare(number, bound) for bound in bounds)
    return numeric


def compile_condition(condition: Condition, context: CompileContext | None = None) -> Predicate:
    get = variable_getter(condition, context or CompileContext())
    op = condition.op
    if op in ("exists", "missing"):
        present = op == "exists"
        return lambda request: bool(get(request)) is present
    test = _value_test(condition)
    negate = op in ("ne", "not-in", "not-regex", "not-cidr")

    def holds(request: Any) -> bool:
        subject = get(request)
        if isinstance(subject, str):
            return test(subject) is not negate
        return any(test(s) for s in subject) is not negate
    return holds


def compile_conditions(conditions: list[Condition], context: CompileContext | None = None) -> Predicate | None:
    predicates = [compile_condition(c, context) for c in conditions]
    if not predicates:
        return None
    if len(predicates) == 1:
        return predicates[0]
    return lambda request: all(p(request) for p in predicates)


# --- actions -------------------------------------------------------------------------

MUTATING_ACTIONS = frozenset({"set-request-header", "add-request-header", "remove-request-header",
                              "rewrite-path", "rewrite-query", "set-var", "authenticate"})


def _header_step(name: str, value: str | None, mode: str) -> Step:
    raw_name, lname = name.encode("latin-1"), name.lower().encode("latin-1")
    raw_value = value.encode("latin-1") if value is not None else b""
    if lname == b"host":
        if mode == "remove":
            raise ValueError("the Host header cannot be removed; set it instead")
        return lambda request, _ops: request.set_host(raw_value)

    def step(request: Any, _ops: list) -> None:
        if mode != "add":
            request.headers = [h for h in request.headers if h[0].lower() != lname]
        if mode != "remove":
            request.headers.append((raw_name, raw_value))
        request.headers_changed()
    return step


def _response_header_step(name: str, value: str | None, mode: str) -> Step:
    op = (mode, name.lower().encode("latin-1"), name.encode("latin-1"),
          value.encode("latin-1") if value is not None else b"")

    def step(_request: Any, ops: list) -> None:
        ops.append(op)
    return step


def _with_slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _replace_prefix(current: str, prefix: str, replacement: str) -> str | None:
    """The path with `prefix` replaced, or None when it does not start with it."""
    if not current.startswith(prefix):
        return None
    rest = current[len(prefix):]
    if replacement.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    elif rest and not rest.startswith("/") and not replacement.endswith("/") and prefix.endswith("/"):
        rest = "/" + rest
    return _with_slash(replacement + rest)


def _rewrite_step(action: RewritePath) -> Step:
    if action.path is not None:
        path = action.path
        return lambda request, _ops: request.set_target(path)
    if action.prefix is not None:
        prefix, replacement = action.prefix, action.replacement

        def rewrite_prefix(request: Any, _ops: list) -> None:
            new = _replace_prefix(request.uri_path, prefix, replacement)
            if new is not None:
                request.set_target(new)
        return rewrite_prefix
    pattern, replacement = re.compile(action.regex or ""), action.replacement

    def rewrite_regex(request: Any, _ops: list) -> None:
        new = pattern.sub(replacement, request.uri_path, count=1)
        path, _, query = new.partition("?")
        request.set_target(_with_slash(path), query if "?" in new else None)
    return rewrite_regex


def _rewrite_query_step(action: RewriteQuery) -> Step:
    fixed = parse_qsl(action.query, keep_blank_values=True) if action.query is not None else None
    drop = frozenset(action.remove) | frozenset(action.set)
    added = list(action.set.items()) + list(action.add.items())

    def rewrite(request: Any, _ops: list) -> None:
        pairs = fixed if fixed is not None else parse_qsl(request.query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k not in drop]
        request.set_target(request.uri_path, urlencode(kept + added))
    return rewrite


def _redirect_step(action: Redirect) -> Step:
    def redirect(request: Any, _ops: list) -> LocalResponse:
        scheme = action.scheme or request.scheme
        host = action.host or request.host
        default_port = 443 if scheme == "https" else 80
        # Gateway API: no port given → the scheme's port if a scheme was given, else the listener's.
        port = action.port or (default_port if action.scheme else request.port)
        authority = host if port in (None, 0, default_port) else f"{host}:{port}"
        path = request.uri_path
        if action.prefix is not None:
            path = _replace_prefix(path, action.prefix, action.path or "/") or path
        elif action.path is not None:
            path = action.path
        query = request.query if action.keep_query else ""
        location = f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")
        return LocalResponse(action.status, [(b"Location", location.encode("latin-1"))])
    return redirect


def _https_redirect_step(action: HttpsRedirect) -> Step:
    redirect = _redirect_step(Redirect(status=action.status, scheme="https", port=action.port))

    def to_https(request: Any, ops: list) -> LocalResponse | None:
        return redirect(request, ops) if request.scheme == "http" else None
    return to_https


def _hsts_step(action: Hsts) -> Step:
    value = f"max-age={action.max_age}" + ("; includeSubDomains" if action.include_subdomains else "") + (
        "; preload" if action.preload else "")
    op = ("set", b"strict-transport-security", b"Strict-Transport-Security", value.encode())

    def hsts(request: Any, ops: list) -> None:
        if request.scheme == "https":  # RFC 6797 §7.2: never over plain HTTP
            ops.append(op)
    return hsts


def _respond_step(action: Respond) -> Step:
    headers = [(b"Content-Type", action.content_type.encode("latin-1"))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in action.headers.items()]
    response = LocalResponse(action.status, headers, action.body.encode("utf-8"))
    return lambda _request, _ops: response


def _deny_step(action: Deny) -> Step:
    body = (action.body or "access denied\n").encode("utf-8")
    response = LocalResponse(action.status, [(b"Content-Type", b"text/plain; charset=utf-8")], body)
    return lambda _request, _ops: response


def _forward(action: Proxy | Split, upstream: Any, context: CompileContext) -> Forward:
    retry = context.retry_policy(action.retry) if action.retry is not None else None
    return Forward(upstream, action.timeout, action.backend_timeout, retry)


def _split_step(action: Split, upstreams: dict[str, Any], context: CompileContext) -> Step:
    weighted = [(w.upstream, w.weight) for w in action.upstreams if w.weight > 0]
    if not weighted:
        failure = LocalResponse(500, [(b"Content-Type", b"text/plain; charset=utf-8")],
                                b"500 Internal Server Error: every backend of this route has weight 0\n")
        return lambda _request, _ops: failure
    forwards = [_forward(action, upstreams[name], context) for name, _ in weighted]
    if len(forwards) == 1 and action.cookie is None:
        only = forwards[0]
        return lambda _request, _ops: only
    total, running, bounds = sum(weight for _, weight in weighted), 0, []
    for _, weight in weighted:
        running += weight
        bounds.append(running / total)  # each upstream's share: a fixed stretch of [0, 1)
    uniform = random.random
    if action.sticky:
        key = key_getter(action.sticky)

        def draw(request: Any, _ops: list) -> Forward:
            # The key's place in [0, 1), so that as weights ramp a key only moves to an
            # upstream whose share grows. A request without the key is drawn at random.
            found = key(request)
            return forwards[bisect.bisect_right(bounds, stable_hash(found) / HASH_SPACE if found else uniform())]
    else:
        def draw(_request: Any, _ops: list) -> Forward:
            return forwards[bisect.bisect_right(bounds, uniform())]
    if action.cookie is None:
        return draw
    return _pinned_step(action, [name for name, _ in weighted], forwards, draw)


HASH_SPACE = float(1 << 64)


def _pinned_step(action: Split, names: list[str], forwards: list[Forward], draw: Step) -> Step:
    """A client whose cookie names an upstream still in the split goes there; any other is
    drawn as usual and given the cookie (prepared once per upstream)."""
    name, by_value = action.cookie, dict(zip(names, forwards))
    age = f"; Max-Age={int(action.cookie_max_age)}" if action.cookie_max_age is not None else ""
    pins = {id(forward): ("add", b"set-cookie", b"Set-Cookie",
                          f"{name}={upstream}; Path=/; HttpOnly; SameSite=Lax{age}".encode("latin-1"))
            for upstream, forward in zip(names, forwards)}

    def pinned(request: Any, ops: list) -> Forward:
        held = request.cookie(name)
        forward = by_value.get(held[0]) if held else None
        if forward is None:
            forward = draw(request, ops)
            ops.append(pins[id(forward)])
        return forward
    return pinned


def _mirror_step(action: Mirror, upstreams: dict[str, Any]) -> Step:
    target, share = upstreams[action.upstream], action.percent / 100

    def mirror(request: Any, _ops: list) -> None:
        if share >= 1 or random.random() < share:
            request.add_mirror(target)
    return mirror


def _origin_matcher(origins: list[str]) -> Callable[[str], bool]:
    if "*" in origins:
        return lambda origin: True
    exact = frozenset(o.lower() for o in origins if "*." not in o)
    wildcards = tuple(o.lower().replace("*.", ".", 1).split("://", 1) for o in origins if "*." in o)

    def allowed(origin: str) -> bool:
        origin = origin.lower()
        if origin in exact:
            return True
        scheme, _, rest = origin.partition("://")
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
        return any(scheme == s and host.endswith(suffix) for s, suffix in wildcards)
    return allowed


def _cors_step(action: Cors) -> Step:
    """CORS (Fetch standard): preflights answered here, actual responses get the headers."""
    allowed = _origin_matcher(action.allow_origins)
    any_method = "*" in action.allow_methods
    any_header = "*" in action.allow_headers
    methods = ", ".join(action.allow_methods).encode()
    allow_headers = ", ".join(action.allow_headers).encode()
    expose = ", ".join(action.expose_headers).encode()

    def cors(request: Any, ops: list) -> LocalResponse | None:
        origins = request.header("origin")
        if not origins or not allowed(origins[0]):
            return None
        origin = origins[0].encode("latin-1")
        requested = request.header("access-control-request-method")
        if request.method == "OPTIONS" and requested:
            headers = [(b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin"),
                       (b"Access-Control-Allow-Methods", requested[0].encode("latin-1") if any_method else methods)]
            asked = request.header("access-control-request-headers")
            granted = ", ".join(asked).encode("latin-1") if any_header else allow_headers
            if granted:
                headers.append((b"Access-Control-Allow-Headers", granted))
            if expose:
                headers.append((b"Access-Control-Expose-Headers", expose))
            if action.max_age is not None:
                headers.append((b"Access-Control-Max-Age", str(action.max_age).encode()))
            if action.allow_credentials:
                headers.append((b"Access-Control-Allow-Credentials", b"true"))
            return LocalResponse(204, headers)
        ops.append(("set", b"access-control-allow-origin", b"Access-Control-Allow-Origin", origin))
        ops.append(("add", b"vary", b"Vary", b"Origin"))
        if action.allow_credentials:
            ops.append(("set", b"access-control-allow-credentials", b"Access-Control-Allow-Credentials", b"true"))
        if expose:
            ops.append(("set", b"access-control-expose-headers", b"Access-Control-Expose-Headers", expose))
        return None
    return cors


def compile_action(action: Any, upstreams: dict[str, Any], context: CompileContext | None = None) -> Step:
    kind = action.kind
    context = context or CompileContext()
    node_action = context.node_actions.get(type(action))
    if node_action is not None:
        return node_action(action)
    if isinstance(action, Proxy):
        forward = _forward(action, upstreams[action.upstream], context)
        return lambda _request, _ops: forward
    if isinstance(action, (SetRequestHeader, AddRequestHeader, RemoveRequestHeader)):
        return _header_step(action.name, getattr(action, "value", None), kind.split("-", 1)[0])
    if isinstance(action, (SetResponseHeader, AddResponseHeader, RemoveResponseHeader)):
        return _response_header_step(action.name, getattr(action, "value", None), kind.split("-", 1)[0])
    if isinstance(action, SetVar):
        name, value = action.name, action.value
        return lambda request, _ops: request.set_variable(name, value)
    simple = {RewritePath: _rewrite_step, RewriteQuery: _rewrite_query_step, Redirect: _redirect_step,
              Respond: _respond_step, Deny: _deny_step, Cors: _cors_step, HttpsRedirect: _https_redirect_step,
              Hsts: _hsts_step}
    if type(action) in simple:
        return simple[type(action)](action)
    if isinstance(action, Split):
        return _split_step(action, upstreams, context)
    if isinstance(action, Mirror):
        return _mirror_step(action, upstreams)
    raise ValueError(f"no compiler for action {kind!r}")


# --- rules ---------------------------------------------------------------------------


def ordered(rules: list[Rule]) -> list[tuple[int, Rule]]:
    """Enabled rules in run order: `top` rules first, then by `order`, then as listed."""
    indexed = [(index, rule) for index, rule in enumerate(rules) if rule.enabled]
    return sorted(indexed, key=lambda item: (not item[1].top, item[1].order, item[0]))


@dataclass
class _Compiled:
    matches: Predicate | None
    steps: tuple
    last: bool
    label: Any
    mutates: bool
    conditions: list[Condition]


EQUALITY_INDEXED = frozenset({"host", "scheme", "method", "uri", "query", "client-ip", "http-version",
                              "header", "arg", "cookie", "var", "location"})


class RuleIndex:
    """Which rules of a chain could match a request, as a bitmask in chain order."""

    def __init__(self, chain: list[_Compiled], context: CompileContext):
        self.always = 0
        self.exact: dict[str, int] = {}
        prefixes: dict[int, dict[str, int]] = {}
        regexes: dict[str, tuple[Getter, list]] = {}
        equals: dict[tuple, tuple[Getter, dict[str, int], bool]] = {}
        for position, rule in enumerate(chain):
            bit = 1 << position
            key = self.key_of(rule.conditions)
            if key is None:
                self.always |= bit
            elif key.op in ("eq", "in") and key.var == "path":
                for value in key.values:
                    self.exact[value] = self.exact.get(value, 0) | bit
            elif key.op in ("eq", "in"):
                group = (key.var, (key.name or "").lower() if key.var == "header" else key.name, key.caseless)
                _, table, _ = equals.setdefault(group, (variable_getter(key, context), {}, key.caseless))
                for value in key.values:
                    value = value.lower() if key.caseless else value
                    table[value] = table.get(value, 0) | bit
            elif key.op == "prefix":
                for value in key.values:
                    table = prefixes.setdefault(len(value), {})
                    table[value] = table.get(value, 0) | bit
            else:
                getter = variable_getter(key, context)
                _, patterns = regexes.setdefault(key.var, (getter, []))
                patterns += [(value, key.caseless, bit) for value in key.values]
        self.prefixes = tuple(sorted(prefixes.items()))
        self.equals = tuple(equals.values())
        self.scans = tuple((getter, regex_set(patterns)) for getter, patterns in regexes.values())
        self.uses_path = bool(self.exact or self.prefixes)

    @staticmethod
    def key_of(conditions: list[Condition]) -> Condition | None:
        """The condition that best narrows a rule: exact path, path prefix, another equality,
        then a regex. A rule with none of these is a candidate for every request."""
        ranked = []
        for condition in conditions:
            op, var = condition.op, condition.var
            if var == "path" and op in ("eq", "in") and not condition.caseless:
                ranked.append((0, condition))
            elif var == "path" and op == "prefix" and not condition.caseless:
                ranked.append((1, condition))
            elif op in ("eq", "in") and var in EQUALITY_INDEXED:
                ranked.append((2, condition))
            elif op == "regex" and var in ("path", "uri", "host", "query", "method"):
                ranked.append((3, condition))
        return min(ranked, key=lambda item: item[0])[1] if ranked else None

    def candidates(self, request: Any) -> int:
        mask = self.always
        if self.uses_path:
            path = request.path
            mask |= self.exact.get(path, 0)
            size = len(path)
            for length, table in self.prefixes:
                if length > size:
                    break
                mask |= table.get(path[:length], 0)
        for getter, table, caseless in self.equals:
            subject = getter(request)
            if isinstance(subject, str):
                mask |= table.get(subject.lower() if caseless else subject, 0)
            else:
                for value in subject:
                    mask |= table.get(value.lower() if caseless else value, 0)
        for getter, scanner in self.scans:
            mask |= scanner.matches(getter(request))
        return mask


def compile_rules(rules: list[Rule], upstreams: dict[str, Any], context: CompileContext | None = None,
                  before: list[Rule] = (), after: list[Rule] = ()) -> Callable[[Any, list], tuple[Any, Any]]:
    """Returns route(request, ops) -> (label of the deciding rule or -1, outcome or None).

    Labels are the rule's index for the application's own rules and
    "global.before[i]" / "global.after[i]" for global ones.
    """
    context = context or CompileContext()
    chain: list[_Compiled] = []
    for group, label_of in ((before, lambda i: f"global.before[{i}]"), (rules, lambda i: i),
                            (after, lambda i: f"global.after[{i}]")):
        for index, rule in ordered(list(group)):
            steps = tuple(compile_action(action, upstreams, context) for action in rule.actions)
            mutates = any(action.kind in MUTATING_ACTIONS for action in rule.actions)
            chain.append(_Compiled(compile_conditions(rule.conditions, context), steps, rule.last,
                                   label_of(index), mutates, rule.conditions))
    index = RuleIndex(chain, context) if len(chain) >= INDEX_THRESHOLD else None
    return _route(chain, index, context)


def _without_key(rule: _Compiled, context: CompileContext) -> Predicate | None:
    key = RuleIndex.key_of(rule.conditions)
    if key is None:
        return rule.matches
    return compile_conditions([c for c in rule.conditions if c is not key], context)


def _route(chain: list[_Compiled], index: RuleIndex | None, context: CompileContext
           ) -> Callable[[Any, list], tuple[Any, Any]]:
    """Run the candidate rules in chain order. Without an index every rule is a candidate;
    with one, a candidate's key condition already holds (the index found it), so only the
    others run: an indexed regex is never searched twice, nor by `re` when Hyperscan found it."""
    if index is None:
        every = (1 << len(chain)) - 1
        candidates: Callable[[Any], int] = lambda _request: every  # noqa: E731
        compiled = tuple((c.matches, c.steps, c.last, c.label, c.mutates) for c in chain)
    else:
        candidates = index.candidates
        compiled = tuple((_without_key(c, context), c.steps, c.last, c.label, c.mutates) for c in chain)

    def route(request: Any, ops: list) -> tuple[Any, Any]:
        return run(request, ops, candidates(request), 0, 0)

    def run(request: Any, ops: list, mask: int, low: int, first: int) -> tuple[Any, Any]:
        """The candidates in `mask`, in order; with `first`, rule `low` resumes at that step."""
        while mask or first:
            if first:
                matches, steps, last, label, mutates = compiled[low.bit_length() - 1]
                todo, first = steps[first:], 0
            else:
                low = mask & -mask
                mask ^= low
                matches, steps, last, label, mutates = compiled[low.bit_length() - 1]
                if matches is not None and not matches(request):
                    continue
                todo = steps
            for step in todo:
                outcome = step(request, ops)
                if outcome is not None:
                    if outcome.__class__ is Suspend:
                        outcome.label = label
                        outcome.resume = partial(run, request, ops, mask, low, steps.index(step) + 1)
                    return label, outcome
            if last:
                return label, None
            if mutates:  # what later rules see has changed: ask the index again
                mask = candidates(request) & ~((low << 1) - 1)
        return -1, None
    return route

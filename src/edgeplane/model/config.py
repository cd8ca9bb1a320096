"""The configuration model: every object a node, the admin and the CLI agree on.

Objects are immutable pydantic models that reject unknown fields; cross-object checks
(references, duplicate names, overlapping domains) live in `Config`. This module imports no
other part of edgeplane and never touches the network or the file system.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from .types import Duration, Name, Port, Size


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


SECRET = {"secret": True}
"""`json_schema_extra` of a field holding a secret: the admin encrypts it at rest and
shows it redacted."""


# --- topology ------------------------------------------------------------------------


class Partition(Model):
    name: Name
    review: bool = Field(False, description="a release needs approval by a second user with release permission")


class Cluster(Model):
    name: Name
    partition: Name = "default"
    auto_approve: bool = Field(False, description="nodes joining this cluster serve at once, without approval")


class Node(Model):
    name: Name
    cluster: Name = "default"


# --- upstreams -----------------------------------------------------------------------

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+$")


class Server(Model):
    address: str
    port: Port
    weight: int = Field(1, ge=1, le=10000)
    backup: bool = False
    max_fails: int | None = Field(None, ge=0, description="connect failures or timeouts that mark it down; "
                                                          "0 never; default 1, or 0 when the upstream has "
                                                          "outlier_detection")
    fail_timeout: Duration = 10.0

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value):
                raise ValueError("expected an IP address or a host name") from None
        return value


class Pool(Model):
    max_idle: int = Field(64, ge=0, description="idle keep-alive connections kept per server")
    idle_timeout: Duration = 60.0
    max_requests: int = Field(1000, ge=1, description="requests before a connection is retired")


class UpstreamTimeouts(Model):
    connect: Duration = 5.0
    send: Duration = 60.0
    read: Duration = 60.0


HashKey = Annotated[str, Field(pattern=r"^(client-ip|uri|path|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=]+)$")]


# --- resilience: health checks, outlier detection -------------------------------------

_STATUS_RANGE = re.compile(r"^([1-5]\d\d)(?:-([1-5]\d\d))?$")


def status_set(ranges: list[int | str]) -> frozenset[int]:
    """The statuses `[200, "300-399"]` names, as a set (the items are already validated)."""
    statuses: set[int] = set()
    for item in ranges:
        first, _, last = str(item).partition("-")
        statuses.update(range(int(first), int(last or first) + 1))
    return frozenset(statuses)


class HealthCheck(Model):
    """An active check of every server of an upstream, run once per node by its master:
    `http` sends a request and wants one of `statuses` (and `body`, a regex, in the first
    64 KiB of the answer); `tcp` only connects."""

    type: Literal["http", "tcp"] = "http"
    method: Annotated[str, Field(pattern=r"^[A-Z]{1,16}$")] = "GET"
    path: UriPart = "/"
    host: HostText | None = Field(None, description="Host of the probe; the upstream's host, else the server's address")
    port: Port | None = Field(None, description="probe this port instead of the server's")
    statuses: list[int | str] = Field(default_factory=lambda: ["200-399"], min_length=1)
    body: str | None = Field(None, description="a regex the answer's body must contain")
    interval: Duration = 5.0
    timeout: Duration = 2.0
    rise: int = Field(2, ge=1, description="consecutive passes that make a failing server healthy")
    fall: int = Field(3, ge=1, description="consecutive failures that make a healthy server unhealthy")

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: list[int | str]) -> list[int | str]:
        for index, item in enumerate(value):
            match = _STATUS_RANGE.match(str(item))
            if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
                raise ValueError(f"[{index}]: expected a status such as 200 or a range such as \"200-399\", got {item!r}")
        return value

    @model_validator(mode="after")
    def _shape(self) -> HealthCheck:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be longer than 0s")
        if self.body is not None:
            try:
                re.compile(self.body)
            except re.error as error:
                raise ValueError(f"body: invalid regex: {error}") from None
        return self


class SuccessRateEjection(Model):
    """Eject a server whose success rate over an `interval` falls below the mean of the
    upstream's servers by more than `stdev_factor` standard deviations (Envoy's model)."""

    minimum_hosts: int = Field(5, ge=1, description="servers with enough requests needed to judge any")
    request_volume: int = Field(100, ge=1, description="requests a server needs in the interval to be judged")
    stdev_factor: float = Field(1.9, gt=0)


class OutlierDetection(Model):
    """Passive health from real traffic, per worker: a server that fails often enough is
    ejected for `base_ejection_time` × the times it was ejected (at most
    `max_ejection_time`); never more than `max_ejection_percent` of the servers at once."""

    consecutive_5xx: int = Field(5, ge=0, description="5xx answers or gateway errors in a row; 0 never")
    consecutive_gateway_errors: int = Field(5, ge=0, description="connect failures, resets, timeouts, "
                                                                 "502, 503 or 504 in a row; 0 never")
    success_rate: SuccessRateEjection | None = None
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_time: Duration = 300.0
    max_ejection_percent: float = Field(10.0, ge=0, le=100)

    @model_validator(mode="after")
    def _times(self) -> OutlierDetection:
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError("interval and base_ejection_time must be longer than 0s")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError("max_ejection_time must not be shorter than base_ejection_time")
        return self


class CircuitBreaker(Model):
    """Limits on what one upstream is asked at once, counted in each worker; past one, a
    request fails at once with 503 naming the limit instead of waiting. Unset: no limit."""

    max_connections: int | None = Field(None, ge=1, description="open connections to the upstream's servers")
    max_pending_requests: int | None = Field(None, ge=1, description="requests waiting for a new connection")
    max_requests: int | None = Field(None, ge=1, description="requests in flight")
    max_retries: int | None = Field(None, ge=0, description="requests in flight that are retries")


class RetryBudget(Model):
    """Retries in flight may not exceed `percent` of the requests in flight on their first
    try (but `min_concurrency` are always allowed), each retry judged when it is due: a fully
    failing upstream sees at most (1 + percent/100) x the requests clients send it, plus the
    retries in flight when the load stops and what the minimum allows at low load."""

    percent: float = Field(20.0, ge=0, le=100)
    min_concurrency: int = Field(3, ge=0)


class Upstream(Model):
    name: Name
    servers: list[Server] = Field(min_length=1)
    balance: Literal["round-robin", "least-conn", "hash", "ewma"] = "round-robin"
    hash_key: HashKey | None = None
    host: HostText | None = Field(None, description="Host sent upstream; the client's when unset")
    pool: Pool = Pool()
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    tls: UpstreamTls | None = Field(None, description="speak TLS to the servers (HTTPS upstream)")
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breaker: CircuitBreaker | None = None
    retry_budget: RetryBudget = RetryBudget()

    @model_validator(mode="after")
    def _hash_needs_key(self) -> Upstream:
        if self.balance == "hash" and self.hash_key is None:
            raise ValueError("balance 'hash' needs hash_key (client-ip, uri, path, header:NAME or cookie:NAME)")
        if not any(not server.backup for server in self.servers):
            raise ValueError("at least one server must not be a backup")
        return self


# --- rules ---------------------------------------------------------------------------

Variable = Literal[
    "host", "scheme", "method", "uri", "path", "query", "arg", "header", "cookie",
    "client-ip", "location", "http-version", "tls-sni", "time", "weekday", "date", "random",
    "var", "tls-version", "ja4", "tls-client-identity", "tls-client-uri", "tls-client-dns",
    "tls-client-cn", "tls-client-fingerprint", "consumer", "consumer-tier", "claim",
]
NAMED_VARIABLES = {"arg", "header", "cookie", "var", "claim"}
CLOCK_VARIABLES = {"time", "weekday", "date"}
Operator = Literal[
    "eq", "ne", "in", "not-in", "prefix", "suffix", "contains", "regex", "not-regex", "cidr",
    "not-cidr", "exists", "missing", "gt", "ge", "lt", "le",
]
VALUELESS_OPERATORS = {"exists", "missing"}
ORDERING_OPERATORS = {"gt", "ge", "lt", "le"}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK_FORMATS = {
    "time": (re.compile(r"^([01]\d|2[0-3]):[0-5]\d$"), "HH:MM such as 20:00"),
    "date": (re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"), "YYYY-MM-DD"),
    "weekday": (re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)$"), "mon, tue, wed, thu, fri, sat or sun"),
}


def check_cidrs(networks: list[str], field: str) -> None:
    """Each entry must be a network (10.0.0.0/8, 2001:db8::/32) or a single address."""
    for index, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            where = f"{field}[{index}]: " if len(networks) > 1 or field else ""
            raise ValueError(f"{where}expected a CIDR such as 10.0.0.0/8, got {network!r}") from None


def check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as Europe/Paris or UTC") from None
    return name


class Condition(Model):
    var: Variable
    name: Annotated[str, Field(pattern=r"^[^\s\x00-\x1f]+$")] | None = Field(
        None, description="header, cookie, query argument or variable name")
    op: Operator = "eq"
    values: list[str] = Field(default_factory=list)
    caseless: bool = False
    tz: str | None = Field(None, description="time zone of time/weekday/date; settings.timezone when unset")

    @field_validator("values", mode="before")
    @classmethod
    def _one_value(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int, float)) else value

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        if (self.var in NAMED_VARIABLES) != (self.name is not None):
            need = "needs a" if self.var in NAMED_VARIABLES else "takes no"
            raise ValueError(f"variable '{self.var}' {need} name")
        if self.op in VALUELESS_OPERATORS:
            if self.values:
                raise ValueError(f"operator '{self.op}' takes no values")
        elif not self.values:
            raise ValueError(f"operator '{self.op}' needs at least one value")
        if self.op in ("regex", "not-regex"):
            for index, pattern in enumerate(self.values):
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"values[{index}]: invalid regex: {error}") from None
        if self.op in ("cidr", "not-cidr"):
            check_cidrs(self.values, "values")
        if self.var in CLOCK_VARIABLES:
            pattern, expected = _CLOCK_FORMATS[self.var]
            for index, value in enumerate(self.values):
                if not pattern.match(value):
                    raise ValueError(f"values[{index}]: expected {expected}, got {value!r}")
        elif self.tz is not None:
            raise ValueError("tz applies only to time, weekday and date")
        if self.tz is not None:
            check_timezone(self.tz)
        if self.op in ORDERING_OPERATORS and self.var not in CLOCK_VARIABLES:
            for index, number in enumerate(self.values):
                try:
                    float(number)
                except ValueError:
                    raise ValueError(f"values[{index}]: expected a number") from None
        if self.var == "random" and self.op not in ORDERING_OPERATORS:
            raise ValueError("random is a number from 0 to 100; compare it with lt, le, gt or ge")
        return self


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, Field(pattern=r"^[^\r\n\x00]*$")]
# What goes into a request line or a Location: printable, no spaces (RFC 3986 characters,
# plus % escapes and the few others browsers send), so a config can never split a message.
UriPart = Annotated[str, Field(pattern=r"^[!-~]*$")]
HostText = Annotated[str, Field(pattern=r"^[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+$")]
# Headers the proxy itself frames or drops: a rule setting them would corrupt the message.
RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                              "proxy-connection", "te", "trailer", "upgrade"})


def check_header_name(name: str) -> str:
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{name!r} is framed or removed by the proxy itself and cannot be set by a rule")
    return name


class Action(Model):
    """One step of a rule; in YAML a single-key mapping such as `{proxy: {upstream: api}}`."""

    kind: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1 and cls.kind in value:
            body = value[cls.kind]
            return {} if body is None else body
        return value

    @model_serializer(mode="wrap")
    def _as_mapping(self, handler: Any) -> dict[str, Any]:
        return {self.kind: handler(self)}


RetryCondition = Literal["connect-failure", "reset", "gateway-error", "5xx"]


class Retry(Model):
    """Send a failed request again (Envoy's vocabulary): `connect-failure`; `reset` — closed
    before an answer, or no answer within a try's timeout; `gateway-error` — those and 502,
    503, 504; `5xx` — those and any 5xx; plus the `statuses` listed. Only idempotent methods
    unless `non_idempotent`; waits a random time up to backoff x 2^(retry-1) (at most
    `max_backoff`) before each retry; only bodies up to `replay_limit` are sent again."""

    attempts: int = Field(2, ge=1, le=10, description="tries in all, the first included")
    retry_on: list[RetryCondition] = Field(default_factory=lambda: ["gateway-error"])
    statuses: list[Annotated[int, Field(ge=400, le=599)]] = Field(default_factory=list)
    non_idempotent: bool = Field(False, description="retry POST, PATCH, ... too (they may have had effects)")
    backoff: Duration = 0.025
    max_backoff: Duration | None = Field(None, description="default: 10 x backoff")
    replay_limit: Size = Field(64 * 1024, description="request bodies up to this size are kept to be sent again")

    @model_validator(mode="after")
    def _backoff(self) -> Retry:
        if self.max_backoff is not None and self.max_backoff < self.backoff:
            raise ValueError("max_backoff must not be shorter than backoff")
        return self


class Proxy(Action):
    """Send the request to an upstream; `timeout` bounds the whole exchange (504 after it),
    `backend_timeout` each try's wait for the response; `retry` sends failed tries again."""

    kind = "proxy"
    upstream: Name
    timeout: Duration | None = None
    backend_timeout: Duration | None = None
    retry: Retry | None = None


class WeightedUpstream(Model):
    upstream: Name
    weight: int = Field(1, ge=0, le=10000)


CookieName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


class Split(Action):
    """Share requests among upstreams by weight. With `sticky`, the hash of a request key
    places it (a key stays on one upstream, and as weights ramp only moves toward the
    upstreams that grow); with `cookie`, the node pins each client to the upstream it was
    first given, with a cookie of that name, for `cookie_max_age` (the browser session
    when unset)."""

    kind = "split"
    upstreams: list[WeightedUpstream] = Field(min_length=1)
    sticky: HashKey | None = None
    cookie: CookieName | None = None
    cookie_max_age: Duration | None = None
    timeout: Duration | None = None
    backend_timeout: Duration | None = None
    retry: Retry | None = None

    @model_validator(mode="after")
    def _cookie(self) -> Split:
        if self.cookie_max_age is not None and self.cookie is None:
            raise ValueError("cookie_max_age needs cookie: the name of the cookie that pins a client")
        return self


class Mirror(Action):
    """Also send a copy of the request to `upstream`; its answer is discarded."""

    kind = "mirror"
    upstream: Name
    percent: float = Field(100.0, ge=0, le=100)


class Deny(Action):
    kind = "deny"
    status: int = Field(403, ge=400, le=599)
    body: str = ""


class RewriteQuery(Action):
    """Replace the whole query (`query`), or set, add and remove arguments."""

    kind = "rewrite-query"
    query: str | None = None
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class Cors(Action):
    """Answer CORS preflights and add CORS headers to responses of allowed origins."""

    kind = "cors"
    allow_origins: list[str] = Field(min_length=1)
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD", "POST"])
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: int | None = Field(None, ge=0)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for index, origin in enumerate(value):
            if origin != "*" and not re.match(r"^[a-z][a-z0-9+.-]*://(\*\.)?[A-Za-z0-9.-]+(:\d+)?$", origin):
                raise ValueError(f"[{index}]: expected an origin such as https://app.example.com, "
                                 f"https://*.example.com or *, got {origin!r}")
        return value


class SetVar(Action):
    """Set a variable later rules can test with `{var: var, name: NAME}`."""

    kind = "set-var"
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    value: str


class HeaderAction(Action):
    """An action on one header, named by `name`."""

    name: HeaderName

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        return check_header_name(value)


class HeaderChange(HeaderAction):
    value: HeaderValue


class SetRequestHeader(HeaderChange):
    kind = "set-request-header"


class AddRequestHeader(HeaderChange):
    kind = "add-request-header"


class RemoveRequestHeader(HeaderAction):
    kind = "remove-request-header"


class SetResponseHeader(HeaderChange):
    kind = "set-response-header"


class AddResponseHeader(HeaderChange):
    kind = "add-response-header"


class RemoveResponseHeader(HeaderAction):
    kind = "remove-response-header"


class RewritePath(Action):
    """Replace the whole path (`path`), a leading `prefix`, or what `regex` matches."""

    kind = "rewrite-path"
    path: UriPart | None = None
    prefix: UriPart | None = None
    regex: str | None = None
    replacement: UriPart = ""

    @model_validator(mode="after")
    def _one_form(self) -> RewritePath:
        given = [f for f in ("path", "prefix", "regex") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, prefix or regex")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.path is not None and self.replacement:
            raise ValueError("replacement goes with prefix or regex; path already is the whole new path")
        if self.regex is not None:
            try:
                compiled = re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"invalid regex: {error}") from None
            try:  # the replacement's \N and \g<name> must name groups the regex has
                re._parser.parse_template(self.replacement, compiled)  # type: ignore[attr-defined]
            except re.error as error:
                raise ValueError(f"replacement: {error}") from None
        return self


class Redirect(Action):
    kind = "redirect"
    status: Literal[301, 302, 303, 307, 308] = 302
    scheme: Literal["http", "https"] | None = None
    host: HostText | None = None
    port: Port | None = None
    path: UriPart | None = Field(None, description="the new path; with `prefix`, what replaces that prefix")
    prefix: UriPart | None = Field(None, description="replace only this leading part of the path")
    keep_query: bool = True

    @model_validator(mode="after")
    def _prefix_needs_path(self) -> Redirect:
        if self.prefix is not None and self.path is None:
            raise ValueError("prefix needs path: what replaces the prefix")
        return self


class HttpsRedirect(Action):
    """Send a plain-HTTP request to the same URL over HTTPS; requests already on HTTPS go on."""

    kind = "https-redirect"
    status: Literal[301, 302, 307, 308] = 301
    port: Port | None = Field(None, description="the HTTPS port; 443 (left out of the URL) when unset")


class Hsts(Action):
    """Add Strict-Transport-Security to responses sent over HTTPS (never over plain HTTP)."""

    kind = "hsts"
    max_age: int = Field(31536000, ge=0, description="seconds browsers remember to use HTTPS only")
    include_subdomains: bool = False
    preload: bool = False


class Respond(Action):
    kind = "respond"
    status: int = Field(200, ge=200, le=599)
    body: str = ""
    content_type: HeaderValue = "text/plain; charset=utf-8"
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_header_name(name)
        return value


class Authenticate(Action):
    """Require a credential checked by the named auth provider (401/403 when it fails)."""

    kind = "authenticate"
    provider: Name


class RateLimitAction(Action):
    """Count the request against the named rate limit (429 past it, or a delay when shaping)."""

    kind = "rate-limit"
    policy: Name


ACTIONS: dict[str, type[Action]] = {
    cls.kind: cls
    for cls in (
        Proxy, Split, Mirror, Deny, SetRequestHeader, AddRequestHeader, RemoveRequestHeader,
        SetResponseHeader, AddResponseHeader, RemoveResponseHeader, RewritePath, RewriteQuery,
        Redirect, Respond, Cors, SetVar, HttpsRedirect, Hsts, Authenticate, RateLimitAction,
    )
}
TERMINAL_ACTIONS = ("proxy", "split", "redirect", "respond", "deny")


def _action_kind(value: Any) -> str | None:
    if isinstance(value, Action):
        return value.kind
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


AnyAction = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in ACTIONS.items())],
    Discriminator(_action_kind, custom_error_type="action",
                  custom_error_message=f"expected one of: {', '.join(ACTIONS)}"),
]


class Rule(Model):
    name: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    actions: list[AnyAction] = Field(min_length=1)
    order: int = 0
    top: bool = False
    last: bool = False
    enabled: bool = True

    @model_validator(mode="after")
    def _terminal_last(self) -> Rule:
        kinds = [action.kind for action in self.actions]
        terminals = [k for k in kinds if k in TERMINAL_ACTIONS]
        if len(terminals) > 1:
            raise ValueError(f"a rule can end in one of {', '.join(TERMINAL_ACTIONS)}, not {terminals}")
        if terminals and kinds[-1] != terminals[0]:
            raise ValueError(f"'{terminals[0]}' must be the rule's last action")
        return self


# --- TLS -----------------------------------------------------------------------------

TlsVersion = Literal["1.2", "1.3"]


def check_pem_or_file(pem: str | None, path: str | None, what: str) -> None:
    if (pem is None) == (path is None):
        raise ValueError(f"give exactly one of {what} (PEM text) or {what}_file")
    if pem is not None:
        from cryptography import x509
        try:
            x509.load_pem_x509_certificates(pem.encode())
        except ValueError as error:
            raise ValueError(f"{what}: not PEM certificates ({error})") from None


def check_ciphers(ciphers: str | None) -> str | None:
    if ciphers is not None:
        import ssl
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
        except ssl.SSLError:
            raise ValueError(f"no cipher matches {ciphers!r}; expected an OpenSSL cipher list such as "
                             "ECDHE+AESGCM:ECDHE+CHACHA20") from None
    return ciphers


class ClientAuth(Model):
    """mTLS: clients present a certificate signed by one of these CAs."""

    mode: Literal["required", "optional"] = "required"
    ca: str | None = Field(None, description="PEM: the CA certificates client certificates must chain to")
    ca_file: str | None = None

    @model_validator(mode="after")
    def _ca(self) -> ClientAuth:
        check_pem_or_file(self.ca, self.ca_file, "ca")
        return self


class TlsPolicy(Model):
    """Versions, ciphers and client certificates of an application's HTTPS ports."""

    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    ciphers: str | None = Field(None, description="OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are all safe)")
    client_auth: ClientAuth | None = None

    @model_validator(mode="after")
    def _versions(self) -> TlsPolicy:
        if self.min_version > self.max_version:
            raise ValueError(f"min_version {self.min_version} is above max_version {self.max_version}")
        check_ciphers(self.ciphers)
        return self


class UpstreamTls(Model):
    """TLS from the node to an upstream's servers."""

    verify: bool = Field(True, description="check the server's certificate and name")
    ca: str | None = Field(None, description="PEM: CAs to trust; the system's store when neither ca nor ca_file")
    ca_file: str | None = None
    server_name: HostText | None = Field(None, description="SNI and the name checked; upstream.host or the address")
    certificate: Name | None = Field(None, description="a certificate (by name) the node presents: mTLS")
    min_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _ca(self) -> UpstreamTls:
        if self.ca is not None or self.ca_file is not None:
            check_pem_or_file(self.ca, self.ca_file, "ca")
        return self


class SessionTickets(Model):
    """Session resumption: ticket keys shared by the node's workers, replaced every `rotate`;
    a ticket stays valid for `rotate` + `overlap` after its key took over."""

    enabled: bool = True
    rotate: Duration = Field(3600.0, gt=0)
    overlap: Duration = 3600.0


class NodeTls(Model):
    session_tickets: SessionTickets = SessionTickets()
    context_cache: int = Field(10000, ge=1, description="TLS contexts (certificate + policy) a worker keeps built")


class Acme(Model):
    """Where and how the node gets certificates marked `acme: true` (HTTP-01 on its plain ports)."""

    directory: Annotated[str, Field(pattern=r"^https?://\S+$")]
    email: str | None = None
    ca_bundle: str | None = Field(None, description="CA file for the directory's own TLS; the system's when unset")
    renew_before: Duration = 30 * 86400.0
    check_interval: Duration = Field(3600.0, gt=0)


# --- applications --------------------------------------------------------------------

_DOMAIN = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class Certificate(Model):
    """A certificate chain and its private key: PEM text inline, files the node reads, or
    issued and renewed over ACME (`acme: true`) for `domains`."""

    name: Name
    cert: str | None = Field(None, description="PEM: the certificate, then its chain")
    key: str | None = Field(None, description="PEM private key", json_schema_extra=SECRET)
    cert_file: str | None = None
    key_file: str | None = None
    acme: bool = Field(False, description="issued and renewed by the node over ACME (settings.acme)")
    domains: list[str] = Field(default_factory=list, description="names an ACME certificate is issued for")

    @model_validator(mode="after")
    def _pem(self) -> Certificate:
        if self.acme:
            given = [f for f in ("cert", "key", "cert_file", "key_file") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"an ACME certificate is issued by the node; remove {', '.join(given)}")
            if not self.domains:
                raise ValueError("domains: an ACME certificate needs the names to issue it for")
            for index, domain in enumerate(self.domains):
                if not _DOMAIN.match(domain) or domain.startswith("*."):
                    raise ValueError(f"domains[{index}]: {domain!r} is not a name HTTP-01 can prove; "
                                     "expected a domain such as shop.example.com (no wildcard)")
            return self
        if self.domains:
            raise ValueError("domains go with acme: true; a given certificate is valid for its own names")
        if (self.cert is None) == (self.cert_file is None):
            raise ValueError("give exactly one of cert (PEM text) or cert_file")
        if (self.key is None) == (self.key_file is None):
            raise ValueError("give exactly one of key (PEM text) or key_file")
        if self.cert is not None and self.key is not None:
            check_key_pair(self.cert, self.key)
        return self


def check_key_pair(cert_pem: str, key_pem: str) -> None:
    """The PEM texts parse, and the key is the certificate's (its public key matches)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError as error:
        raise ValueError(f"cert: not a PEM certificate chain ({error})") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"key: not an unencrypted PEM private key ({error})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(encoding, public) != key.public_key().public_bytes(encoding, public):
        raise ValueError("key: does not belong to the first certificate of cert")


class Application(Model):
    name: Name
    domains: list[str] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=lambda: [8080], description="plain HTTP ports")
    https_ports: list[Port] = Field(default_factory=list, description="ports that terminate TLS")
    certificates: list[Name] = Field(default_factory=list, description="chosen by SNI among these")
    partitions: list[Name] = Field(default_factory=lambda: ["default"], min_length=1)
    tls: TlsPolicy = Field(default_factory=lambda: TlsPolicy(), description="TLS on this application's https_ports")
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _listeners(self) -> Application:
        if not self.ports and not self.https_ports:
            raise ValueError("an application needs ports or https_ports")
        if self.https_ports and not self.certificates:
            raise ValueError("https_ports need certificates: the names of certificates to serve")
        both = set(self.ports) & set(self.https_ports)
        if both:
            raise ValueError(f"port {min(both)} cannot be both a plain and an HTTPS port")
        return self

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for index, domain in enumerate(value):
            if domain != "*" and not _DOMAIN.match(domain):
                raise ValueError(f"domains[{index}]: {domain!r} is not a domain; "
                                 "expected example.com, *.example.com or *")
            out.append(domain.lower())
        return out


# --- node-wide settings --------------------------------------------------------------


class Limits(Model):
    max_header_size: Size = 32 * 1024
    max_body_size: Size = 0
    client_header_timeout: Duration = 10.0
    client_body_timeout: Duration = 30.0
    keepalive_timeout: Duration = 60.0
    keepalive_requests: int = Field(10000, ge=1)
    send_timeout: Duration = 60.0
    drain_timeout: Duration = 30.0
    connections_per_client: int = Field(0, ge=0, description="open connections per client address; 0: no limit")
    tls_handshakes_per_client: float = Field(0.0, ge=0, description="new TLS handshakes per second per client address")


class AccessLog(Model):
    enabled: bool = True


class Location(Model):
    cidr: str
    location: str

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        check_cidrs([value], "")
        return value


class Redis(Model):
    """The Redis that holds cluster-wide rate-limit counters."""

    url: Annotated[str, Field(pattern=r"^rediss?://")] = "redis://127.0.0.1:6379/0"
    key_prefix: str = "edgeplane:"
    timeout: Duration = 0.1
    retry: Duration = Field(1.0, description="after a failure, how long decisions skip Redis before trying again")


class Settings(Model):
    limits: Limits = Limits()
    redis: Redis | None = None
    access_log: AccessLog = AccessLog()
    timezone: str = Field("UTC", description="time zone of time/weekday/date conditions without tz")
    trusted_proxies: list[str] = Field(default_factory=list, description="CIDRs whose X-Forwarded-For is believed")
    locations: list[Location] = Field(default_factory=list, description="client address → location, longest prefix wins")
    geoip_database: str | None = Field(None, description="a MaxMind .mmdb file; its country code is the location")
    tls: NodeTls = NodeTls()
    acme: Acme | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        check_cidrs(value, "")
        return value


class GlobalRules(Model):
    """Rules every application runs: `before` its own rules, or `after` them."""

    before: list[Rule] = Field(default_factory=list)
    after: list[Rule] = Field(default_factory=list)


# --- access: authentication providers, consumers, rate limits ---------------------------

JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "ES512", "EdDSA")
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA"]
# Where a credential is read from: `header:NAME` (`header:Authorization` takes the value after
# the scheme, `Bearer` for tokens), `query:NAME` or `cookie:NAME`.
CredentialSource = Annotated[str, Field(pattern=r"^(header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|query:[^\s&=#]+|cookie:[^\s;=]+)$")]


def check_variable_key(value: str) -> str:
    """`VARIABLE` or `VARIABLE:NAME` (for arg, header, cookie, var, claim): what a key is made of."""
    var, sep, name = value.partition(":")
    if var not in get_args(Variable) or var in CLOCK_VARIABLES or var == "random":
        raise ValueError(f"{value!r}: expected a request variable such as client-ip, consumer, "
                         "header:X-Api-Key or claim:sub")
    if (var in NAMED_VARIABLES) != bool(sep and name):
        need = "needs a name, as in" if var in NAMED_VARIABLES else "takes no name:"
        raise ValueError(f"{value!r}: {var} {need} {var + ':NAME' if var in NAMED_VARIABLES else var}")
    return value


VariableKey = Annotated[str, AfterValidator(check_variable_key)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]


class JwtKey(Model):
    """One verification key: a shared `secret` (HS*), a `pem` public key, or a `jwk`."""

    kid: str | None = None
    secret: str | None = Field(None, json_schema_extra=SECRET)
    pem: str | None = None
    jwk: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> JwtKey:
        given = [f for f in ("secret", "pem", "jwk") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of secret, pem or jwk")
        if self.secret is not None and len(self.secret.encode()) < 32:
            raise ValueError("secret: an HMAC secret needs at least 32 bytes (RFC 7518 §3.2)")
        if self.pem is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
            try:
                load_pem_public_key(self.pem.encode())
            except (ValueError, TypeError) as error:
                raise ValueError(f"pem: not a PEM public key ({error})") from None
        if self.jwk is not None:
            import jwt
            try:
                jwt.PyJWK(self.jwk)
            except jwt.PyJWTError as error:
                raise ValueError(f"jwk: not a usable JSON Web Key ({error})") from None
        return self


class JwtProvider(Model):
    """Bearer JWTs verified with inline keys and/or a JWKS fetched from `jwks_uri`."""

    algorithms: list[JwtAlgorithm] = Field(min_length=1, description="the only algorithms accepted")
    keys: list[JwtKey] = Field(default_factory=list)
    jwks_uri: HttpUrl | None = None
    jwks_refresh: Duration = Field(600.0, description="how long a fetched JWKS is used before it is fetched again")
    jwks_min_interval: Duration = Field(30.0, description="an unknown kid refetches the JWKS at most this often")
    issuer: str | None = None
    audiences: list[str] = Field(default_factory=list, description="the token's aud must name one of these")
    leeway: Duration = 0.0
    require: list[str] = Field(default_factory=lambda: ["exp"], description="claims a token must carry")
    token: CredentialSource = "header:Authorization"
    consumer_claim: str | None = Field(None, description="the claim whose value is the consumer name")
    tier_claim: str | None = Field(None, description="the claim whose value is the consumer tier")
    claims_to_headers: dict[str, HeaderName] = Field(default_factory=dict, description="claim → request header")
    strip: bool = Field(True, description="remove the token before the request goes upstream")

    @model_validator(mode="after")
    def _keys(self) -> JwtProvider:
        if not self.keys and self.jwks_uri is None:
            raise ValueError("give keys, jwks_uri, or both")
        for header in self.claims_to_headers.values():
            check_header_name(header)
        return self


class ApiKeyProvider(Model):
    """API keys of `consumers`, read from a header or a query argument."""

    key: CredentialSource = "header:X-Api-Key"
    strip: bool = True


class BasicProvider(Model):
    """HTTP Basic authentication against the consumers' `basic` credentials."""

    realm: Annotated[str, Field(pattern=r'^[^"\\\r\n\x00]*$')] = "edgeplane"
    strip: bool = True
    cache: Duration = Field(300.0, description="how long a verified password is remembered (0: never)")


class OidcProvider(Model):
    """Browser login with OpenID Connect: authorization code + PKCE, a session cookie."""

    issuer: HttpUrl
    client_id: str
    client_secret: str | None = Field(None, json_schema_extra=SECRET)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    redirect_path: UriPart = "/oauth2/callback"
    logout_path: UriPart = "/oauth2/logout"
    post_logout_redirect: UriPart = "/"
    cookie: Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")] = "edgeplane_session"
    session_secret: str = Field(min_length=32, description="signs and encrypts the session cookie",
                                json_schema_extra=SECRET)
    session_lifetime: Duration = Field(8 * 3600.0, description="longest a session lives before a new login")
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: ["RS256", "ES256"])
    consumer_claim: str | None = "sub"
    claims_to_headers: dict[str, HeaderName] = Field(default_factory=dict)
    discovery_refresh: Duration = 3600.0

    @model_validator(mode="after")
    def _scopes(self) -> OidcProvider:
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        for header in self.claims_to_headers.values():
            check_header_name(header)
        return self


class ExtAuthzProvider(Model):
    """A subrequest to an authorization service decides: 2xx allows, anything else denies."""

    upstream: Name
    path: UriPart = "/"
    headers: list[HeaderName] = Field(default_factory=lambda: ["Authorization", "Cookie"],
                                      description="request headers sent to the service")
    upstream_headers: list[HeaderName] = Field(default_factory=list,
                                               description="headers of its answer added to the upstream request")
    cache_key: list[VariableKey] = Field(default_factory=list, description="what decisions are cached by")
    cache_ttl: Duration = 0.0
    timeout: Duration = 1.0
    on_error: Literal["deny", "allow"] = "deny"

    @model_validator(mode="after")
    def _cache(self) -> ExtAuthzProvider:
        if self.cache_ttl and not self.cache_key:
            raise ValueError("cache_ttl needs cache_key: the variables a decision is cached by")
        for header in self.upstream_headers:
            check_header_name(header)
        return self


AUTH_KINDS = ("jwt", "api_key", "basic", "oidc", "ext_authz")


class AuthProvider(Model):
    """A named way to authenticate; exactly one of its kinds is given."""

    name: Name
    jwt: JwtProvider | None = None
    api_key: ApiKeyProvider | None = None
    basic: BasicProvider | None = None
    oidc: OidcProvider | None = None
    ext_authz: ExtAuthzProvider | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> AuthProvider:
        given = [kind for kind in AUTH_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(AUTH_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in AUTH_KINDS if getattr(self, kind) is not None)


class BasicCredential(Model):
    username: str = Field(pattern=r"^[^:\x00-\x1f]+$")
    password: str = Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$",
                          description="scrypt$N$r$p$salt$hash, as edgeplane.node.auth.credentials.hash_password writes it")


class Consumer(Model):
    """Who a credential belongs to; its name and tier are the rule variables consumer and consumer-tier."""

    name: Name
    tier: str = ""
    api_keys: list[Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]] = Field(
        default_factory=list, description="sha256:HEX digests of the keys (edgeplane.node.auth.credentials.hash_api_key)")
    basic: BasicCredential | None = None


Unlimited = Literal["unlimited"]


class RateLimit(Model):
    """A named limit: `limit` requests per `window` per key (or in flight at once, for
    concurrency), counted per worker, per node or across the cluster (Redis)."""

    name: Name
    algorithm: Literal["token-bucket", "sliding-window", "concurrency"] = "token-bucket"
    limit: int = Field(ge=0)
    window: Duration = 1.0
    burst: int | None = Field(None, ge=1, description="token bucket capacity; `limit` when unset")
    key: list[VariableKey] = Field(default_factory=list, description="one counter per distinct value; none: one")
    tier: VariableKey | None = Field(None, description="the variable whose value picks a tier")
    tiers: dict[str, int | Unlimited] = Field(default_factory=dict, description="tier → limit, or unlimited")
    scope: Literal["worker", "node", "cluster"] = "node"
    max_delay: Duration = Field(0.0, description="shaping: wait up to this long for room instead of refusing")
    on_unreachable: Literal["allow", "deny", "local"] = Field(
        "local", description="cluster scope, Redis unreachable: admit, refuse, or count on this node")
    headers: bool = Field(True, description="send RateLimit-Policy and RateLimit on responses")

    @model_validator(mode="after")
    def _shape(self) -> RateLimit:
        if self.window <= 0:
            raise ValueError("window must be longer than 0s")
        if self.tiers and self.tier is None:
            raise ValueError("tiers need tier: the variable that picks one, such as consumer-tier")
        if self.max_delay and self.algorithm == "concurrency":
            raise ValueError("max_delay (shaping) works with token-bucket and sliding-window, not concurrency")
        if self.algorithm == "concurrency" and self.scope == "cluster":
            raise ValueError("concurrency limits are counted per worker or per node, not in the cluster")
        if self.burst is not None and self.algorithm != "token-bucket":
            raise ValueError("burst is the capacity of a token bucket; it does not apply here")
        return self


def duplicate_names(config: Any, kinds: tuple[str, ...]) -> list[str]:
    """Each object of these kinds whose name an earlier one of its kind already has."""
    errors = []
    for kind in kinds:
        seen: dict[str, int] = {}
        for index, item in enumerate(getattr(config, kind)):
            if item.name in seen:
                errors.append(f"{kind}[{index}].name: {item.name!r} is already used by {kind}[{seen[item.name]}]")
            seen.setdefault(item.name, index)
    return errors


def access_references(config: Any) -> list[str]:
    """Cross-object checks of the access objects: names, and what actions refer to."""
    errors = duplicate_names(config, ("auth_providers", "consumers", "rate_limits"))
    providers = {p.name for p in config.auth_providers}
    limits = {r.name: r for r in config.rate_limits}
    upstreams = {u.name for u in config.upstreams}
    for index, provider in enumerate(config.auth_providers):
        if provider.ext_authz is not None and provider.ext_authz.upstream not in upstreams:
            errors.append(f"auth_providers[{index}].ext_authz.upstream: no upstream named "
                          f"{provider.ext_authz.upstream!r}; known: {sorted(upstreams)}")
    for index, limit in enumerate(config.rate_limits):
        if limit.scope == "cluster" and config.settings.redis is None:
            errors.append(f"rate_limits[{index}].scope: cluster needs settings.redis")
    seen_keys: dict[str, str] = {}
    users: dict[str, str] = {}
    for index, consumer in enumerate(config.consumers):
        for k, digest in enumerate(consumer.api_keys):
            owner = seen_keys.setdefault(digest, consumer.name)
            if owner != consumer.name:
                errors.append(f"consumers[{index}].api_keys[{k}]: the same key belongs to consumer {owner!r}")
        if consumer.basic is not None:
            owner = users.setdefault(consumer.basic.username, consumer.name)
            if owner != consumer.name:
                errors.append(f"consumers[{index}].basic.username: {consumer.basic.username!r} is "
                              f"consumer {owner!r}'s")
    rule_lists = [(f"global_rules.{w}", getattr(config.global_rules, w)) for w in ("before", "after")]
    rule_lists += [(f"applications[{a}].rules", app.rules) for a, app in enumerate(config.applications)]
    for where, rules in rule_lists:
        for r, rule in enumerate(rules):
            for x, action in enumerate(rule.actions):
                if isinstance(action, Authenticate) and action.provider not in providers:
                    errors.append(f"{where}[{r}].actions[{x}].authenticate.provider: no auth provider named "
                                  f"{action.provider!r}; known: {sorted(providers)}")
                if isinstance(action, RateLimitAction) and action.policy not in limits:
                    errors.append(f"{where}[{r}].actions[{x}].rate-limit.policy: no rate limit named "
                                  f"{action.policy!r}; known: {sorted(limits)}")
    return errors


# --- progressive delivery: automated canaries ------------------------------------------


class Canary(Model):
    """An automated canary: the control plane gives `canary` a growing share of the traffic
    of one rule (which proxies to `stable`) — `step_weight` more after each `interval` whose
    figures, measured by the partition's nodes, pass the thresholds — promotes it after
    `max_weight`, and rolls it back after `max_failed_checks` failed checks. `match` sends
    matching requests to the canary at any weight; `sticky` and `cookie` (`cookie_max_age`)
    keep a user on one version, as in `split`. See docs/canary.md."""

    name: Name
    partitions: list[Name] = Field(default_factory=lambda: ["default"], min_length=1, max_length=1,
                                   description="the one partition whose nodes it measures and whose releases it makes")
    application: Name
    rule: str = Field(min_length=1, description="the name of the application's rule it drives; "
                                                "that rule ends in `proxy` to `stable`")
    stable: Name
    canary: Name
    step_weight: int = Field(10, ge=1, le=100, description="percent added after each passed check")
    max_weight: int = Field(50, ge=1, le=100, description="the last step's weight; the next passed check promotes")
    interval: Duration = Field(60.0, description="how long each step is measured before a check")
    min_success_rate: float = Field(0.99, ge=0, le=1, description="answers below 500 / answers, per check")
    max_p99: Duration | None = Field(None, description="the canary's p99 duration may not exceed this")
    min_requests: int = Field(100, ge=1, description="canary requests a check needs before a verdict")
    max_failed_checks: int = Field(2, ge=1, description="failed checks (in all) that roll the canary back")
    match: list[Condition] = Field(default_factory=list, description="requests matching all of these go to the "
                                                                     "canary whatever the weight")
    sticky: HashKey | None = None
    cookie: CookieName | None = None
    cookie_max_age: Duration | None = None

    @model_validator(mode="after")
    def _steps(self) -> Canary:
        if self.max_weight < self.step_weight:
            raise ValueError(f"max_weight ({self.max_weight}) is below step_weight ({self.step_weight})")
        if self.interval < 0.5:
            raise ValueError("interval: at least 0.5s (nodes need time to apply a step and report on it)")
        if self.stable == self.canary:
            raise ValueError("stable and canary are the same upstream")
        if self.cookie_max_age is not None and self.cookie is None:
            raise ValueError("cookie_max_age needs cookie: the name of the cookie that pins a client")
        return self


class CanaryWeight(Model):
    """A canary's share of its rule's traffic, in percent, as the canary controller last
    released it. Only the controller writes these; a node compiles a canary only while its
    weight is released (rolled back or aborted: no weight, the rule routes as written)."""

    name: Name
    partitions: list[Name] = Field(default_factory=lambda: ["default"], min_length=1, max_length=1)
    weight: int = Field(ge=0, le=100)


def canary_references(config: Any) -> list[str]:
    """Cross-object checks of canaries: the partition, application, rule and upstreams they name."""
    errors = duplicate_names(config, ("canaries", "canary_weights"))
    upstreams = {u.name for u in config.upstreams}
    applications = {a.name: a for a in config.applications}
    for index, canary in enumerate(config.canaries):
        where = f"canaries[{index}]"
        for field in ("stable", "canary"):
            if getattr(canary, field) not in upstreams:
                errors.append(f"{where}.{field}: no upstream named {getattr(canary, field)!r}; known: {sorted(upstreams)}")
        app = applications.get(canary.application)
        if app is None:
            errors.append(f"{where}.application: no application named {canary.application!r}")
            continue
        if canary.partitions[0] not in app.partitions:
            errors.append(f"{where}.partitions[0]: application {app.name!r} is not bound to partition "
                          f"{canary.partitions[0]!r}; it is bound to {app.partitions}")
        rules = [rule for rule in app.rules if rule.name == canary.rule]
        if len(rules) != 1:
            named = sorted({r.name for r in app.rules if r.name})
            errors.append(f"{where}.rule: application {app.name!r} has {len(rules) or 'no'} rule(s) named "
                          f"{canary.rule!r}; a canary drives exactly one (named rules: {named})")
            continue
        last = rules[0].actions[-1]
        if not isinstance(last, Proxy) or last.upstream != canary.stable:
            errors.append(f"{where}.rule: rule {canary.rule!r} of application {app.name!r} must end in "
                          f"`proxy: {{upstream: {canary.stable}}}` (the stable version the canary takes traffic from); "
                          "to move on to a new version, change the rule and the canary in one apply")
    return errors


class Config(Model):
    partitions: list[Partition] = Field(default_factory=lambda: [Partition(name="default")])
    clusters: list[Cluster] = Field(default_factory=lambda: [Cluster(name="default")])
    nodes: list[Node] = Field(default_factory=list)
    settings: Settings = Settings()
    upstreams: list[Upstream] = Field(default_factory=list)
    certificates: list[Certificate] = Field(default_factory=list)
    global_rules: GlobalRules = GlobalRules()
    applications: list[Application] = Field(default_factory=list)
    auth_providers: list[AuthProvider] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    rate_limits: list[RateLimit] = Field(default_factory=list)
    canaries: list[Canary] = Field(default_factory=list)
    canary_weights: list[CanaryWeight] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Config:
        errors = duplicate_names(self, ("partitions", "clusters", "nodes", "upstreams", "certificates", "applications"))
        partitions = {p.name for p in self.partitions}
        clusters = {c.name for c in self.clusters}
        upstreams = {u.name for u in self.upstreams}
        for index, cluster in enumerate(self.clusters):
            if cluster.partition not in partitions:
                errors.append(f"clusters[{index}].partition: no partition named {cluster.partition!r}")
        for index, node in enumerate(self.nodes):
            if node.cluster not in clusters:
                errors.append(f"nodes[{index}].cluster: no cluster named {node.cluster!r}")
        claimed: dict[tuple[str, str, int], str] = {}
        rule_lists = [(f"global_rules.{w}", getattr(self.global_rules, w)) for w in ("before", "after")]
        rule_lists += [(f"applications[{a}].rules", app.rules) for a, app in enumerate(self.applications)]
        for where, rules in rule_lists:
            for r, rule in enumerate(rules):
                for x, action in enumerate(rule.actions):
                    for field, name in action_upstreams(action):
                        if name not in upstreams:
                            errors.append(f"{where}[{r}].actions[{x}].{action.kind}.{field}: "
                                          f"no upstream named {name!r}; known: {sorted(upstreams)}")
        certificates = {c.name for c in self.certificates}
        tls_of_port: dict[tuple[str, int], tuple[bool, str]] = {}
        for a, app in enumerate(self.applications):
            for p, partition in enumerate(app.partitions):
                if partition not in partitions:
                    errors.append(f"applications[{a}].partitions[{p}]: no partition named {partition!r}")
            for c, name in enumerate(app.certificates):
                if name not in certificates:
                    errors.append(f"applications[{a}].certificates[{c}]: no certificate named {name!r}; "
                                  f"known: {sorted(certificates)}")
            for tls, ports in ((False, app.ports), (True, app.https_ports)):
                for port in ports:
                    for partition in app.partitions:
                        seen = tls_of_port.setdefault((partition, port), (tls, app.name))
                        if seen[0] != tls:
                            kind = "https_ports" if tls else "ports"
                            errors.append(f"applications[{a}].{kind}: port {port} is {'plain' if tls else 'HTTPS'} "
                                          f"for application {seen[1]!r}; a port is one or the other")
            for d, domain in enumerate(app.domains):
                for partition in app.partitions:
                    for port in app.ports + app.https_ports:
                        owner = claimed.setdefault((partition, domain, port), app.name)
                        if owner != app.name:
                            errors.append(f"applications[{a}].domains[{d}]: {domain}:{port} is already "
                                          f"served by application {owner!r}")
        by_name = {c.name: c for c in self.certificates}
        for u, upstream in enumerate(self.upstreams):
            name = upstream.tls.certificate if upstream.tls else None
            if name is not None and (name not in by_name or by_name[name].acme):
                errors.append(f"upstreams[{u}].tls.certificate: no certificate named {name!r} with a key the node "
                              f"holds; known: {sorted(n for n, c in by_name.items() if not c.acme)}")
        if any(c.acme for c in self.certificates) and self.settings.acme is None:
            first = next(i for i, c in enumerate(self.certificates) if c.acme)
            errors.append(f"certificates[{first}].acme: needs settings.acme (the ACME directory to use)")
        errors += access_references(self)
        errors += canary_references(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def upstream(self, name: str) -> Upstream:
        return next(u for u in self.upstreams if u.name == name)


def action_upstreams(action: Action) -> list[tuple[str, str]]:
    """(field path, upstream name) of every upstream an action refers to."""
    if isinstance(action, (Proxy, Mirror)):
        return [("upstream", action.upstream)]
    if isinstance(action, Split):
        return [(f"upstreams[{i}].upstream", w.upstream) for i, w in enumerate(action.upstreams)]
    return []

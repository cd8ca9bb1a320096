"""The configuration model: every object a node, the admin and the CLI agree on.

Objects are immutable pydantic models that reject unknown fields; cross-object checks
(references, duplicate names, overlapping domains) live in `Config`. This module imports no
other part of edgeplane and never touches the network or the file system.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
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


# --- topology ------------------------------------------------------------------------


class Partition(Model):
    name: Name


class Cluster(Model):
    name: Name
    partition: Name = "default"


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
    max_fails: int = Field(1, ge=0, description="connect failures that mark it down; 0 never")
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


class Upstream(Model):
    name: Name
    servers: list[Server] = Field(min_length=1)
    balance: Literal["round-robin", "least-conn", "hash", "ewma"] = "round-robin"
    hash_key: HashKey | None = None
    host: str | None = Field(None, description="Host sent upstream; the client's when unset")
    pool: Pool = Pool()
    timeouts: UpstreamTimeouts = UpstreamTimeouts()

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
    "client-ip", "http-version",
]
NAMED_VARIABLES = {"arg", "header", "cookie"}
Operator = Literal[
    "eq", "ne", "prefix", "suffix", "contains", "regex", "not-regex", "cidr", "not-cidr",
    "exists", "missing", "gt", "ge", "lt", "le",
]
VALUELESS_OPERATORS = {"exists", "missing"}


class Condition(Model):
    var: Variable
    name: str | None = Field(None, description="header, cookie or query argument name")
    op: Operator = "eq"
    values: list[str] = Field(default_factory=list)
    caseless: bool = False

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
            for index, network in enumerate(self.values):
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise ValueError(f"values[{index}]: expected a CIDR such as 10.0.0.0/8") from None
        if self.op in ("gt", "ge", "lt", "le"):
            for index, number in enumerate(self.values):
                try:
                    float(number)
                except ValueError:
                    raise ValueError(f"values[{index}]: expected a number") from None
        return self


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, Field(pattern=r"^[^\r\n\x00]*$")]


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


class Proxy(Action):
    kind = "proxy"
    upstream: Name


class HeaderChange(Action):
    name: HeaderName
    value: HeaderValue


class SetRequestHeader(HeaderChange):
    kind = "set-request-header"


class AddRequestHeader(HeaderChange):
    kind = "add-request-header"


class RemoveRequestHeader(Action):
    kind = "remove-request-header"
    name: HeaderName


class SetResponseHeader(HeaderChange):
    kind = "set-response-header"


class AddResponseHeader(HeaderChange):
    kind = "add-response-header"


class RemoveResponseHeader(Action):
    kind = "remove-response-header"
    name: HeaderName


class RewritePath(Action):
    """Replace the whole path (`path`), a leading `prefix`, or what `regex` matches."""

    kind = "rewrite-path"
    path: str | None = None
    prefix: str | None = None
    regex: str | None = None
    replacement: str = ""

    @model_validator(mode="after")
    def _one_form(self) -> RewritePath:
        given = [f for f in ("path", "prefix", "regex") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, prefix or regex")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"invalid regex: {error}") from None
        return self


class Redirect(Action):
    kind = "redirect"
    status: Literal[301, 302, 303, 307, 308] = 302
    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: Port | None = None
    path: str | None = None
    keep_query: bool = True


class Respond(Action):
    kind = "respond"
    status: int = Field(200, ge=200, le=599)
    body: str = ""
    content_type: HeaderValue = "text/plain; charset=utf-8"
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)


ACTIONS: dict[str, type[Action]] = {
    cls.kind: cls
    for cls in (
        Proxy, SetRequestHeader, AddRequestHeader, RemoveRequestHeader, SetResponseHeader,
        AddResponseHeader, RemoveResponseHeader, RewritePath, Redirect, Respond,
    )
}
TERMINAL_ACTIONS = ("proxy", "redirect", "respond")


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


# --- applications --------------------------------------------------------------------

_DOMAIN = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class Application(Model):
    name: Name
    domains: list[str] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=lambda: [8080], min_length=1)
    partitions: list[Name] = Field(default_factory=lambda: ["default"], min_length=1)
    rules: list[Rule] = Field(default_factory=list)

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


class AccessLog(Model):
    enabled: bool = True


class Settings(Model):
    limits: Limits = Limits()
    access_log: AccessLog = AccessLog()


# --- the whole -----------------------------------------------------------------------


class Config(Model):
    partitions: list[Partition] = Field(default_factory=lambda: [Partition(name="default")])
    clusters: list[Cluster] = Field(default_factory=lambda: [Cluster(name="default")])
    nodes: list[Node] = Field(default_factory=list)
    settings: Settings = Settings()
    upstreams: list[Upstream] = Field(default_factory=list)
    applications: list[Application] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Config:
        errors: list[str] = []
        for kind in ("partitions", "clusters", "nodes", "upstreams", "applications"):
            seen: dict[str, int] = {}
            for index, item in enumerate(getattr(self, kind)):
                if item.name in seen:
                    errors.append(f"{kind}[{index}].name: {item.name!r} is already used by "
                                  f"{kind}[{seen[item.name]}]")
                seen.setdefault(item.name, index)
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
        for a, app in enumerate(self.applications):
            for p, partition in enumerate(app.partitions):
                if partition not in partitions:
                    errors.append(f"applications[{a}].partitions[{p}]: no partition named {partition!r}")
            for r, rule in enumerate(app.rules):
                for x, action in enumerate(rule.actions):
                    if isinstance(action, Proxy) and action.upstream not in upstreams:
                        errors.append(f"applications[{a}].rules[{r}].actions[{x}].proxy.upstream: "
                                      f"no upstream named {action.upstream!r}; known: {sorted(upstreams)}")
            for d, domain in enumerate(app.domains):
                for partition in app.partitions:
                    for port in app.ports:
                        owner = claimed.setdefault((partition, domain, port), app.name)
                        if owner != app.name:
                            errors.append(f"applications[{a}].domains[{d}]: {domain}:{port} is already "
                                          f"served by application {owner!r}")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def upstream(self, name: str) -> Upstream:
        return next(u for u in self.upstreams if u.name == name)

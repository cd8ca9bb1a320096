"""Kubernetes Gateway API ↔ the configuration model.

`import_gateway_api` turns Gateways, HTTPRoutes, Services, TLS Secrets and ReferenceGrants
(plus an endpoints file, since a node has no cluster to ask) into a `Config`: one
application per port and hostname, its rules in Gateway API precedence, HTTPS listeners
terminating TLS with their Secrets' certificates. `export_gateway_api` turns a `Config`
back into a Gateway, HTTPRoutes and Secrets. What has no translation either way comes back
as a `TranslationWarning`, never silently dropped. Reading files is this module's only I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import (
    AddRequestHeader,
    AddResponseHeader,
    Application,
    Certificate,
    Condition,
    Config,
    Cors,
    Mirror,
    Proxy,
    Redirect,
    RemoveRequestHeader,
    RemoveResponseHeader,
    Respond,
    Retry,
    RetryBudget,
    RewritePath,
    Rule,
    Server,
    SetRequestHeader,
    SetResponseHeader,
    Split,
    Upstream,
    WeightedUpstream,
    action_upstreams,
)

GROUP = "gateway.networking.k8s.io"
ServiceKey = tuple[str, str, int]                   # namespace, name, port
Endpoints = dict[ServiceKey, list[tuple[str, int]]]  # → address, port of each endpoint

_NOT_SUPPORTED = {
    "GRPCRoute": "gRPC needs HTTP/2, which the node does not speak yet",
    "TCPRoute": "the node has no TCP stream proxy yet",
    "UDPRoute": "the node has no UDP proxy yet",
    "TLSRoute": "the node has no TLS passthrough yet",
    "BackendTLSPolicy": "the node has no TLS to upstreams yet",
}
_LISTENER_PROTOCOLS = {  # listener protocols the node cannot serve, and why
    "TLS": "the node has no TLS passthrough or TCP stream proxy yet",
    "TCP": "the node has no TCP stream proxy yet",
    "UDP": "the node has no UDP proxy yet",
}
_TLS_SECRET = "kubernetes.io/tls"
_APP_PROTOCOLS = {  # backend protocols the node cannot speak (kubernetes.io/ws it tunnels as an upgrade)
    "kubernetes.io/wss": "WebSocket over TLS; the node has no TLS to upstreams yet",
    "kubernetes.io/h2c": "HTTP/2 cleartext; the node speaks HTTP/1.1 to upstreams",
}
_DURATION_PART = re.compile(r"(\d{1,5})(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_SERVICE_KEY = re.compile(r"^(?:([a-z0-9][-a-z0-9]*)/)?([a-z0-9][-a-z0-9.]*):(\d{1,5})$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(\d{1,5})$")
_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_LIMIT = 63
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class TranslationWarning:
    """Something of `kind` `name` (namespace/name) at `field` that was not translated as written."""

    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.kind} {self.name}" + (f": {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class GatewayApiError(ValueError):
    """Input that cannot be read at all: bad YAML, a malformed endpoints file."""


# --- files ---------------------------------------------------------------------------


def read_manifests(paths: list[str | Path]) -> list[dict]:
    """Every object of the YAML/JSON files given, directories searched for *.yaml/*.yml/*.json."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
        else:
            files.append(path)
    documents: list[dict] = []
    for file in files:
        try:
            loaded = list(yaml.load_all(file.read_text(encoding="utf-8"), Loader=_Loader))
        except OSError as error:
            raise GatewayApiError(f"{file}: cannot read: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{file}:{mark.line + 1}" if mark else str(file)
            raise GatewayApiError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
        for document in loaded:
            if isinstance(document, dict) and document.get("kind") == "List":
                documents += [item for item in document.get("items") or [] if isinstance(item, dict)]
            elif isinstance(document, dict):
                documents.append(document)
    return documents


def read_endpoints(path: str | Path) -> Endpoints:
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as error:
        raise GatewayApiError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise GatewayApiError(f"{path}: not valid YAML: {error}") from None
    return parse_endpoints(data, str(path))


def parse_endpoints(data: Any, source: str = "<endpoints>") -> Endpoints:
    """`services: {NAMESPACE/NAME:PORT: [ADDRESS:PORT, ...]}`; the namespace defaults to `default`."""
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"services"} or not isinstance(data.get("services") or {}, dict):
        raise GatewayApiError(f"{source}: expected 'services:' mapping NAMESPACE/NAME:PORT to a list of ADDRESS:PORT")
    endpoints: Endpoints = {}
    problems = []
    for key, addresses in (data.get("services") or {}).items():
        match = _SERVICE_KEY.match(str(key))
        if not match:
            problems.append(f"services: {key!r} is not NAMESPACE/NAME:PORT such as shop/api:8080")
            continue
        namespace, name, port = match.group(1) or "default", match.group(2), int(match.group(3))
        servers = []
        for index, address in enumerate(addresses if isinstance(addresses, list) else [addresses]):
            parsed = _ADDRESS.match(str(address))
            if not parsed:
                problems.append(f"services.{key}[{index}]: {address!r} is not ADDRESS:PORT such as 10.0.0.5:3000")
                continue
            servers.append((parsed.group(1).strip("[]"), int(parsed.group(2))))
        endpoints[(namespace, name, port)] = servers
    if problems:
        raise GatewayApiError("\n".join(f"{source}: {problem}" for problem in problems))
    return endpoints


def format_endpoints(endpoints: Endpoints) -> dict:
    """The inverse of `parse_endpoints`: the data of an endpoints file."""
    return {"services": {f"{ns}/{name}:{port}": [f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in servers]
                         for (ns, name, port), servers in endpoints.items()}}


# --- small translations shared by both directions ------------------------------------


def parse_duration(text: Any) -> float | None:
    """A Gateway API duration ("1h30m", "500ms") in seconds; "0s" (disabled) is None."""
    if text is None:
        return None
    text = str(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Gateway API duration such as 500ms, 10s or 1h30m")
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    return seconds or None


def format_duration(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def segment_prefix_regex(prefix: str) -> str:
    """The path condition of a PathPrefix match: whole segments, so /foo matches /foo/bar, not /foobar."""
    return f"^{re.escape(prefix)}(?:/|$)"


def full_match_regex(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _unescape_prefix(regex: str) -> str | None:
    """The prefix `segment_prefix_regex` made `regex` from, or None."""
    if not (regex.startswith("^") and regex.endswith("(?:/|$)")):
        return None
    prefix = re.sub(r"\\(.)", r"\1", regex[1:-len("(?:/|$)")])
    return prefix if segment_prefix_regex(prefix) == regex else None


def _unwrap_full_match(regex: str) -> str | None:
    if regex.startswith("^(?:") and regex.endswith(")$"):
        return regex[4:-2]
    return None


def _trim_prefix(value: str) -> str:
    return value.rstrip("/") or "/"


def _name(text: str, taken: set[str]) -> str:
    """A model name (letters, digits, `_.-`, at most 63) from `text`, unique among `taken`."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"
    if len(base) > _NAME_LIMIT:
        base = base[: _NAME_LIMIT - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    name, counter = base, 2
    while name in taken:
        suffix = f"-{counter}"
        name, counter = base[: _NAME_LIMIT - len(suffix)] + suffix, counter + 1
    taken.add(name)
    return name


def _reason(error: Exception) -> str:
    """One line saying what was wrong with a manifest field."""
    if isinstance(error, ValidationError):
        item = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in item["loc"])
        return (f"{where}: " if where else "") + item["msg"].removeprefix("Value error, ")
    if isinstance(error, KeyError):
        return f"required field {error.args[0]!r} is missing"
    return str(error)


# --- hostnames -----------------------------------------------------------------------


def covers(pattern: str, host: str) -> bool:
    """Whether hostname `pattern` ("*", "*.example.com" or exact) matches `host`; a wildcard
    `host` is covered only by a pattern at most as specific."""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix) and host != "*"
    return False


def intersect_hostnames(listener: str | None, route: list[str]) -> list[str]:
    """The hostnames a route serves on a listener (Gateway API hostname intersection)."""
    if not route:
        return [listener or "*"]
    if listener is None:
        return list(dict.fromkeys(route))
    out = []
    for host in route:
        if covers(listener, host):
            out.append(host)
        elif covers(host, listener):
            out.append(listener)
    return list(dict.fromkeys(out))


def _listener_specificity(hostname: str) -> tuple[int, int]:
    if hostname == "*":
        return (0, 0)
    return (1 if hostname.startswith("*.") else 2, len(hostname))


def _route_host_specificity(hostname: str) -> tuple[int, int]:
    """Characters in a matching non-wildcard hostname, then in any matching hostname."""
    return (0 if "*" in hostname else len(hostname), len(hostname))


# --- import --------------------------------------------------------------------------


def match_precedence(match: dict) -> tuple:
    """Gateway API order of matches: exact path, longest prefix, regex; then a method; then
    most header matches; then most query matches. Smaller sorts first."""
    path = match.get("path") or {}
    kind = path.get("type", "PathPrefix")
    rank = {"Exact": 0, "PathPrefix": 1}.get(kind, 2)
    length = len(path.get("value", "/")) if rank < 2 else 0
    return (rank, -length, 0 if match.get("method") else 1,
            -len(match.get("headers") or []), -len(match.get("queryParams") or []))


@dataclass
class _Listener:
    gateway: tuple[str, str]
    name: str
    port: int
    hostname: str | None
    allowed_from: str
    selector: dict
    http_routes: bool
    certificates: list[str]  # the config's names of those it terminates TLS with; empty: plain HTTP

    @property
    def label(self) -> str:
        return f"{self.gateway[0]}/{self.gateway[1]} listener {self.name!r}"


class _Refused(Exception):
    """Why a listener cannot be served, as its warning: kind, name and field of the object at
    fault, and what is wrong there."""

    def __init__(self, kind: str, name: str, where: str, problem: str):
        super().__init__(kind, name, where, problem)
        self.kind, self.name, self.where, self.problem = kind, name, where, problem


@dataclass
class _Backend:
    weight: int
    actions: list
    upstream: str | None
    fixed: Any = None  # a Redirect or Respond decided by the backendRef's filters or its failure


@dataclass
class _Route:
    doc: dict
    namespace: str
    name: str
    blocks: dict = field(default_factory=dict)  # gateway port → [(precedence, rule, match, rules)]

    @property
    def key(self) -> tuple[str, str]:
        created = str((self.doc.get("metadata") or {}).get("creationTimestamp") or "")
        return (created, f"{self.namespace}/{self.name}")


class _Importer:
    def __init__(self, documents: list[dict], endpoints: Endpoints, ports: dict[int, int]):
        self.endpoints = endpoints
        self.ports = ports
        self.warnings: list[TranslationWarning] = []
        self.namespaces: dict[str, dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.grants: list[tuple[str, dict]] = []
        self.secrets: dict[tuple[str, str], dict] = {}
        self.certificates: dict[tuple[str, str], Certificate | _Refused] = {}  # by Secret, once read
        self.certificate_names: set[str] = set()
        self.gateways: dict[tuple[str, str], dict] = {}
        self.routes: list[_Route] = []
        self.upstreams: dict[ServiceKey, Upstream] = {}
        self.upstream_names: set[str] = set()
        for document in documents:
            self.index(document)

    # --- input -------------------------------------------------------------------------

    def index(self, doc: dict) -> None:
        kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
        meta = doc.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "default")
        spec = doc.get("spec") or {}
        if kind == "Namespace":
            self.namespaces[name] = meta.get("labels") or {}
        elif kind == "Service" and api == "v1":
            self.services[(namespace, name)] = spec
        elif kind == "Secret" and api == "v1":
            self.secrets[(namespace, name)] = doc
        elif not api.startswith(GROUP + "/"):
            return  # workloads, config maps: nothing a node needs from them
        elif kind == "Gateway":
            self.gateways[(namespace, name)] = doc
        elif kind == "HTTPRoute":
            self.routes.append(_Route(doc, namespace, name))
        elif kind == "ReferenceGrant":
            self.grants.append((namespace, spec))
        elif kind != "GatewayClass":
            reason = _NOT_SUPPORTED.get(kind, "not an object the importer knows")
            self.warn(kind, f"{namespace}/{name}", "", f"{kind} is not supported ({reason}); ignored")

    def warn(self, kind: str, name: str, where: str, message: str) -> None:
        self.warnings.append(TranslationWarning(kind, name, where, message))

    def warn_route(self, route: _Route, where: str, message: str) -> None:
        self.warn("HTTPRoute", f"{route.namespace}/{route.name}", where, message)

    def node_port(self, port: int) -> int:
        return self.ports.get(port, port)

    # --- gateways and attachment ---------------------------------------------------------

    def listeners(self) -> list[_Listener]:
        """The listeners a node can serve; a node port is plain HTTP or HTTPS as its first listener says."""
        out: list[_Listener] = []
        first_on_port: dict[int, _Listener] = {}
        for key, gateway in self.gateways.items():
            for index, spec in enumerate((gateway.get("spec") or {}).get("listeners") or []):
                where = f"spec.listeners[{index}]"
                described = f"{spec.get('protocol')} listener {spec.get('name')!r} on port {spec.get('port')}"
                try:
                    listener = self.listener(key, where, spec)
                except _Refused as refused:
                    message = (f"{described} skipped: {refused.problem}" if refused.kind == "Gateway"
                               else f"{refused.problem}; {described} of Gateway {key[0]}/{key[1]} skipped")
                    self.warn(refused.kind, refused.name, refused.where, message)
                    continue
                first = first_on_port.setdefault(self.node_port(listener.port), listener)
                if bool(first.certificates) != bool(listener.certificates):
                    self.warn("Gateway", "/".join(key), f"{where}.protocol",
                              f"{described} skipped: the port is {'HTTPS' if first.certificates else 'plain HTTP'} for "
                              f"{first.label}; a port serves one or the other")
                    continue
                out.append(listener)
        return out

    def listener(self, key: tuple[str, str], where: str, spec: dict) -> _Listener:
        gateway = "/".join(key)
        protocol = spec.get("protocol")
        if protocol not in ("HTTP", "HTTPS"):
            reason = _LISTENER_PROTOCOLS.get(protocol, "the node serves HTTP and HTTPS listeners only")
            raise _Refused("Gateway", gateway, f"{where}.protocol", reason)
        if not isinstance(spec.get("port"), int):
            raise _Refused("Gateway", gateway, f"{where}.port", "a listener needs a port")
        certificates = self.terminate(key, spec.get("tls") or {}, f"{where}.tls") if protocol == "HTTPS" else []
        allowed = spec.get("allowedRoutes") or {}
        kinds = allowed.get("kinds")
        namespaces = allowed.get("namespaces") or {}
        hostname = spec.get("hostname")
        return _Listener(
            gateway=key, name=str(spec.get("name", "")), port=int(spec["port"]),
            hostname=hostname.lower() if hostname else None,
            allowed_from=namespaces.get("from", "Same"), selector=namespaces.get("selector") or {},
            http_routes=not kinds or any(k.get("kind") == "HTTPRoute" and k.get("group", GROUP) == GROUP
                                         for k in kinds),
            certificates=certificates)

    # --- TLS -----------------------------------------------------------------------------

    def terminate(self, key: tuple[str, str], tls: dict, where: str) -> list[str]:
        """The certificates (their names in the config) an HTTPS listener's `tls` terminates with."""
        gateway = "/".join(key)
        if tls.get("mode", "Terminate") != "Terminate":
            raise _Refused("Gateway", gateway, f"{where}.mode", f"mode {tls.get('mode')} is not supported: an "
                                                                "HTTPS listener terminates TLS (mode Terminate)")
        if tls.get("frontendValidation"):
            raise _Refused("Gateway", gateway, f"{where}.frontendValidation",
                           "client certificate validation is not supported, and serving without it would admit "
                           "clients the listener must refuse")
        if tls.get("options"):
            self.warn("Gateway", gateway, f"{where}.options", "implementation-specific TLS options are not "
                                                              "supported; ignored")
        refs = tls.get("certificateRefs") or []
        if not refs:
            raise _Refused("Gateway", gateway, f"{where}.certificateRefs",
                           "an HTTPS listener needs certificateRefs naming a Secret of type kubernetes.io/tls")
        return [self.certificate_of(key, ref, f"{where}.certificateRefs[{index}]").name
                for index, ref in enumerate(refs)]

    def certificate_of(self, key: tuple[str, str], ref: dict, where: str) -> Certificate:
        gateway = "/".join(key)
        name, namespace = str(ref.get("name", "")), str(ref.get("namespace") or key[0])
        if ref.get("group", "") != "" or ref.get("kind", "Secret") != "Secret":
            raise _Refused("Gateway", gateway, where, f"certificateRef to {ref.get('group', '')}/{ref.get('kind')} "
                                                      f"{name!r} is not a Secret; only Secrets are supported")
        if namespace != key[0] and not self.granted("Gateway", key[0], namespace, "Secret", name):
            raise _Refused("Gateway", gateway, where, f"Secret {namespace}/{name} is in another namespace and no "
                                                      f"ReferenceGrant in {namespace!r} lets Gateways of {key[0]!r} "
                                                      "refer to it")
        if (namespace, name) not in self.secrets:
            raise _Refused("Gateway", gateway, where, f"no Secret {namespace}/{name} among the manifests")
        if (namespace, name) not in self.certificates:
            config_name = name if namespace == key[0] else f"{name}.{namespace}"
            try:
                self.certificates[(namespace, name)] = self.read_secret(namespace, name, config_name)
            except _Refused as refused:
                self.certificates[(namespace, name)] = refused
        found = self.certificates[(namespace, name)]
        if isinstance(found, _Refused):
            raise found
        return found

    def read_secret(self, namespace: str, name: str, config_name: str) -> Certificate:
        """The certificate of a Secret of type kubernetes.io/tls: `tls.crt` (the certificate, then
        its chain) and `tls.key`, base64 in `data` or text in `stringData`."""
        secret, secret_name = self.secrets[(namespace, name)], f"{namespace}/{name}"
        if secret.get("type") != _TLS_SECRET:
            raise _Refused("Secret", secret_name, "type", f"type is {secret.get('type', 'Opaque')!r}; a "
                                                          f"certificateRef needs a Secret of type {_TLS_SECRET}")
        pem = {item: _secret_text(secret, item, secret_name) for item in ("tls.crt", "tls.key")}
        try:
            return Certificate(name=_name(config_name, self.certificate_names), cert=pem["tls.crt"][1],
                               key=pem["tls.key"][1])
        except ValidationError as error:
            part, _, problem = _reason(error).partition(": ")
            item = {"cert": "tls.crt", "key": "tls.key"}.get(part)  # the model's names of the Secret's items
            raise _Refused("Secret", secret_name, pem[item][0] if item else "data",
                           problem if item else _reason(error)) from None

    def allows(self, listener: _Listener, namespace: str) -> bool:
        if listener.allowed_from == "All":
            return True
        if listener.allowed_from == "Same":
            return namespace == listener.gateway[0]
        if listener.allowed_from == "Selector":
            return _selects(listener.selector, self.namespaces.get(namespace, {}))
        return False

    def attach(self, route: _Route, listeners: list[_Listener]) -> list[tuple[_Listener, list[str]]]:
        spec = route.doc.get("spec") or {}
        hostnames = [str(h).lower() for h in spec.get("hostnames") or []]
        attached = []
        for index, ref in enumerate(spec.get("parentRefs") or []):
            where = f"spec.parentRefs[{index}]"
            if ref.get("group", GROUP) != GROUP or ref.get("kind", "Gateway") != "Gateway":
                self.warn_route(route, where, f"parent {ref.get('kind')} {ref.get('name')!r} is not a Gateway; "
                                              "only Gateway parents are supported (no mesh routing yet)")
                continue
            gateway = (str(ref.get("namespace") or route.namespace), str(ref.get("name", "")))
            if gateway not in self.gateways:
                self.warn_route(route, where, f"no Gateway {gateway[0]}/{gateway[1]} among the manifests; not attached")
                continue
            candidates = [listener for listener in listeners if listener.gateway == gateway
                          and ref.get("sectionName", listener.name) == listener.name
                          and int(ref.get("port", listener.port)) == listener.port]
            reasons = []
            found = False
            for listener in candidates:
                if not listener.http_routes:
                    reasons.append(f"{listener.label} does not accept HTTPRoutes")
                elif not self.allows(listener, route.namespace):
                    reasons.append(f"{listener.label} does not accept routes from namespace {route.namespace!r}")
                elif not (effective := intersect_hostnames(listener.hostname, hostnames)):
                    reasons.append(f"no hostname of the route intersects {listener.hostname!r} of {listener.label}")
                else:
                    attached.append((listener, effective))
                    found = True
            if not found:
                wanted = "".join(f" {k} {ref[k]!r}" for k in ("sectionName", "port") if k in ref)
                why = "; ".join(reasons) or f"Gateway {gateway[0]}/{gateway[1]} has no HTTP or HTTPS listener{wanted}"
                self.warn_route(route, where, f"not attached: {why}")
        return attached

    # --- backends ----------------------------------------------------------------------

    def granted(self, kind: str, from_namespace: str, namespace: str, target_kind: str, target: str) -> bool:
        """Whether a ReferenceGrant in `namespace` lets a `kind` of `from_namespace` refer to the
        core `target_kind` named `target` there."""
        for grant_namespace, spec in self.grants:
            if grant_namespace != namespace:
                continue
            source = any(f.get("group") == GROUP and f.get("kind") == kind
                         and f.get("namespace") == from_namespace for f in spec.get("from") or [])
            granted = any(t.get("group", "") == "" and t.get("kind") == target_kind
                          and t.get("name", target) == target for t in spec.get("to") or [])
            if source and granted:
                return True
        return False

    def upstream_for(self, route: _Route, ref: dict, where: str) -> tuple[str | None, str]:
        """The upstream of a backendRef (made on first use), or None and why it is unusable."""
        name = str(ref.get("name", ""))
        namespace = str(ref.get("namespace") or route.namespace)
        port = ref.get("port")
        if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
            problem = f"backend {ref.get('group', '')}/{ref.get('kind')} {name!r} is not a Service"
        elif port is None:
            problem = f"backendRef to Service {namespace}/{name} needs a port"
        elif namespace != route.namespace and not self.granted("HTTPRoute", route.namespace, namespace, "Service", name):
            problem = (f"Service {namespace}/{name} is in another namespace and no ReferenceGrant in "
                       f"{namespace!r} lets HTTPRoutes of {route.namespace!r} refer to it")
        else:
            problem = self.service_problem(route, namespace, name, int(port), where)
        if problem:
            self.warn_route(route, where, f"{problem}; requests for it get 500")
            return None, problem
        key = (namespace, name, int(port))
        if key not in self.upstreams:
            servers = [Server(address=address, port=p) for address, p in self.endpoints[key]]
            self.upstreams[key] = Upstream(name=_name(f"{name}.{namespace}.{port}", self.upstream_names),
                                           servers=servers)
        return self.upstreams[key].name, ""

    def service_problem(self, route: _Route, namespace: str, name: str, port: int, where: str) -> str:
        service = self.services.get((namespace, name))
        if service is not None:
            ports = {int(p.get("port", 0)): p for p in service.get("ports") or []}
            if port not in ports:
                return f"Service {namespace}/{name} has no port {port}"
            protocol = ports[port].get("appProtocol")
            if protocol in _APP_PROTOCOLS:
                self.warn_route(route, where, f"Service {namespace}/{name} port {port} speaks {protocol}: "
                                              f"{_APP_PROTOCOLS[protocol]}")
        if not self.endpoints.get((namespace, name, port)):
            return f"no endpoints for Service {namespace}/{name}:{port} in the endpoints file"
        return ""

    # --- filters -----------------------------------------------------------------------

    def filters(self, route: _Route, filters: list[dict], where: str, prefix: str | None,
                gateway_port: int) -> tuple[list, Redirect | None]:
        """Actions for a filter list, and the redirect that ends the rule if there is one."""
        actions: list = []
        redirect = None
        for index, spec in enumerate(filters):
            here = f"{where}.filters[{index}]"
            kind = spec.get("type")
            if kind == "RequestHeaderModifier":
                actions += self.header_actions(route, spec.get("requestHeaderModifier") or {}, "request", here)
            elif kind == "ResponseHeaderModifier":
                actions += self.header_actions(route, spec.get("responseHeaderModifier") or {}, "response", here)
            elif kind == "RequestRedirect":
                redirect = self.redirect(route, spec.get("requestRedirect") or {}, prefix, gateway_port, here)
            elif kind == "URLRewrite":
                actions += self.rewrite(route, spec.get("urlRewrite") or {}, prefix, here)
            elif kind == "RequestMirror":
                mirror = self.mirror(route, spec.get("requestMirror") or {}, here)
                if mirror is not None:
                    actions.append(mirror)
            elif kind == "CORS":
                cors = self.cors(route, spec.get("cors") or {}, here)
                if cors is not None:
                    actions.append(cors)
            else:
                self.warn_route(route, f"{here}.type", f"filter {kind} is not supported; ignored")
        return actions, redirect

    def header_actions(self, route: _Route, spec: dict, side: str, where: str) -> list:
        kinds = ((SetRequestHeader, AddRequestHeader, RemoveRequestHeader) if side == "request"
                 else (SetResponseHeader, AddResponseHeader, RemoveResponseHeader))
        actions = [kinds[0](name=h["name"], value=str(h["value"])) for h in spec.get("set") or []]
        actions += [kinds[1](name=h["name"], value=str(h["value"])) for h in spec.get("add") or []]
        for name in spec.get("remove") or []:
            if side == "request" and name.lower() == "host":
                self.warn_route(route, f"{where}.remove", "the Host header cannot be removed; ignored")
            else:
                actions.append(kinds[2](name=name))
        return actions

    def redirect(self, route: _Route, spec: dict, prefix: str | None, gateway_port: int, where: str) -> Redirect:
        scheme, port = spec.get("scheme"), spec.get("port")
        if port is None and scheme is None:
            port = gateway_port  # Gateway API: no scheme and no port → the listener's port
        path, replace = self.path_modifier(route, spec.get("path"), prefix, f"{where}.path")
        return Redirect(status=spec.get("statusCode", 302), scheme=scheme, host=spec.get("hostname"), port=port,
                        path=replace if path is None else path, prefix=prefix if replace is not None else None)

    def path_modifier(self, route: _Route, spec: dict | None, prefix: str | None,
                      where: str) -> tuple[str | None, str | None]:
        """(full path, prefix replacement) of an HTTPPathModifier."""
        if not spec:
            return None, None
        kind = spec.get("type")
        if kind == "ReplaceFullPath":
            return spec.get("replaceFullPath", "/"), None
        if kind == "ReplacePrefixMatch":
            if prefix is None:
                self.warn_route(route, where, "ReplacePrefixMatch needs a PathPrefix match; path left unchanged")
                return None, None
            return None, spec.get("replacePrefixMatch", "/")
        self.warn_route(route, where, f"path modifier {kind} is not supported; path left unchanged")
        return None, None

    def rewrite(self, route: _Route, spec: dict, prefix: str | None, where: str) -> list:
        actions: list = []
        if spec.get("hostname"):
            actions.append(SetRequestHeader(name="Host", value=spec["hostname"]))
        path, replace = self.path_modifier(route, spec.get("path"), prefix, f"{where}.urlRewrite.path")
        if path is not None:
            actions.append(RewritePath(path=path))
        elif replace is not None:
            actions.append(RewritePath(prefix=prefix, replacement=replace))
        return actions

    def mirror(self, route: _Route, spec: dict, where: str) -> Mirror | None:
        upstream, _ = self.upstream_for(route, spec.get("backendRef") or {}, f"{where}.requestMirror.backendRef")
        if upstream is None:
            return None
        if "percent" in spec:
            percent = float(spec["percent"])
        elif "fraction" in spec:
            fraction = spec["fraction"]
            percent = 100.0 * fraction.get("numerator", 0) / (fraction.get("denominator") or 100)
        else:
            percent = 100.0
        return Mirror(upstream=upstream, percent=percent)

    def cors(self, route: _Route, spec: dict, where: str) -> Cors | None:
        if not spec.get("allowOrigins"):
            self.warn_route(route, where, "CORS without allowOrigins allows no origin; filter skipped")
            return None
        extra = {"allow_methods": spec["allowMethods"]} if spec.get("allowMethods") else {}
        return Cors(allow_origins=spec["allowOrigins"], allow_headers=spec.get("allowHeaders") or [],
                    expose_headers=spec.get("exposeHeaders") or [],
                    allow_credentials=bool(spec.get("allowCredentials", False)),
                    max_age=spec.get("maxAge", 5), **extra)

    # --- rules -------------------------------------------------------------------------

    def blocks(self, route: _Route, gateway_port: int) -> list[tuple[tuple, int, int, list[Rule]]]:
        """(precedence, rule index, match index, edgeplane rules) of every match of the route."""
        if gateway_port not in route.blocks:
            out = []
            rules = (route.doc.get("spec") or {}).get("rules")
            for index, rule in enumerate([{}] if rules is None else rules):
                where = f"spec.rules[{index}]"
                if "sessionPersistence" in rule:
                    self.warn_route(route, f"{where}.sessionPersistence", "sessionPersistence is not supported "
                                                                          "yet; requests are sent as if it were absent")
                for number, match in enumerate(rule.get("matches") or [{}]):
                    translated = self.match_rules(route, rule, index, match, number, gateway_port)
                    out.append((match_precedence(match), index, number, translated))
            route.blocks[gateway_port] = out
        return route.blocks[gateway_port]

    def match_rules(self, route: _Route, rule: dict, index: int, match: dict, number: int,
                    gateway_port: int) -> list[Rule]:
        where = f"spec.rules[{index}]"
        name = f"{route.namespace}/{route.name}/{rule.get('name') or f'rules[{index}]'}"
        try:
            conditions = match_conditions(match)
        except (KeyError, TypeError, ValueError) as error:
            self.warn_route(route, f"{where}.matches[{number}]", f"{_reason(error)}; this match routes nothing")
            return []
        path = match.get("path") or {}
        prefix = _trim_prefix(path.get("value", "/")) if path.get("type", "PathPrefix") == "PathPrefix" else None
        try:
            actions, redirect = self.filters(route, rule.get("filters") or [], where, prefix, gateway_port)
            if redirect is not None:
                return [Rule(name=name, conditions=conditions, actions=[*actions, redirect])]
            backends = [self.backend(route, ref, f"{where}.backendRefs[{k}]", prefix, gateway_port)
                        for k, ref in enumerate(rule.get("backendRefs") or [])]
            timeouts = rule.get("timeouts") or {}
            exchange = {"timeout": parse_duration(timeouts.get("request")),
                        "backend_timeout": parse_duration(timeouts.get("backendRequest")),
                        "retry": retry_policy(rule["retry"]) if "retry" in rule else None}
            return routing_rules(name, conditions, actions, backends, exchange)
        except (KeyError, TypeError, ValueError) as error:
            self.warn_route(route, where, f"not translatable ({_reason(error)}); requests it matches get 500")
            return [Rule(name=name, conditions=conditions,
                         actions=[Respond(status=500, body=f"500 Internal Server Error: route rule {name} is invalid\n")])]

    def backend(self, route: _Route, ref: dict, where: str, prefix: str | None, gateway_port: int) -> _Backend:
        actions, redirect = self.filters(route, ref.get("filters") or [], where, prefix, gateway_port)
        upstream, problem = self.upstream_for(route, ref, where)
        fixed = redirect
        if fixed is None and upstream is None:
            fixed = Respond(status=500, body=f"500 Internal Server Error: {problem}\n")
        return _Backend(int(ref.get("weight", 1)), actions, upstream, fixed)

    # --- applications ------------------------------------------------------------------

    def config(self) -> Config:
        listeners = self.listeners()
        attachments = [(route, listener, hosts)
                       for route in sorted(self.routes, key=lambda r: r.key)
                       for listener, hosts in self.attach(route, listeners)]
        hosts_by_port: dict[int, set[str]] = {}
        for _, listener, hosts in attachments:
            hosts_by_port.setdefault(self.node_port(listener.port), set()).update(hosts)
        for listener in listeners:
            if listener.hostname:  # a listener's own hostname answers 404 without routes, as it must
                hosts_by_port.setdefault(self.node_port(listener.port), set()).add(listener.hostname)
        served: dict[str, tuple[list[Rule], dict[tuple[int, tuple[str, ...]], set[str]]]] = {}
        for port, hosts in sorted(hosts_by_port.items()):
            for host in sorted(hosts):
                owners = self.owners(port, host, listeners)
                rules = self.app_rules(port, host, owners, attachments)
                certificates = tuple(dict.fromkeys(name for owner in owners for name in owner.certificates))
                signature = repr([r.model_dump(mode="json") for r in rules])
                served.setdefault(signature, (rules, {}))[1].setdefault((port, certificates), set()).add(host)
        applications: list[Application] = []
        taken: set[str] = set()
        for rules, ports in served.values():
            grouped: dict[frozenset, dict[tuple[str, ...], list[int]]] = {}
            for (port, certificates), hosts in ports.items():
                grouped.setdefault(frozenset(hosts), {}).setdefault(certificates, []).append(port)
            for hosts, ports_by_certificates in grouped.items():
                applications += _applications(sorted(hosts), rules, ports_by_certificates, taken)
        # A client naming no host of a port gets the certificate of the port's first application:
        # the one serving any host, as the listener without hostname would.
        applications.sort(key=lambda app: "*" not in app.domains)
        used = {name for app in applications for rule in app.rules for action in rule.actions
                for _, name in action_upstreams(action)}  # not those of weight 0 or behind a redirect
        upstreams = sorted((u for u in self.upstreams.values() if u.name in used), key=lambda u: u.name)
        named = {name for app in applications for name in app.certificates}
        certificates = sorted((c for c in self.certificates.values() if isinstance(c, Certificate) and c.name in named),
                              key=lambda c: c.name)
        return Config(upstreams=upstreams, certificates=certificates, applications=applications)

    def owners(self, port: int, host: str, listeners: list[_Listener]) -> list[_Listener]:
        """The listeners a request to `host` on node `port` belongs to: the most specific that cover it."""
        candidates = [listener for listener in listeners
                      if self.node_port(listener.port) == port and covers(listener.hostname or "*", host)]
        best = max((_listener_specificity(listener.hostname or "*") for listener in candidates), default=None)
        return [listener for listener in candidates if _listener_specificity(listener.hostname or "*") == best]

    def app_rules(self, port: int, host: str, owners: list[_Listener], attachments: list) -> list[Rule]:
        """The rules for requests to `host` on node `port`: those of the routes attached to the
        listeners the request belongs to, by route hostname specificity, then match precedence."""
        entries, seen, gateways = [], set(), set()
        for route, listener, hosts in attachments:
            covering = [h for h in hosts if covers(h, host)]
            if not any(listener is owner for owner in owners) or not covering:
                continue
            specificity = max(_route_host_specificity(h) for h in covering)
            for precedence, index, number, rules in self.blocks(route, listener.port):
                identity = (route.namespace, route.name, index, number)
                if identity in seen:
                    continue
                seen.add(identity)
                gateways.add(listener.gateway)
                entries.append(((-specificity[0], -specificity[1]), precedence, route.key, index, number, rules))
        if len(gateways) > 1:
            names = ", ".join(sorted(f"{ns}/{name}" for ns, name in gateways))
            self.warn("Gateway", names, "", f"these Gateways all route host {host!r} on port {port}; "
                                            "a node serves them as one, their routes ordered together")
        entries.sort(key=lambda entry: entry[:5])
        return [rule for entry in entries for rule in entry[5]]


def _applications(domains: list[str], rules: list[Rule], ports_by_certificates: dict[tuple[str, ...], list[int]],
                  taken: set[str]) -> list[Application]:
    """The applications serving these domains with these rules: the plain ports (no
    certificates) go with the HTTPS ports of the first set of certificates; HTTPS ports with
    other certificates need applications of their own, so each host keeps its listener's."""
    plain = ports_by_certificates.pop((), [])
    label = "any" if domains[0] == "*" else domains[0].replace("*", "wildcard")
    out: list[Application] = []
    for certificates, https_ports in list(ports_by_certificates.items()) or [((), [])]:
        ports = [] if out else sorted(plain)
        out.append(Application(name=_name(f"{label}-{(ports or https_ports)[0]}", taken), domains=domains,
                               ports=ports, https_ports=sorted(https_ports), certificates=list(certificates),
                               rules=rules))
    return out


def _secret_text(secret: dict, item: str, secret_name: str) -> tuple[str, str]:
    """(field, text) of one item of a TLS Secret; `stringData` wins over `data`, as the API
    server merges them."""
    text = (secret.get("stringData") or {}).get(item)
    if text is not None:
        return f"stringData.{item}", str(text)
    encoded = (secret.get("data") or {}).get(item)
    if encoded is None:
        raise _Refused("Secret", secret_name, f"data.{item}",
                       f"missing; a {_TLS_SECRET} Secret holds tls.crt and tls.key")
    try:
        return f"data.{item}", base64.b64decode("".join(str(encoded).split()), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise _Refused("Secret", secret_name, f"data.{item}", "not base64 of PEM text") from None


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def match_conditions(match: dict) -> list[Condition]:
    """The conditions of one HTTPRouteMatch; all of them must hold."""
    conditions = []
    path = match.get("path") or {}
    kind, value = path.get("type", "PathPrefix"), str(path.get("value", "/"))
    if kind == "Exact":
        conditions.append(Condition(var="path", op="eq", values=[value]))
    elif kind == "PathPrefix":
        if _trim_prefix(value) != "/":
            conditions.append(Condition(var="path", op="regex", values=[segment_prefix_regex(_trim_prefix(value))]))
    elif kind == "RegularExpression":
        conditions.append(Condition(var="path", op="regex", values=[full_match_regex(value)]))
    else:
        raise ValueError(f"path match type {kind!r} is not supported")
    for var, key in (("header", "headers"), ("arg", "queryParams")):
        for item in match.get(key) or []:
            kind = item.get("type", "Exact")
            if kind not in ("Exact", "RegularExpression"):
                raise ValueError(f"{key} match type {kind!r} is not supported")
            op, value = ("eq", str(item["value"])) if kind == "Exact" else ("regex", full_match_regex(item["value"]))
            conditions.append(Condition(var=var, name=item["name"], op=op, values=[value]))
    if match.get("method"):
        conditions.append(Condition(var="method", op="eq", values=[match["method"]]))
    return conditions


def retry_policy(spec: dict) -> Retry:
    """HTTPRouteRetry: `attempts` counts retries (ours counts tries, the first included);
    connection errors and timeouts are always retried, and the `codes` listed; `backoff` is
    the first wait. An implementation picks the attempts when none are given: one retry."""
    spec = spec or {}
    fields: dict[str, Any] = {"attempts": int(spec.get("attempts", 1)) + 1, "retry_on": ["connect-failure", "reset"],
                              "statuses": [int(code) for code in spec.get("codes") or []]}
    if "backoff" in spec:
        fields["backoff"] = parse_duration(spec["backoff"]) or 0.0
    return Retry(**fields)


def routing_rules(name: str, conditions: list[Condition], actions: list, backends: list[_Backend],
                  exchange: dict[str, Any]) -> list[Rule]:
    """The rules that end a match: proxy or split, or — when backendRefs differ in filters or
    some are unusable — one rule per backend, each drawn with its share of the weight.
    `exchange`: the routes' timeout, backend_timeout and retry."""
    live = [backend for backend in backends if backend.weight > 0]
    if not live:
        why = "the route rule has no backendRefs" if not backends else "every backendRef has weight 0"
        return [Rule(name=name, conditions=conditions,
                     actions=[*actions, Respond(status=500, body=f"500 Internal Server Error: {why}\n")])]
    first = live[0]
    if all(b.fixed is None and b.actions == first.actions for b in live):
        if len(live) == 1:
            end: Any = Proxy(upstream=first.upstream, **exchange)
        else:
            end = Split(upstreams=[WeightedUpstream(upstream=b.upstream, weight=b.weight) for b in live], **exchange)
        return [Rule(name=name, conditions=conditions, actions=[*actions, *first.actions, end])]
    rules, remaining = [], sum(b.weight for b in live)
    for backend in live:
        share = 100.0 * backend.weight / remaining
        remaining -= backend.weight
        draw = [] if backend is live[-1] else [Condition(var="random", op="lt", values=[format(share, ".10g")])]
        end = backend.fixed or Proxy(upstream=backend.upstream, **exchange)
        rules.append(Rule(name=name, conditions=[*conditions, *draw], actions=[*actions, *backend.actions, end]))
    return rules


def import_gateway_api(documents: list[dict], endpoints: Endpoints | None = None,
                       ports: dict[int, int] | None = None) -> tuple[Config, list[TranslationWarning]]:
    """A `Config` serving the HTTPRoutes of the manifests, and what could not be translated.

    `endpoints` gives the servers of each Service port; `ports` maps a Gateway listener port
    to the port the node listens on (redirects still name the Gateway's port).
    """
    importer = _Importer(documents, endpoints or {}, ports or {})
    config = importer.config()
    return config, list(dict.fromkeys(importer.warnings))


# --- export --------------------------------------------------------------------------

_GATEWAY_NAME = "edgeplane"
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


class _Untranslatable(Exception):
    pass


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    return name[:63].rstrip("-")


def _dns_subdomain(text: str, taken: set[str]) -> str:
    """A Kubernetes object name (lowercase letters, digits, `-` and `.`) from `text`, not among `taken`."""
    base = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "x"
    name, counter = base, 2
    while name in taken:
        name, counter = f"{base}-{counter}", counter + 1
    return name


class _Exporter:
    def __init__(self, config: Config, namespace: str):
        self.config = config
        self.namespace = namespace
        self.warnings: list[TranslationWarning] = []
        self.endpoints: Endpoints = {}
        self.services: dict[str, tuple[str, str, int]] = {}
        for upstream in config.upstreams:
            self.services[upstream.name] = self.service_of(upstream)
        self.secret_names: dict[str, str] = {}  # certificate → its Secret, in the Gateway's namespace
        for certificate in config.certificates:
            self.secret_names[certificate.name] = _dns_subdomain(certificate.name, set(self.secret_names.values()))

    def warn(self, kind: str, name: str, where: str, message: str) -> None:
        self.warnings.append(TranslationWarning(kind, name, where, message))

    def service_of(self, upstream: Upstream) -> tuple[str, str, int]:
        match = re.match(r"^([a-z0-9][-a-z0-9]*)\.([a-z0-9][-a-z0-9]*)\.(\d+)$", upstream.name)
        key = ((match.group(2), match.group(1), int(match.group(3))) if match
               else (self.namespace, _dns_name(upstream.name), upstream.servers[0].port))
        self.endpoints[key] = [(s.address, s.port) for s in upstream.servers if not s.backup]
        lost = [what for what, changed in (
            ("balance", upstream.balance != "round-robin"), ("server weights", any(s.weight != 1 for s in upstream.servers)),
            ("backup servers", any(s.backup for s in upstream.servers)), ("host", upstream.host is not None),
            ("health_check", upstream.health_check is not None),
            ("outlier_detection", upstream.outlier_detection is not None),
            ("circuit_breaker", upstream.circuit_breaker is not None),
            ("retry_budget", upstream.retry_budget != RetryBudget())) if changed]
        if lost:
            self.warn("Upstream", upstream.name, "", f"{', '.join(lost)} have no Gateway API equivalent; not exported")
        return key

    def backend_ref(self, upstream: str, weight: int | None = None) -> dict:
        namespace, name, port = self.services[upstream]
        ref: dict = {"name": name, "port": port}
        if namespace != self.namespace:
            ref["namespace"] = namespace
        if weight is not None:
            ref["weight"] = weight
        return ref

    def documents(self) -> list[dict]:
        """The Gateway has a listener per port and domain, so each application keeps its own
        requests: in Gateway API, routes of a listener see every host it covers."""
        if any(self.config.global_rules.before) or any(self.config.global_rules.after):
            self.warn("Config", "global_rules", "", "global rules have no Gateway API equivalent; not exported")
        listeners: list[dict] = []
        routes: list[dict] = []
        taken: set[str] = set()
        for app in self.config.applications:
            sections = []
            for domain in [d for d in app.domains if _is_ip(d)]:
                self.warn("Application", app.name, "domains", f"{domain} is an IP address, which a listener "
                                                              "hostname cannot be; not exported")
            for port, tls in [(port, False) for port in app.ports] + [(port, True) for port in app.https_ports]:
                for domain in [d for d in app.domains if not _is_ip(d)]:
                    listener = {"name": f"{'https' if tls else 'http'}-{len(listeners)}", "port": port,
                                "protocol": "HTTPS" if tls else "HTTP"}
                    if domain != "*":
                        listener["hostname"] = domain
                    if tls:
                        listener["tls"] = {"mode": "Terminate", "certificateRefs": [
                            {"kind": "Secret", "name": self.secret_names[name]} for name in app.certificates]}
                    listeners.append(listener)
                    sections.append(listener["name"])
            if any(rule.enabled for rule in app.rules):  # a listener without routes answers 404, as the app does
                routes.append(self.route(app, sections, taken))
        if len(listeners) > 64:
            self.warn("Config", "applications", "", f"{len(listeners)} port and domain pairs need as many "
                                                    "listeners; a Gateway holds at most 64")
        gateway = {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
                   "metadata": {"name": _GATEWAY_NAME, "namespace": self.namespace},
                   "spec": {"gatewayClassName": "edgeplane", "listeners": listeners}}
        return [gateway, *self.secrets(), *routes, *self.grants(routes)]

    def secrets(self) -> list[dict]:
        """A Secret of type kubernetes.io/tls for each certificate an application names; one the
        node reads from files is for the operator to create."""
        named = {name for app in self.config.applications for name in app.certificates}
        out = []
        for certificate in [c for c in self.config.certificates if c.name in named]:
            secret = self.secret_names[certificate.name]
            if certificate.cert is None or certificate.key is None:
                self.warn("Certificate", certificate.name, "cert_file", f"the node reads it from files; create Secret "
                                                                       f"{self.namespace}/{secret} of type {_TLS_SECRET} "
                                                                       "from them")
                continue
            data = {item: base64.b64encode(pem.encode()).decode() for item, pem in
                    (("tls.crt", certificate.cert), ("tls.key", certificate.key))}
            out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": self.namespace},
                        "type": _TLS_SECRET, "data": data})
        return out

    def grants(self, routes: list[dict]) -> list[dict]:
        """A ReferenceGrant in each other namespace whose Services the routes name."""
        foreign = sorted({ref["namespace"] for ref in _backend_refs(routes) if "namespace" in ref})
        return [{"apiVersion": f"{GROUP}/v1beta1", "kind": "ReferenceGrant",
                 "metadata": {"name": f"edgeplane-from-{self.namespace}"[:63], "namespace": namespace},
                 "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": self.namespace}],
                          "to": [{"group": "", "kind": "Service"}]}} for namespace in foreign]

    def route(self, app: Application, sections: list[str], taken: set[str]) -> dict:
        name = _dns_name(app.name)
        while name in taken:
            name = _dns_name(f"{name}-x")
        taken.add(name)
        spec: dict = {"parentRefs": [{"name": _GATEWAY_NAME, "sectionName": section} for section in sections]}
        rules, keys = [], []
        ordered_rules = sorted(enumerate(app.rules), key=lambda item: (not item[1].top, item[1].order, item[0]))
        for index, rule in ordered_rules:
            where = f"rules[{index}]"
            if not rule.enabled:
                continue
            try:
                exported = self.rule(rule, app.name, where)
            except _Untranslatable as error:
                self.warn("Application", app.name, where, f"{error}; rule not exported")
                continue
            rules.append(exported)
            keys.append(min(match_precedence(m) for m in exported.get("matches") or [{}]))
        if keys != sorted(keys):
            self.warn("Application", app.name, "rules", "Gateway API orders rules by match specificity, not as "
                                                        "listed; a request matching several may be routed differently")
        spec["rules"] = rules
        return {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}

    def rule(self, rule: Rule, app: str, where: str) -> dict:
        matches = self.matches(rule.conditions)
        prefix = _match_prefix(matches)
        out: dict = {}
        label = (rule.name or "").rsplit("/", 1)[-1]
        if _SECTION_NAME.match(label):
            out["name"] = label
        out["matches"] = matches
        filters, end = self.filters(rule, prefix, app, where)
        if filters:
            out["filters"] = filters
        if end is None:
            raise _Untranslatable("it decides nothing (no proxy, split, redirect or respond); Gateway API "
                                  "rules always decide")
        if isinstance(end, (Proxy, Split)):
            out["backendRefs"] = ([self.backend_ref(end.upstream)] if isinstance(end, Proxy)
                                  else [self.backend_ref(w.upstream, w.weight) for w in end.upstreams])
            timeouts = {k: format_duration(v) for k, v in (("request", end.timeout),
                                                           ("backendRequest", end.backend_timeout)) if v}
            if timeouts:
                out["timeouts"] = timeouts
            if end.retry is not None:
                out["retry"] = self.retry(end.retry, app, where)
            for field in ("sticky", "cookie"):
                if isinstance(end, Split) and getattr(end, field):
                    self.warn("Application", app, f"{where}.actions", f"split.{field} has no Gateway API equivalent; "
                                                                      "dropped")
        return out

    def retry(self, retry: Retry, app: str, where: str) -> dict:
        """HTTPRouteRetry: attempts are retries; every status our conditions name becomes a code."""
        codes = set(retry.statuses)
        if "gateway-error" in retry.retry_on:
            codes |= {502, 503, 504}
        if "5xx" in retry.retry_on:
            codes |= set(range(500, 600))
        on = set(retry.retry_on)
        lost = [what for what, changed in (
            ("retry_on without connect-failure and reset", not {"connect-failure", "reset"} <= on
             and not {"gateway-error", "5xx"} & on),
            ("non_idempotent", retry.non_idempotent), ("max_backoff", retry.max_backoff is not None),
            ("replay_limit", retry.replay_limit != Retry().replay_limit)) if changed]
        if lost:
            self.warn("Application", app, f"{where}.actions", f"retry: {', '.join(lost)} cannot be said in Gateway "
                                                              "API (it always retries connection errors and "
                                                              "timeouts); exported without")
        out: dict = {"attempts": retry.attempts - 1, "backoff": format_duration(retry.backoff)}
        if codes:
            out["codes"] = sorted(codes)
        return out

    def matches(self, conditions: list[Condition]) -> list[dict]:
        matches: list[dict] = [{}]
        for condition in conditions:
            alternatives = [self.match_part(condition, value) for value in condition.values or [""]]
            matches = [_merge(match, part) for match in matches for part in alternatives]
        return matches

    def match_part(self, condition: Condition, value: str) -> dict:
        var, op = condition.var, condition.op
        if condition.caseless and not (op == "regex" and var != "method"):
            raise _Untranslatable(f"caseless {var} {op} cannot be expressed")
        if var == "path":
            if op in ("eq", "in"):
                return {"path": {"type": "Exact", "value": value}}
            if op == "prefix":
                return {"path": {"type": "RegularExpression", "value": re.escape(value) + ".*"}}
            if op == "regex":
                prefix = _unescape_prefix(value)
                if prefix is not None:
                    return {"path": {"type": "PathPrefix", "value": prefix}}
                return {"path": {"type": "RegularExpression", "value": _as_full_match(value, condition.caseless)}}
        if var in ("header", "arg") and op in ("eq", "in", "regex"):
            key = "headers" if var == "header" else "queryParams"
            if op == "regex":
                item = {"type": "RegularExpression", "name": condition.name, "value": _as_full_match(value, condition.caseless)}
            else:
                item = {"name": condition.name, "value": value}
            return {key: [item]}
        if var == "method" and op in ("eq", "in") and value in _METHODS:
            return {"method": value}
        raise _Untranslatable(f"condition {var} {op} has no HTTPRouteMatch equivalent")

    def filters(self, rule: Rule, prefix: str | None, app: str, where: str) -> tuple[list[dict], Any]:
        """The rule's filters, in the order of their first action (Gateway API allows one
        header modifier and one rewrite per rule), and the action that ends it."""
        filters: list[dict] = []
        shared: dict[str, dict] = {}

        def one(kind: str, key: str) -> dict:
            if kind not in shared:
                shared[kind] = {}
                filters.append({"type": kind, key: shared[kind]})
            return shared[kind]
        end = None
        for index, action in enumerate(rule.actions):
            kind = action.kind
            if kind in ("proxy", "split"):
                end = action
            elif kind == "respond":
                if action.status != 500 or action.headers:
                    raise _Untranslatable(f"respond with status {action.status} has no Gateway API equivalent")
                end = action  # a rule without backendRefs: Gateway API answers 500 itself
            elif kind == "redirect":
                filters.append({"type": "RequestRedirect", "requestRedirect": self.redirect(action, prefix)})
                end = action
            elif kind == "deny":
                raise _Untranslatable("deny has no Gateway API equivalent")
            elif kind == "set-request-header" and action.name.lower() == "host":
                one("URLRewrite", "urlRewrite")["hostname"] = action.value
            elif kind in ("set-request-header", "add-request-header", "remove-request-header"):
                _modify(one("RequestHeaderModifier", "requestHeaderModifier"), kind.split("-", 1)[0], action)
            elif kind in ("set-response-header", "add-response-header", "remove-response-header"):
                _modify(one("ResponseHeaderModifier", "responseHeaderModifier"), kind.split("-", 1)[0], action)
            elif kind == "rewrite-path":
                one("URLRewrite", "urlRewrite")["path"] = self.path_rewrite(action, prefix)
            elif kind == "mirror":
                filters.append({"type": "RequestMirror", "requestMirror": self.mirror(action)})
            elif kind == "cors":
                filters.append({"type": "CORS", "cors": _cors(action)})
            else:
                self.warn("Application", app, f"{where}.actions[{index}]", f"{kind} has no Gateway API equivalent; dropped")
        return filters, end

    def mirror(self, action: Mirror) -> dict:
        mirror: dict = {"backendRef": self.backend_ref(action.upstream)}
        if action.percent == int(action.percent) and action.percent != 100:
            mirror["percent"] = int(action.percent)
        elif action.percent != 100:
            mirror["fraction"] = {"numerator": round(action.percent * 100), "denominator": 10000}
        return mirror

    def redirect(self, action: Redirect, prefix: str | None) -> dict:
        out: dict = {}
        for key, value in (("scheme", action.scheme), ("hostname", action.host), ("port", action.port)):
            if value is not None:
                out[key] = value
        if action.prefix is not None:
            if action.prefix != prefix:
                raise _Untranslatable(f"redirect replaces prefix {action.prefix!r}, but Gateway API can only "
                                      "replace the matched PathPrefix")
            out["path"] = {"type": "ReplacePrefixMatch", "replacePrefixMatch": action.path or "/"}
        elif action.path is not None:
            out["path"] = {"type": "ReplaceFullPath", "replaceFullPath": action.path}
        if not action.keep_query:
            raise _Untranslatable("a redirect dropping the query has no Gateway API equivalent")
        out["statusCode"] = action.status
        return out

    def path_rewrite(self, action: RewritePath, prefix: str | None) -> dict:
        if action.path is not None:
            return {"type": "ReplaceFullPath", "replaceFullPath": action.path}
        if action.prefix is not None and action.prefix == prefix:
            return {"type": "ReplacePrefixMatch", "replacePrefixMatch": action.replacement or "/"}
        raise _Untranslatable("rewrite-path by regex, or of a prefix other than the matched one, has no "
                              "Gateway API equivalent")


def _is_ip(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return False
    return True


def _backend_refs(routes: list[dict]) -> list[dict]:
    refs = []
    for route in routes:
        for rule in route["spec"]["rules"]:
            refs += rule.get("backendRefs") or []
            refs += [f["requestMirror"]["backendRef"] for f in rule.get("filters") or [] if "requestMirror" in f]
    return refs


def _merge(match: dict, part: dict) -> dict:
    merged = dict(match)
    for key, value in part.items():
        if key in ("headers", "queryParams"):
            merged[key] = [*merged.get(key, []), *value]
        elif key in merged:
            raise _Untranslatable(f"more than one {key} condition in a rule has no HTTPRouteMatch equivalent")
        else:
            merged[key] = value
    return merged


def _match_prefix(matches: list[dict]) -> str | None:
    """The PathPrefix every match shares (what ReplacePrefixMatch replaces), or None."""
    prefixes = set()
    for match in matches:
        path = match.get("path") or {"type": "PathPrefix", "value": "/"}
        if path["type"] != "PathPrefix":
            return None
        prefixes.add(path["value"])
    return prefixes.pop() if len(prefixes) == 1 else None


def _as_full_match(regex: str, caseless: bool) -> str:
    inner = _unwrap_full_match(regex)
    pattern = inner if inner is not None else f".*(?:{regex}).*"
    return f"(?i){pattern}" if caseless else pattern


def _modify(modifier: dict, mode: str, action: Any) -> None:
    if mode == "remove":
        modifier.setdefault("remove", []).append(action.name)
    else:
        modifier.setdefault(mode, []).append({"name": action.name, "value": action.value})


def _cors(action: Cors) -> dict:
    out: dict = {"allowOrigins": list(action.allow_origins), "allowMethods": list(action.allow_methods)}
    if action.allow_headers:
        out["allowHeaders"] = list(action.allow_headers)
    if action.expose_headers:
        out["exposeHeaders"] = list(action.expose_headers)
    if action.allow_credentials:
        out["allowCredentials"] = True
    if action.max_age is not None:
        out["maxAge"] = action.max_age
    return out


def export_gateway_api(config: Config, namespace: str = "default") -> tuple[list[dict], Endpoints,
                                                                           list[TranslationWarning]]:
    """A Gateway (one HTTP listener per port) and one HTTPRoute per application, the endpoints
    file of the Services they name (one per upstream), and what could not be expressed."""
    exporter = _Exporter(config, namespace)
    documents = exporter.documents()
    return documents, exporter.endpoints, list(dict.fromkeys(exporter.warnings))

"""Compile rules (conditions -> actions) into one plain `route(request, response_ops)` call.

All parsing of values (regexes, CIDRs, numbers, case folding) happens here, once per
config version; the returned callables only compare. A request object must offer the
variables of `VARIABLES`; the node's `Request` does. This module performs no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model.config import (
    AddRequestHeader,
    AddResponseHeader,
    Condition,
    Proxy,
    Redirect,
    RemoveRequestHeader,
    RemoveResponseHeader,
    Respond,
    RewritePath,
    Rule,
    SetRequestHeader,
    SetResponseHeader,
)

Getter = Callable[[Any], "str | list[str]"]
Predicate = Callable[[Any], bool]


@dataclass(frozen=True)
class LocalResponse:
    """A response the node writes itself (respond, redirect, errors)."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


def _single(attribute: str) -> Getter:
    def get(request: Any) -> str:
        return getattr(request, attribute)
    return get


VARIABLES: dict[str, Callable[[str | None], Getter]] = {
    "host": lambda _: _single("host"),
    "scheme": lambda _: _single("scheme"),
    "method": lambda _: _single("method"),
    "uri": lambda _: _single("uri"),
    "path": lambda _: _single("path"),
    "query": lambda _: _single("query"),
    "client-ip": lambda _: _single("client_ip"),
    "http-version": lambda _: _single("version"),
    "header": lambda name: (lambda request, _n=name.lower(): request.header(_n)),
    "arg": lambda name: (lambda request, _n=name: request.arg(_n)),
    "cookie": lambda name: (lambda request, _n=name: request.cookie(_n)),
}


def _value_test(condition: Condition) -> Callable[[str], bool]:
    """A test of one subject string against all of the condition's values (alternatives)."""
    op, caseless = condition.op, condition.caseless
    values = [v.lower() for v in condition.values] if caseless else list(condition.values)
    fold = str.lower if caseless else None

    def folded(test: Callable[[str], bool]) -> Callable[[str], bool]:
        return (lambda s: test(s.lower())) if fold else test

    if op in ("eq", "ne"):
        wanted = frozenset(values)
        return folded(wanted.__contains__)
    if op == "prefix":
        prefixes = tuple(values)
        return folded(lambda s: s.startswith(prefixes))
    if op == "suffix":
        suffixes = tuple(values)
        return folded(lambda s: s.endswith(suffixes))
    if op == "contains":
        return folded(lambda s: any(v in s for v in values))
    if op in ("regex", "not-regex"):
        pattern = re.compile("|".join(f"(?:{v})" for v in condition.values),
                             re.IGNORECASE if caseless else 0)
        return lambda s: pattern.search(s) is not None
    if op in ("cidr", "not-cidr"):
        networks = [ipaddress.ip_network(v, strict=False) for v in condition.values]

        def in_networks(s: str) -> bool:
            try:
                address = ipaddress.ip_address(s)
            except ValueError:
                return False
            return any(address in network for network in networks)
        return in_networks
    if op in ("gt", "ge", "lt", "le"):
        import operator
        compare = getattr(operator, op)
        bounds = [float(v) for v in condition.values]

        def numeric(s: str) -> bool:
            try:
                number = float(s)
            except ValueError:
                return False
            return any(compare(number, bound) for bound in bounds)
        return numeric
    raise ValueError(f"unknown operator {op!r}")


def compile_condition(condition: Condition) -> Predicate:
    get = VARIABLES[condition.var](condition.name)
    op = condition.op
    if op in ("exists", "missing"):
        present = op == "exists"
        return lambda request: bool(get(request)) is present
    test = _value_test(condition)
    negate = op in ("ne", "not-regex", "not-cidr")

    def holds(request: Any) -> bool:
        subject = get(request)
        if isinstance(subject, str):
            return test(subject) is not negate
        return any(test(s) for s in subject) is not negate
    return holds


def compile_conditions(conditions: list[Condition]) -> Predicate | None:
    predicates = [compile_condition(c) for c in conditions]
    if not predicates:
        return None
    if len(predicates) == 1:
        return predicates[0]
    return lambda request: all(p(request) for p in predicates)


# --- actions -------------------------------------------------------------------------

Step = Callable[[Any, list], Any]
"""A step changes the request or appends response-header ops; a terminal step returns
the outcome (an upstream object or a LocalResponse)."""


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


def _rewrite_step(action: RewritePath) -> Step:
    if action.path is not None:
        path = action.path
        return lambda request, _ops: request.set_target(path)
    if action.prefix is not None:
        prefix, replacement = action.prefix, action.replacement

        def rewrite_prefix(request: Any, _ops: list) -> None:
            current = request.uri_path
            if current.startswith(prefix):
                rest = current[len(prefix):]
                new = replacement + rest
                if replacement.endswith("/") and rest.startswith("/"):
                    new = replacement + rest[1:]
                request.set_target(new if new.startswith("/") else "/" + new)
        return rewrite_prefix
    pattern, replacement = re.compile(action.regex or ""), action.replacement

    def rewrite_regex(request: Any, _ops: list) -> None:
        new = pattern.sub(replacement, request.uri_path, count=1)
        request.set_target(new if new.startswith("/") else "/" + new)
    return rewrite_regex


def _redirect_step(action: Redirect) -> Step:
    def redirect(request: Any, _ops: list) -> LocalResponse:
        scheme = action.scheme or request.scheme
        host = action.host or request.host
        default_port = 443 if scheme == "https" else 80
        # Gateway API: no port given → the scheme's port if a scheme was given, else the listener's.
        port = action.port or (default_port if action.scheme else request.port)
        authority = host if port in (None, default_port) else f"{host}:{port}"
        path = action.path if action.path is not None else request.uri_path
        query = request.query if action.keep_query else ""
        location = f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")
        return LocalResponse(action.status, [(b"Location", location.encode("latin-1"))])
    return redirect


def _respond_step(action: Respond) -> Step:
    headers = [(b"Content-Type", action.content_type.encode("latin-1"))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in action.headers.items()]
    response = LocalResponse(action.status, headers, action.body.encode("utf-8"))
    return lambda _request, _ops: response


def compile_action(action: Any, upstreams: dict[str, Any]) -> Step:
    if isinstance(action, Proxy):
        target = upstreams[action.upstream]
        return lambda _request, _ops: target
    if isinstance(action, (SetRequestHeader, AddRequestHeader, RemoveRequestHeader)):
        mode = {"set-request-header": "set", "add-request-header": "add"}.get(action.kind, "remove")
        return _header_step(action.name, getattr(action, "value", None), mode)
    if isinstance(action, (SetResponseHeader, AddResponseHeader, RemoveResponseHeader)):
        mode = {"set-response-header": "set", "add-response-header": "add"}.get(action.kind, "remove")
        return _response_header_step(action.name, getattr(action, "value", None), mode)
    if isinstance(action, RewritePath):
        return _rewrite_step(action)
    if isinstance(action, Redirect):
        return _redirect_step(action)
    if isinstance(action, Respond):
        return _respond_step(action)
    raise ValueError(f"no compiler for action {action.kind!r}")


# --- rules ---------------------------------------------------------------------------


def ordered(rules: list[Rule]) -> list[tuple[int, Rule]]:
    """Enabled rules in run order: `top` rules first, then by `order`, then as listed."""
    indexed = [(index, rule) for index, rule in enumerate(rules) if rule.enabled]
    return sorted(indexed, key=lambda item: (not item[1].top, item[1].order, item[0]))


def compile_rules(rules: list[Rule], upstreams: dict[str, Any]) -> Callable[[Any, list], tuple[int, Any]]:
    """Returns route(request, response_ops) -> (rule index or -1, outcome or None)."""
    chain = []
    for index, rule in ordered(rules):
        steps = [compile_action(action, upstreams) for action in rule.actions]
        chain.append((compile_conditions(rule.conditions), tuple(steps), rule.last, index))
    chain_t = tuple(chain)

    def route(request: Any, ops: list) -> tuple[int, Any]:
        for matches, steps, last, index in chain_t:
            if matches is None or matches(request):
                for step in steps:
                    outcome = step(request, ops)
                    if outcome is not None:
                        return index, outcome
                if last:
                    return index, None
        return -1, None
    return route

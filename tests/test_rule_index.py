"""The rule index is only a shortcut: for any rules and any request, the indexed route decides
exactly as evaluating every rule in turn does, and leaves the request in the same state."""

from __future__ import annotations

from unittest import mock
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeplane.lang import compile as rule_compiler
from edgeplane.lang import regexset
from edgeplane.model.config import Rule
from edgeplane.node.request import Request

UPSTREAMS = {"api": "API", "web": "WEB", "static": "STATIC"}
ENGINES = [regexset.RegexSet] + ([regexset.HyperscanSet] if regexset.hyperscan is not None else [])


def routes(rules: list[Rule], before: list[Rule], after: list[Rule], engine: type) -> tuple:
    """The linear and the indexed route of the same rules, each built by compile_rules."""
    with mock.patch.object(rule_compiler, "regex_set", engine):
        with mock.patch.object(rule_compiler, "INDEX_THRESHOLD", float("inf")):
            linear = rule_compiler.compile_rules(rules, UPSTREAMS, before=before, after=after)
        with mock.patch.object(rule_compiler, "INDEX_THRESHOLD", 0):
            indexed = rule_compiler.compile_rules(rules, UPSTREAMS, before=before, after=after)
    return linear, indexed


def request(method: str, host: str, target: str, headers: list[tuple[str, str]]) -> Request:
    req = Request()
    req.method, req.host, req.client_ip = method, host, "10.1.2.3"
    req.headers = [(name.encode(), value.encode()) for name, value in headers]
    path, _, query = target.partition("?")
    req.set_target(path, query)
    return req


def decided(route, drawn: tuple) -> tuple:
    """What a route decided and everything it left behind."""
    req, ops = request(*drawn), []
    label, outcome = route(req, ops)
    return (label, outcome, ops, req.headers, req.target, req.path, req.host, req.host_header,
            req.variables, req.mirrors)


# --- rules -------------------------------------------------------------------------------

PATHS = ["/", "/api", "/api/", "/api/v1/items", "/api/v1/items/42", "/api/v2/users/7/orders", "/static/app.js",
         "/static/css/site.css", "/admin", "/Admin/users", "/health", "/café", "/日本"]
PREFIXES = ["/", "/api/", "/api/v1/", "/api/v2", "/static/", "/admin", "/users/", "/API/"]
REGEXES = [r"^/api/v\d+/", r"\.(?:js|css)$", r"^/api/v1/items/\d+$", r"admin", r"/users/[^/]+/orders",
           r"^/static/.*\.js$", r"^/$", r"\d{2,}", r"é", r"(?=.*v2)", r"^/(\w+)/\1", r"x=1", r"(?i)^/ADMIN"]
HEADERS = ["X-Env", "X-User", "Accept"]
HEADER_VALUES = ["canary", "Canary", "staging", "alice", "text/html"]


def condition(var: str, op: st.SearchStrategy, values: st.SearchStrategy, name: str | None = None) -> st.SearchStrategy:
    return st.builds(lambda o, v, caseless: {"var": var, "name": name, "op": o, "values": v, "caseless": caseless},
                     op, st.lists(values, min_size=1, max_size=3), st.booleans())


def presence(var: str, name: str) -> st.SearchStrategy:
    return st.sampled_from(["exists", "missing"]).map(lambda op: {"var": var, "name": name, "op": op})


conditions = st.one_of(
    condition("path", st.sampled_from(["eq", "in", "in", "ne", "suffix"]), st.sampled_from(PATHS)),
    condition("path", st.just("prefix"), st.sampled_from(PREFIXES)),
    condition("path", st.sampled_from(["regex", "regex", "not-regex"]), st.sampled_from(REGEXES)),
    condition("uri", st.sampled_from(["regex", "eq"]), st.sampled_from(REGEXES + ["/api/v1/items/42?x=1"])),
    condition("query", st.sampled_from(["regex", "contains", "eq"]), st.sampled_from(["x=1", "page=2", r"\d", ""])),
    condition("host", st.sampled_from(["eq", "regex"]), st.sampled_from(["example.com", "api.example.com", r"^api\."])),
    condition("method", st.sampled_from(["eq", "in", "regex"]), st.sampled_from(["GET", "POST", "^(?:PUT|DELETE)$"])),
    st.sampled_from(HEADERS).flatmap(lambda name: st.one_of(
        condition("header", st.sampled_from(["eq", "regex", "contains"]), st.sampled_from(HEADER_VALUES), name),
        presence("header", name))),
    condition("arg", st.sampled_from(["eq", "gt"]), st.sampled_from(["1", "2", "10"]), "page"),
    condition("var", st.just("eq"), st.sampled_from(["1", "2"]), "tier"),
)

changes = st.one_of(
    st.sampled_from(["/api/v1/items/42", "/static/app.js", "/admin", "/"]).map(lambda p: {"rewrite-path": {"path": p}}),
    st.sampled_from([("/api/", "/api/v1/"), ("/admin", "/Admin"), ("/static/", "/")]).map(
        lambda r: {"rewrite-path": {"prefix": r[0], "replacement": r[1]}}),
    st.just({"rewrite-path": {"regex": r"/(\d+)", "replacement": r"/items/\1"}}),
    st.just({"rewrite-query": {"set": {"page": "2"}}}),
    st.tuples(st.sampled_from(["set", "add"]), st.sampled_from(HEADERS), st.sampled_from(HEADER_VALUES)).map(
        lambda c: {f"{c[0]}-request-header": {"name": c[1], "value": c[2]}}),
    st.sampled_from(HEADERS).map(lambda name: {"remove-request-header": {"name": name}}),
    st.sampled_from(["api.example.com", "example.com"]).map(lambda h: {"set-request-header": {"name": "Host", "value": h}}),
    st.sampled_from(["1", "2"]).map(lambda v: {"set-var": {"name": "tier", "value": v}}),
    st.sampled_from(["X-Served", "X-Trace"]).map(lambda n: {"set-response-header": {"name": n, "value": "yes"}}),
    st.sampled_from(list(UPSTREAMS)).map(lambda u: {"mirror": {"upstream": u}}),
)
decisions = st.one_of(
    st.sampled_from(list(UPSTREAMS)).map(lambda u: {"proxy": {"upstream": u}}),
    st.sampled_from([200, 404]).map(lambda s: {"respond": {"status": s, "body": f"{s}"}}),
    st.just({"deny": {}}),
    st.just({"redirect": {"path": "/moved"}}),
)


@st.composite
def rule(draw) -> Rule:
    actions = draw(st.lists(changes, max_size=2))
    if not actions or draw(st.integers(0, 2)) == 0:
        actions.append(draw(decisions))
    unconditional = draw(st.integers(0, 9)) == 0
    return Rule(conditions=[] if unconditional else draw(st.lists(conditions, min_size=1, max_size=2)), actions=actions,
                order=draw(st.sampled_from([0, 0, 0, 1, 5])), top=draw(st.integers(0, 9)) == 0,
                last=draw(st.integers(0, 9)) == 0, enabled=draw(st.integers(0, 19)) != 0)


requests = st.tuples(
    st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE"]),
    st.sampled_from(["example.com", "api.example.com"]),
    st.tuples(st.sampled_from([quote(path) for path in PATHS] + [
        "/api/v1/items/42?x=1", "/API/V1/items/7", "/ADMIN", "/Static/App.JS", "/a/../admin", "/static/%2e%2e/admin",
        "/api/v1/items/123?page=2&x=1"]),
              st.sampled_from(["", "", "?page=1", "?page=10&x=1"])).map(
        lambda t: t[0] + t[1] if "?" not in t[0] else t[0]),
    st.lists(st.tuples(st.sampled_from(HEADERS), st.sampled_from(HEADER_VALUES)), max_size=3),
)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda engine: engine.engine)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=st.lists(rule(), min_size=10, max_size=60), before=st.lists(rule(), max_size=3),
       after=st.lists(rule(), max_size=3), drawn=st.lists(requests, min_size=1, max_size=20))
def test_the_indexed_route_decides_and_changes_requests_as_the_linear_route(engine, rules, before, after, drawn):
    linear, indexed = routes(rules, before, after, engine)
    for one in drawn:
        assert decided(indexed, one) == decided(linear, one), one

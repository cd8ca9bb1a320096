"""Rules: conditions compile to predicates, actions to steps; both checked as a node runs them."""

from __future__ import annotations

import http.client
import json

import pytest

from edgeplane.lang.compile import LocalResponse, compile_condition, compile_rules
from edgeplane.model.config import Condition, Rule
from edgeplane.node.request import Request, normalize_path

from conftest import app_config, free_port


def request(target: str = "/", method: str = "GET", host: str = "example.com",
            headers: list[tuple[str, str]] | None = None, client_ip: str = "10.1.2.3") -> Request:
    req = Request()
    req.method, req.host, req.client_ip = method, host, client_ip
    req.headers = [(k.encode(), v.encode()) for k, v in headers or []]
    path, _, query = target.partition("?")
    req.set_target(path, query)
    return req


def holds(condition: dict, req: Request) -> bool:
    return compile_condition(Condition(**condition))(req)


# --- variables and operators ---------------------------------------------------------

@pytest.mark.parametrize("condition, target, expected", [
    ({"var": "path", "op": "eq", "values": ["/a", "/b"]}, "/b", True),
    ({"var": "path", "op": "eq", "values": ["/a"]}, "/A", False),
    ({"var": "path", "op": "eq", "values": ["/a"], "caseless": True}, "/A", True),
    ({"var": "path", "op": "ne", "values": ["/a"]}, "/b", True),
    ({"var": "path", "op": "prefix", "values": ["/api/", "/v2/"]}, "/v2/x", True),
    ({"var": "path", "op": "suffix", "values": [".php"]}, "/index.PHP", False),
    ({"var": "path", "op": "suffix", "values": [".php"], "caseless": True}, "/index.PHP", True),
    ({"var": "path", "op": "contains", "values": ["admin"]}, "/x/admin/y", True),
    ({"var": "path", "op": "regex", "values": [r"^/item/\d+$"]}, "/item/42", True),
    ({"var": "path", "op": "regex", "values": [r"^/item/\d+$"]}, "/item/x", False),
    ({"var": "path", "op": "not-regex", "values": [r"^/item/"]}, "/other", True),
    ({"var": "uri", "op": "eq", "values": ["/p?q=1"]}, "/p?q=1", True),
    ({"var": "query", "op": "contains", "values": ["debug"]}, "/p?debug=1", True),
    ({"var": "arg", "name": "page", "op": "gt", "values": ["10"]}, "/p?page=11", True),
    ({"var": "arg", "name": "page", "op": "le", "values": ["10"]}, "/p?page=11", False),
    ({"var": "arg", "name": "page", "op": "gt", "values": ["10"]}, "/p?page=abc", False),
    ({"var": "arg", "name": "page", "op": "exists"}, "/p?page=", True),
    ({"var": "arg", "name": "page", "op": "missing"}, "/p?other=1", True),
])
def test_conditions_on_the_request_target(condition, target, expected):
    assert holds(condition, request(target)) is expected


def test_path_conditions_see_the_decoded_normalized_path():
    deny_admin = {"var": "path", "op": "prefix", "values": ["/admin"]}
    for sneaky in ("/%61dmin/users", "/x/../admin/users", "/./admin", "/static/%2e%2e/admin"):
        assert holds(deny_admin, request(sneaky)), sneaky


@pytest.mark.parametrize("raw, normalized", [
    ("/", "/"), ("", "/"), ("/a/b/../c", "/a/c"), ("/a/./b/", "/a/b/"), ("/../../etc", "/etc"),
    ("/a//b", "/a/b"), ("/%7Euser", "/~user"), ("/a/..", "/"),
])
def test_normalize_path_removes_dot_segments_and_decodes(raw, normalized):
    assert normalize_path(raw) == normalized


def test_header_conditions_match_any_value_and_ignore_name_case():
    req = request(headers=[("X-Env", "staging"), ("x-env", "canary")])
    assert holds({"var": "header", "name": "X-ENV", "op": "eq", "values": ["canary"]}, req)
    assert holds({"var": "header", "name": "x-env", "op": "exists"}, req)
    assert holds({"var": "header", "name": "x-other", "op": "missing"}, req)


def test_cookie_conditions_read_the_named_cookie():
    req = request(headers=[("Cookie", "theme=dark; session=abc123")])
    assert holds({"var": "cookie", "name": "session", "op": "eq", "values": ["abc123"]}, req)
    assert not holds({"var": "cookie", "name": "theme", "op": "eq", "values": ["light"]}, req)


def test_client_ip_conditions_match_cidrs_of_both_families():
    cidr = {"var": "client-ip", "op": "cidr", "values": ["10.0.0.0/8", "2001:db8::/32"]}
    assert holds(cidr, request(client_ip="10.200.0.1"))
    assert holds(cidr, request(client_ip="2001:db8::5"))
    assert not holds(cidr, request(client_ip="192.168.1.1"))
    assert holds({**cidr, "op": "not-cidr"}, request(client_ip="192.168.1.1"))


def test_host_and_method_conditions():
    assert holds({"var": "host", "op": "suffix", "values": [".example.com"]}, request(host="a.example.com"))
    assert holds({"var": "method", "op": "eq", "values": ["POST", "PUT"]}, request(method="PUT"))


# --- rule order ----------------------------------------------------------------------

def route(rules: list[dict], req: Request) -> tuple[int, object, list]:
    ops: list = []
    compiled = compile_rules([Rule(**r) for r in rules], {"up": "UPSTREAM"})
    index, outcome = compiled(req, ops)
    return index, outcome, ops


def test_top_rules_run_first_then_by_order_then_as_listed():
    rules = [
        {"name": "late", "order": 5, "actions": [{"respond": {"body": "late"}}]},
        {"name": "early", "order": 1, "actions": [{"respond": {"body": "early"}}]},
        {"name": "top", "top": True, "order": 9, "actions": [{"respond": {"body": "top"}}]},
    ]
    index, outcome, _ = route(rules, request())
    assert index == 2 and outcome.body == b"top"


def test_non_terminal_rules_accumulate_until_a_terminal_one():
    rules = [
        {"actions": [{"set-request-header": {"name": "X-A", "value": "1"}}]},
        {"conditions": [{"var": "path", "op": "prefix", "values": ["/nope"]}],
         "actions": [{"respond": {"status": 403}}]},
        {"actions": [{"proxy": {"upstream": "up"}}]},
    ]
    req = request("/x")
    index, outcome, _ = route(rules, req)
    assert (index, outcome.upstream) == (2, "UPSTREAM")
    assert (b"X-A", b"1") in req.headers


def test_a_last_rule_stops_later_rules():
    rules = [{"last": True, "actions": [{"set-response-header": {"name": "X", "value": "1"}}]},
             {"actions": [{"proxy": {"upstream": "up"}}]}]
    index, outcome, ops = route(rules, request())
    assert index == 0 and outcome is None and ops


def test_disabled_rules_do_not_run():
    rules = [{"enabled": False, "actions": [{"respond": {"status": 403}}]},
             {"actions": [{"respond": {"status": 200}}]}]
    _, outcome, _ = route(rules, request())
    assert isinstance(outcome, LocalResponse) and outcome.status == 200


# --- actions through a real node -------------------------------------------------------

def call(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers={"Host": "shop.test", **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.fixture
def shop(node, echo):
    backend = echo("shop-backend")
    port = free_port()
    rules = [
        {"conditions": [{"var": "path", "op": "eq", "values": ["/fixed"]}],
         "actions": [{"respond": {"status": 418, "body": "short and stout", "content_type": "text/teapot",
                                  "headers": {"X-Kind": "teapot"}}}]},
        {"conditions": [{"var": "path", "op": "prefix", "values": ["/old/"]}],
         "actions": [{"redirect": {"status": 308, "path": "/new/"}}]},
        {"conditions": [{"var": "path", "op": "eq", "values": ["/secure"]}],
         "actions": [{"redirect": {"status": 301, "scheme": "https", "host": "secure.test"}}]},
        {"conditions": [{"var": "path", "op": "prefix", "values": ["/api/"]}],
         "actions": [{"rewrite-path": {"prefix": "/api/", "replacement": "/v2/"}},
                     {"proxy": {"upstream": "up"}}]},
        {"conditions": [{"var": "path", "op": "regex", "values": ["^/user/[0-9]+$"]}],
         "actions": [{"rewrite-path": {"regex": "^/user/([0-9]+)$", "replacement": r"/profile?id=\1"}},
                     {"proxy": {"upstream": "up"}}]},
        {"actions": [
            {"set-request-header": {"name": "X-Set", "value": "set"}},
            {"add-request-header": {"name": "X-Add", "value": "added"}},
            {"remove-request-header": {"name": "X-Secret"}},
            {"set-response-header": {"name": "X-Served-By", "value": "edgeplane"}},
            {"add-response-header": {"name": "X-Extra", "value": "1"}},
            {"remove-response-header": {"name": "X-Internal"}},
            {"proxy": {"upstream": "up"}}]},
    ]
    node(app_config([backend.server()], port, rules=rules, domains=["shop.test"]))
    return port


def test_respond_returns_the_fixed_response(shop):
    status, headers, body = call(shop, "/fixed")
    assert (status, body) == (418, b"short and stout")
    assert headers["content-type"] == "text/teapot" and headers["x-kind"] == "teapot"


def test_redirect_keeps_the_listener_port_and_query_when_only_the_path_changes(shop):
    status, headers, _ = call(shop, "/old/page?a=1")
    assert status == 308
    assert headers["location"] == f"http://shop.test:{shop}/new/?a=1"


def test_redirect_to_https_uses_the_scheme_default_port(shop):
    status, headers, _ = call(shop, "/secure")
    assert (status, headers["location"]) == (301, "https://secure.test/secure")


def test_rewrite_path_by_prefix_keeps_the_query(shop):
    _, _, body = call(shop, "/api/items?x=1")
    assert json.loads(body)["path"] == "/v2/items?x=1"


def test_rewrite_path_by_regex_substitutes_groups(shop):
    _, _, body = call(shop, "/user/42")
    assert json.loads(body)["path"] == "/profile?id=42"


def test_request_headers_are_set_added_and_removed(shop):
    _, _, body = call(shop, "/h", headers={"X-Set": "client", "X-Add": "client", "X-Secret": "s3cr3t"})
    received = json.loads(body)["headers"]
    assert received["X-Set"] == ["set"]
    assert received["X-Add"] == ["client", "added"]
    assert "X-Secret" not in received


def test_response_headers_are_set_added_and_removed(shop):
    status, headers, _ = call(shop, "/h", headers={"X-Echo-Set-Header": "X-Internal:leak,X-Served-By:backend"})
    assert status == 200
    assert headers["x-served-by"] == "edgeplane"
    assert headers["x-extra"] == "1"
    assert "x-internal" not in headers


def test_response_header_actions_apply_to_local_responses_too(node):
    port = free_port()
    rules = [{"actions": [{"set-response-header": {"name": "X-Frame-Options", "value": "DENY"}},
                          {"respond": {"status": 200, "body": "hi"}}]}]
    node(app_config([{"address": "127.0.0.1", "port": 9}], port, rules=rules, domains=["shop.test"]))
    _, headers, _ = call(port, "/")
    assert headers["x-frame-options"] == "DENY"


def test_a_request_no_rule_routes_gets_404_naming_the_application(node):
    port = free_port()
    rules = [{"conditions": [{"var": "path", "op": "eq", "values": ["/only"]}], "actions": [{"respond": {}}]}]
    node(app_config([{"address": "127.0.0.1", "port": 9}], port, rules=rules, domains=["shop.test"]))
    status, headers, body = call(port, "/else")
    assert status == 404
    assert b"no rule of application 'app' routes this request" in body
    assert headers["x-request-id"].encode() in body


def test_hosts_select_applications_exact_before_wildcard_before_catch_all(node):
    port = free_port()
    upstream = [{"address": "127.0.0.1", "port": 9}]
    config = {
        "upstreams": [{"name": "up", "servers": upstream}],
        "applications": [
            {"name": name, "domains": domains, "ports": [port],
             "rules": [{"actions": [{"respond": {"body": name}}]}]}
            for name, domains in (("exact", ["api.example.com"]), ("wild", ["*.example.com"]),
                                  ("deep", ["*.eu.example.com"]), ("rest", ["*"]))
        ],
    }
    node(config)
    for host, expected in (("api.example.com", b"exact"), ("API.Example.com:80", b"exact"),
                           ("www.example.com", b"wild"), ("a.b.example.com", b"wild"),
                           ("x.eu.example.com", b"deep"), ("other.org", b"rest")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/", headers={"Host": host})
        assert conn.getresponse().read() == expected, host
        conn.close()

"""Every rule variable and operator, through one real node: each case has a request that
must match and one that must not.

Rule N holds only for requests carrying `X-Case: N`, so one node serves every case and a
case can only be answered by its own rule (or by the fallback)."""

from __future__ import annotations

import http.client

import jwt
import pytest

from edgeplane.node.auth.credentials import hash_api_key

from conftest import free_port

API_KEY = "matrix-key-0123456789abcdef0123456789abcdef"
SECRET = "matrix-secret-0123456789abcdef0123456789abcdef"


def token(claims: dict) -> str:
    return jwt.encode({"exp": 4102444800, **claims}, SECRET, algorithm="HS256")


# (condition, matching request, non-matching request); a request is (method, target, headers, version)
CASES = [
    ({"var": "host", "op": "eq", "values": ["app.test"]}, ("GET", "/", {}), ("GET", "/", {"Host": "other.test"})),
    ({"var": "scheme", "op": "eq", "values": ["http"]}, ("GET", "/", {}), None),
    ({"var": "method", "op": "in", "values": ["PUT", "PATCH"]}, ("PUT", "/", {}), ("GET", "/", {})),
    ({"var": "uri", "op": "eq", "values": ["/a%20b?x=1"]}, ("GET", "/a%20b?x=1", {}), ("GET", "/a b?x=1".replace(" ", "%2520"), {})),
    ({"var": "path", "op": "eq", "values": ["/a b"]}, ("GET", "/a%20b", {}), ("GET", "/ab", {})),
    ({"var": "path", "op": "ne", "values": ["/x"]}, ("GET", "/y", {}), ("GET", "/x", {})),
    ({"var": "path", "op": "not-in", "values": ["/x", "/y"]}, ("GET", "/z", {}), ("GET", "/y", {})),
    ({"var": "path", "op": "prefix", "values": ["/api/"]}, ("GET", "/api/v1", {}), ("GET", "/apix", {})),
    ({"var": "path", "op": "suffix", "values": [".jpg", ".png"]}, ("GET", "/i/a.png", {}), ("GET", "/i/a.gif", {})),
    ({"var": "path", "op": "contains", "values": ["admin"]}, ("GET", "/x/admin/y", {}), ("GET", "/x/user", {})),
    ({"var": "path", "op": "regex", "values": [r"^/item/\d+$"]}, ("GET", "/item/42", {}), ("GET", "/item/4x", {})),
    ({"var": "path", "op": "not-regex", "values": [r"^/item/"]}, ("GET", "/other", {}), ("GET", "/item/1", {})),
    ({"var": "path", "op": "eq", "values": ["/admin"], "caseless": True}, ("GET", "/ADMIN", {}), ("GET", "/admins", {})),
    ({"var": "path", "op": "regex", "values": ["^/img/"], "caseless": True}, ("GET", "/IMG/a", {}), ("GET", "/imgs/a", {})),
    ({"var": "query", "op": "contains", "values": ["debug"]}, ("GET", "/?debug=1", {}), ("GET", "/?x=1", {})),
    ({"var": "arg", "name": "page", "op": "gt", "values": ["10"]}, ("GET", "/?page=11", {}), ("GET", "/?page=9", {})),
    ({"var": "arg", "name": "page", "op": "ge", "values": ["10"]}, ("GET", "/?page=10", {}), ("GET", "/?page=9.5", {})),
    ({"var": "arg", "name": "page", "op": "lt", "values": ["10"]}, ("GET", "/?page=2", {}), ("GET", "/?page=10", {})),
    ({"var": "arg", "name": "page", "op": "le", "values": ["10"]}, ("GET", "/?page=10", {}), ("GET", "/?page=10.1", {})),
    ({"var": "arg", "name": "q", "op": "eq", "values": ["a b"]}, ("GET", "/?q=a+b", {}), ("GET", "/?q=ab", {})),
    ({"var": "arg", "name": "q", "op": "exists"}, ("GET", "/?q=", {}), ("GET", "/?r=1", {})),
    ({"var": "arg", "name": "q", "op": "missing"}, ("GET", "/?r=1", {}), ("GET", "/?q=1", {})),
    ({"var": "header", "name": "X-Env", "op": "eq", "values": ["canary"]}, ("GET", "/", {"X-Env": "canary"}), ("GET", "/", {"X-Env": "prod"})),
    ({"var": "header", "name": "x-env", "op": "eq", "values": ["CANARY"], "caseless": True}, ("GET", "/", {"X-Env": "canary"}), ("GET", "/", {})),
    ({"var": "header", "name": "User-Agent", "op": "regex", "values": ["(?i)bot"]}, ("GET", "/", {"User-Agent": "GoogleBot/2"}), ("GET", "/", {"User-Agent": "Firefox"})),
    ({"var": "header", "name": "X-Env", "op": "exists"}, ("GET", "/", {"X-Env": "x"}), ("GET", "/", {})),
    ({"var": "cookie", "name": "beta", "op": "eq", "values": ["1"]}, ("GET", "/", {"Cookie": "a=b; beta=1"}), ("GET", "/", {"Cookie": "beta=0"})),
    ({"var": "cookie", "name": "beta", "op": "missing"}, ("GET", "/", {"Cookie": "a=b"}), ("GET", "/", {"Cookie": "beta=1"})),
    ({"var": "client-ip", "op": "cidr", "values": ["127.0.0.0/8"]}, ("GET", "/", {}), None),
    ({"var": "client-ip", "op": "not-cidr", "values": ["10.0.0.0/8"]}, ("GET", "/", {}), None),
    ({"var": "client-ip", "op": "eq", "values": ["127.0.0.1"]}, ("GET", "/", {}), None),
    ({"var": "location", "op": "eq", "values": ["loopback"]}, ("GET", "/", {}), None),
    ({"var": "http-version", "op": "eq", "values": ["1.0"]}, ("GET", "/", {}, "1.0"), ("GET", "/", {})),
    ({"var": "tls-sni", "op": "missing"}, ("GET", "/", {}), None),
    # The TLS variables on a plain port (tests/test_tls_policy.py, test_ja4.py, test_mtls.py: over TLS).
    *[({"var": var, "op": "missing"}, ("GET", "/", {}), None) for var in (
        "tls-version", "ja4", "tls-client-identity", "tls-client-uri", "tls-client-dns", "tls-client-cn",
        "tls-client-fingerprint")],
    ({"var": "time", "op": "ge", "values": ["00:00"]}, ("GET", "/", {}), None),
    ({"var": "time", "op": "lt", "values": ["00:00"]}, None, ("GET", "/", {})),
    ({"var": "weekday", "op": "in", "values": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}, ("GET", "/", {}), None),
    ({"var": "date", "op": "gt", "values": ["2000-01-01"]}, ("GET", "/", {}), None),
    ({"var": "date", "op": "lt", "values": ["2000-01-01"]}, None, ("GET", "/", {})),
    ({"var": "random", "op": "le", "values": ["100"]}, ("GET", "/", {}), None),
    ({"var": "random", "op": "lt", "values": ["0"]}, None, ("GET", "/", {})),
    ({"var": "var", "name": "tier", "op": "eq", "values": ["gold"]}, ("GET", "/", {"X-Plan": "gold"}), ("GET", "/", {})),
    ({"var": "consumer", "op": "eq", "values": ["alice"]}, ("GET", "/", {"X-Api-Key": API_KEY}), ("GET", "/", {})),
    ({"var": "consumer-tier", "op": "eq", "values": ["gold"]}, ("GET", "/", {"X-Api-Key": API_KEY}), ("GET", "/", {})),
    ({"var": "claim", "name": "roles", "op": "eq", "values": ["admin"]},
     ("GET", "/", {"X-Token": token({"roles": ["user", "admin"]})}), ("GET", "/", {"X-Token": token({"roles": "user"})})),
]


@pytest.fixture(scope="module")
def matrix_port(tmp_path_factory):
    from conftest import Node
    port = free_port()
    rules = [{"conditions": [{"var": "header", "name": "X-Plan", "op": "exists"}],
              "actions": [{"set-var": {"name": "tier", "value": "gold"}}]},
             {"conditions": [{"var": "header", "name": "X-Api-Key", "op": "exists"}],
              "actions": [{"authenticate": {"provider": "keys"}}]},
             {"conditions": [{"var": "header", "name": "X-Token", "op": "exists"}],
              "actions": [{"authenticate": {"provider": "tokens"}}]}]
    for number, (condition, _, _) in enumerate(CASES):
        rules.append({"name": f"case-{number}",
                      "conditions": [{"var": "header", "name": "X-Case", "op": "eq", "values": [str(number)]}, condition],
                      "actions": [{"respond": {"body": str(number)}}]})
    rules.append({"actions": [{"respond": {"body": "none"}}]})
    config = {"settings": {"locations": [{"cidr": "127.0.0.0/8", "location": "loopback"}]},
              "auth_providers": [{"name": "keys", "api_key": {}},
                                 {"name": "tokens", "jwt": {"algorithms": ["HS256"], "keys": [{"secret": SECRET}],
                                                            "token": "header:X-Token"}}],
              "consumers": [{"name": "alice", "tier": "gold", "api_keys": [hash_api_key(API_KEY)]}],
              "applications": [{"name": "matrix", "domains": ["app.test", "other.test"], "ports": [port], "rules": rules}]}
    started = Node(tmp_path_factory.mktemp("matrix"), config, access_log=False)
    yield port
    started.stop()


def send(port: int, number: int, request: tuple) -> bytes:
    method, target, headers, *version = request
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if version == ["1.0"]:
        conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    conn.request(method, target, headers={"Host": "app.test", "X-Case": str(number), **headers})
    body = conn.getresponse().read()
    conn.close()
    return body


@pytest.mark.parametrize("number", range(len(CASES)),
                         ids=[f"{c['var']}-{c['op']}{'-caseless' if c.get('caseless') else ''}" for c, _, _ in CASES])
def test_each_variable_and_operator_matches_what_it_should_and_nothing_else(matrix_port, number):
    _, matching, other = CASES[number]
    if matching is not None:
        assert send(matrix_port, number, matching) == str(number).encode()
    if other is not None:
        assert send(matrix_port, number, other) == b"none"


def test_the_matrix_covers_every_variable_and_operator():
    from typing import get_args

    from edgeplane.model.config import Operator, Variable
    assert {c["var"] for c, _, _ in CASES} == set(get_args(Variable))
    assert {c["op"] for c, _, _ in CASES} == set(get_args(Operator))

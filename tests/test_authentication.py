"""Authentication through real nodes: JWT (inline keys and a JWKS served by the test),
API keys and Basic, each mapped to consumers; every kind of bad token refused alike."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import subprocess
import sys
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edgeplane.node.auth.credentials import hash_api_key, hash_password
from test_rate_limits import get

from conftest import app_config, free_port

ISSUER = "https://issuer.test"
AUDIENCE = "orders"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
HS_SECRET = "an-hmac-secret-of-more-than-32-bytes-0123456789"


def pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "tier": "paid", **extra}


def sign(payload: dict, key=RSA_KEY, alg: str = "RS256", kid: str | None = "k1") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict, payload: dict, signature: bytes) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def auth_config(echo_server, port: int, providers: list, rules: list, consumers: list | None = None) -> dict:
    config = app_config([echo_server.server()], port, rules)
    config["auth_providers"] = providers
    config["consumers"] = consumers or []
    return config


def protected(provider: str) -> list:
    return [{"actions": [{"authenticate": {"provider": provider}}, {"proxy": {"upstream": "up"}}]}]


# --- JWT ----------------------------------------------------------------------------------

JWT_PROVIDER = {"name": "corp", "jwt": {
    "algorithms": ["RS256", "ES256", "HS256"], "issuer": ISSUER, "audiences": [AUDIENCE], "leeway": "5s",
    "keys": [{"kid": "k1", "pem": pem(RSA_KEY)}, {"kid": "e1", "pem": pem(EC_KEY)}],
    "consumer_claim": "sub", "tier_claim": "tier", "claims_to_headers": {"sub": "X-User"}}}


@pytest.fixture
def jwt_node(echo, node):
    port = free_port()
    rules = [{"conditions": [{"var": "path", "op": "prefix", "values": ["/admin"]}],
              "actions": [{"authenticate": {"provider": "corp"}}]},
             {"conditions": [{"var": "path", "op": "prefix", "values": ["/admin"]},
                             {"var": "claim", "name": "role", "op": "ne", "values": ["admin"]}],
              "actions": [{"deny": {}}]},
             *protected("corp")]
    node(auth_config(echo(), port, [JWT_PROVIDER], rules))
    return port


def test_a_valid_token_reaches_the_upstream_as_its_claims_not_itself(jwt_node):
    status, _, body = get(jwt_node, headers=bearer(sign(claims())))
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["X-User"] == ["alice"]
    assert "Authorization" not in seen
    assert get(jwt_node, headers=bearer(sign(claims(), EC_KEY, "ES256", "e1")))[0] == 200


def test_claims_are_rule_variables(jwt_node):
    assert get(jwt_node, "/admin", bearer(sign(claims(role="user"))))[0] == 403
    assert get(jwt_node, "/admin", bearer(sign(claims(role="admin"))))[0] == 200


def test_a_missing_token_gets_a_bearer_challenge_without_an_error(jwt_node):
    status, headers, _ = get(jwt_node)
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="corp"'
    assert get(jwt_node, headers={"Authorization": "Basic YTpi"})[0] == 401


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    header_rs = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims()).encode())}"
    confusion = signing_input + "." + b64(hmac.new(pem(RSA_KEY).encode(), signing_input.encode(), hashlib.sha256).digest())
    return {
        "expired": sign(claims(exp=now - 60)),
        "not yet valid": sign(claims(nbf=now + 120)),
        "wrong issuer": sign(claims(iss="https://evil.test")),
        "wrong audience": sign(claims(aud="billing")),
        "no exp": sign({k: v for k, v in claims().items() if k != "exp"}),
        "alg none": forged({"alg": "none", "typ": "JWT"}, claims(), b""),
        "alg none no signature": forged({"alg": "none"}, claims(), b"")[:-1],
        "HS/RS key confusion": confusion,
        "bad signature": sign(claims(), OTHER_RSA_KEY),
        "tampered payload": sign(claims()).split(".")[0] + "." + b64(json.dumps(claims(sub="root")).encode()) + "."
        + sign(claims()).split(".")[2],
        "malformed": "not-a-token",
        "malformed parts": "a.b.c",
        "header not json": b64(b"{nope") + ".e30." + b64(b"x"),
        "unknown kid": sign(claims(), kid="k9"),
        "wrong key type": sign(claims(), EC_KEY, "ES256", "k1"),
        "algorithm not allowed": sign(claims(), RSA_KEY, "RS512"),
        "eddsa not allowed": sign(claims(), ED_KEY, "EdDSA", "k1"),
        "rs header, hs signature": forged(header_rs, claims(), b"x" * 32),
    }


def test_every_kind_of_bad_token_is_refused_alike(jwt_node):
    answers = {name: get(jwt_node, headers=bearer(token)) for name, token in bad_tokens().items()}
    expected = (401, 'Bearer realm="corp", error="invalid_token", error_description="the access token is not valid"')
    wrong = {name: (s, h.get("www-authenticate")) for name, (s, h, _) in answers.items()
             if (s, h.get("www-authenticate")) != expected}
    assert not wrong
    assert len({body for _, _, body in answers.values()}) == 1  # the body does not tell which part failed


EC384_KEY = ec.generate_private_key(ec.SECP384R1())
EACH_FAMILY = {  # algorithm → (signing key, the provider's key for it, a wrong key of the same kind)
    "HS256": (HS_SECRET, {"secret": HS_SECRET}, "another-hmac-secret-of-more-than-32-bytes"),
    "RS384": (RSA_KEY, {"pem": pem(RSA_KEY)}, OTHER_RSA_KEY),
    "PS256": (RSA_KEY, {"pem": pem(RSA_KEY)}, OTHER_RSA_KEY),
    "ES384": (EC384_KEY, {"pem": pem(EC384_KEY)}, ec.generate_private_key(ec.SECP384R1())),
    "EdDSA": (ED_KEY, {"pem": pem(ED_KEY)}, ed25519.Ed25519PrivateKey.generate()),
}


@pytest.mark.parametrize("alg", EACH_FAMILY)
def test_each_algorithm_family_verifies_with_its_own_key_only(echo, node, alg):
    signing_key, key, wrong_key = EACH_FAMILY[alg]
    port = free_port()
    provider = {"name": "corp", "jwt": {"algorithms": [alg], "issuer": ISSUER, "audiences": [AUDIENCE],
                                        "keys": [{"kid": "k1", **key}]}}
    node(auth_config(echo(), port, [provider], protected("corp")))
    assert get(port, headers=bearer(sign(claims(), signing_key, alg)))[0] == 200
    assert get(port, headers=bearer(sign(claims(), wrong_key, alg)))[0] == 401


def test_leeway_accepts_a_token_just_expired(jwt_node):
    assert get(jwt_node, headers=bearer(sign(claims(exp=int(time.time()) - 2))))[0] == 200


# --- JWKS ---------------------------------------------------------------------------------


class JwksServer:
    """Serves a JWKS the test changes, and counts how often it was fetched."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, kid: str, key, alg: str = "RS256") -> None:
        data = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        self.keys.append({**data, "kid": kid, "use": "sig", "alg": alg})

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def jwks():
    server = JwksServer()
    yield server
    server.stop()


def test_jwks_keys_are_fetched_and_a_new_kid_refetches_once(echo, node, jwks):
    jwks.publish("old", RSA_KEY)
    port = free_port()
    provider = {"name": "idp", "jwt": {"algorithms": ["RS256"], "jwks_uri": jwks.url, "jwks_min_interval": "60s"}}
    node(auth_config(echo(), port, [provider], protected("idp")))
    assert get(port, headers=bearer(sign(claims(), kid="old")))[0] == 200
    assert jwks.fetches == 1
    jwks.publish("new", OTHER_RSA_KEY)  # the issuer rotates: a token with the new kid arrives
    assert get(port, headers=bearer(sign(claims(), OTHER_RSA_KEY, kid="new")))[0] == 200
    assert jwks.fetches == 2
    # Unknown kids do not make the node fetch again within jwks_min_interval.
    for index in range(5):
        assert get(port, headers=bearer(sign(claims(), kid=f"unknown{index}")))[0] == 401
    assert jwks.fetches == 2
    assert get(port, headers=bearer(sign(claims(), OTHER_RSA_KEY, kid="new")))[0] == 200


def test_an_unreachable_jwks_refuses_tokens_and_the_node_keeps_serving(echo, node):
    port = free_port()
    provider = {"name": "idp", "jwt": {"algorithms": ["RS256"], "jwks_uri": f"http://127.0.0.1:{free_port()}/jwks"}}
    node(auth_config(echo(), port, [provider], protected("idp")
                     + [{"conditions": [], "actions": [{"respond": {"body": "x"}}]}]))
    assert get(port, headers=bearer(sign(claims())))[0] == 401


# --- API keys -----------------------------------------------------------------------------

KEY = "k-3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"


@pytest.fixture
def key_node(echo, node):
    port = free_port()
    providers = [{"name": "keys", "api_key": {}}, {"name": "query-keys", "api_key": {"key": "query:apikey"}}]
    rules = [{"conditions": [{"var": "path", "op": "prefix", "values": ["/q"]}],
              "actions": [{"authenticate": {"provider": "query-keys"}}]},
             {"conditions": [{"var": "path", "op": "prefix", "values": ["/h"]}],
              "actions": [{"authenticate": {"provider": "keys"}}]},
             {"actions": [{"set-request-header": {"name": "X-Consumer-Tier", "value": "none"}}]},
             {"conditions": [{"var": "consumer-tier", "op": "eq", "values": ["gold"]}],
              "actions": [{"set-request-header": {"name": "X-Consumer-Tier", "value": "gold"}}]},
             {"actions": [{"proxy": {"upstream": "up"}}]}]
    consumers = [{"name": "partner", "tier": "gold", "api_keys": [hash_api_key(KEY)]}]
    return port, node(auth_config(echo(), port, providers, rules, consumers))


def test_an_api_key_in_a_header_maps_to_its_consumer_and_is_stripped(key_node):
    port, started = key_node
    status, _, body = get(port, "/h", {"X-Api-Key": KEY})
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "X-Api-Key" not in seen
    assert seen["X-Consumer-Tier"] == ["gold"]
    assert started.access_log(wait_for=1)[-1]["consumer"] == "partner"


def test_an_api_key_in_the_query_is_stripped_from_it(key_node):
    port, _ = key_node
    status, _, body = get(port, f"/q/items?apikey={KEY}&page=2")
    assert status == 200
    assert json.loads(body)["path"] == "/q/items?page=2"


def test_a_wrong_or_missing_api_key_is_refused(key_node):
    port, started = key_node
    status, headers, _ = get(port, "/h", {"X-Api-Key": KEY + "x"})
    assert (status, headers["www-authenticate"]) == (401, 'ApiKey realm="keys", error="invalid_key"')
    status, headers, _ = get(port, "/h")
    assert (status, headers["www-authenticate"]) == (401, 'ApiKey realm="keys"')
    assert 'edgeplane_auth_refused_total{provider="keys"} 2' in started.metrics()


# --- Basic --------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_checks_the_password_hash_and_remembers_it(echo, node):
    port = free_port()
    consumers = [{"name": "ops", "tier": "staff",
                  "basic": {"username": "olga", "password": hash_password("s3cret pass", (1 << 12, 8, 1))}}]
    started = node(auth_config(echo(), port, [{"name": "staff", "basic": {"realm": "Staff area"}}], protected("staff"),
                               consumers))
    status, _, body = get(port, headers=basic("olga", "s3cret pass"))
    assert status == 200
    assert "Authorization" not in json.loads(body)["headers"]
    assert get(port, headers=basic("olga", "s3cret pass"))[0] == 200  # remembered
    challenge = 'Basic realm="Staff area", charset="UTF-8"'
    for headers in (basic("olga", "wrong"), basic("nobody", "s3cret pass"), {"Authorization": "Basic !!"}, {}):
        status, answer, _ = get(port, headers=headers)
        assert (status, answer["www-authenticate"]) == (401, challenge)
    assert 'edgeplane_auth_refused_total{provider="staff"} 4' in started.metrics()  # after a wait too


def test_edgeplane_hash_key_and_hash_password_make_credentials_the_node_accepts(echo, node):
    def cli(*args: str, given: str = "") -> str:
        return subprocess.run([sys.executable, "-m", "edgeplane.cli", *args], input=given, capture_output=True,
                              text=True, check=True, timeout=60).stdout
    made = dict(line.split(":", 1) for line in cli("hash-key").splitlines())
    key, digest = made["key"].strip(), made["hash"].strip()
    assert cli("hash-key", "--stdin", given=key + "\n").strip() == digest
    port = free_port()
    providers = [{"name": "keys", "api_key": {}}, {"name": "staff", "basic": {}}]
    rules = [{"conditions": [{"var": "path", "op": "eq", "values": ["/k"]}], "actions": [{"authenticate": {"provider": "keys"}}]},
             {"conditions": [{"var": "path", "op": "eq", "values": ["/b"]}], "actions": [{"authenticate": {"provider": "staff"}}]},
             {"actions": [{"proxy": {"upstream": "up"}}]}]
    consumers = [{"name": "partner", "api_keys": [digest]},
                 {"name": "ops", "basic": {"username": "olga", "password": cli("hash-password", given="pw 1\n").strip()}}]
    node(auth_config(echo(), port, providers, rules, consumers))
    assert [get(port, "/k", {"X-Api-Key": key})[0], get(port, "/k", {"X-Api-Key": key[:-1]})[0]] == [200, 401]
    assert [get(port, "/b", basic("olga", "pw 1"))[0], get(port, "/b", basic("olga", "pw 2"))[0]] == [200, 401]


# --- external authorization ---------------------------------------------------------------


class AuthzServer:
    """An authorization service: `Bearer good` is bob's, `Bearer slow` never answers in
    time, anything else is refused with a challenge. Counts the checks it made."""

    def __init__(self) -> None:
        self.checks: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.checks.append(dict(self.headers))
                token = self.headers.get("Authorization", "")
                if token == "Bearer slow":
                    time.sleep(1.5)
                if token == "Bearer good":
                    self.send_response(200)
                    self.send_header("X-User", "bob")
                    body = b""
                else:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="authz"')
                    body = b"go away\n"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:
                    pass  # the node gave up waiting: what the slow case is for

            def log_message(self, *args) -> None:
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def test_external_authorization_decides_adds_headers_and_caches(echo, node):
    authz = AuthzServer()
    try:
        port = free_port()
        provider = {"name": "authz", "ext_authz": {
            "upstream": "authz", "path": "/check", "upstream_headers": ["X-User"],
            "cache_key": ["header:Authorization"], "cache_ttl": "30s", "timeout": "300ms"}}
        config = auth_config(echo(), port, [provider], protected("authz"))
        config["upstreams"].append({"name": "authz", "servers": [{"address": "127.0.0.1", "port": authz.port}]})
        node(config)
        status, _, body = get(port, "/orders?id=7", {"Authorization": "Bearer good"})
        assert status == 200
        assert json.loads(body)["headers"]["X-User"] == ["bob"]
        check = authz.checks[0]
        assert (check["X-Forwarded-Method"], check["X-Forwarded-Uri"]) == ("GET", "/orders?id=7")
        assert get(port, "/", {"Authorization": "Bearer good"})[0] == 200
        assert len(authz.checks) == 1  # the second decision came from the cache
        status, headers, body = get(port, "/", {"Authorization": "Bearer bad"})
        assert (status, headers["www-authenticate"], body) == (401, 'Bearer realm="authz"', b"go away\n")
        status, _, _ = get(port, "/", {"Authorization": "Bearer slow"})
        assert status == 503  # on_error: deny
    finally:
        authz.stop()


def test_the_access_example_runs_as_its_comments_say(echo, node):
    import yaml

    from conftest import ROOT
    config = yaml.safe_load((ROOT / "examples" / "access.yaml").read_text())
    port = free_port()
    config["upstreams"][0]["servers"] = [echo().server()]
    config["applications"][0]["ports"] = [port]
    node(config)
    assert get(port, "/partner/orders", {"X-Api-Key": "demo-key-acme-please-replace-0123456789"})[0] == 200
    assert get(port, "/admin", basic("ops", "demo password"))[0] == 200
    token = jwt.encode({"sub": "ann", "plan": "paid", "exp": int(time.time()) + 600},
                       "demo-secret-please-replace-with-32-bytes-or-more", algorithm="HS256")
    status, _, body = get(port, "/api/items", bearer(token))
    assert (status, json.loads(body)["headers"]["X-User"]) == (200, ["ann"])
    assert get(port, "/api/items")[0] == 401

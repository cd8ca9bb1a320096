"""A small OpenID Connect provider for the tests, in a thread of the test process.

Discovery, a JWKS (RS256), an authorization endpoint that logs the user in at once and
sends the browser back with a code, a token endpoint (authorization_code with PKCE S256,
refresh_token) checking the client's secret, and an end-session endpoint. ID tokens live
`id_token_lifetime` seconds. It counts what it was asked, so tests can say what happened.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "shop"
CLIENT_SECRET = "shop-secret"


class OidcProvider:
    def __init__(self, user: str = "alice", id_token_lifetime: int = 300):
        self.user = user
        self.id_token_lifetime = id_token_lifetime
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, dict] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.calls = {"authorize": 0, "code": 0, "refresh": 0, "logout": 0, "refused": 0}
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.get(self)

            def do_POST(self) -> None:
                provider.post(self)

            def log_message(self, *args) -> None:
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()

    # --- answers ------------------------------------------------------------------------

    def send(self, handler, status: int, body: dict | None = None, location: str | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        if location:
            handler.send_header("Location", location)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def get(self, handler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self.send(handler, 200, {
                "issuer": self.issuer, "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                "end_session_endpoint": self.issuer + "/logout", "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"], "id_token_signing_alg_values_supported": ["RS256"]})
        elif url.path == "/jwks":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            self.send(handler, 200, {"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]})
        elif url.path == "/authorize":
            self.calls["authorize"] += 1
            assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
            assert query["code_challenge_method"] == "S256" and "openid" in query["scope"].split()
            code = secrets.token_urlsafe(16)
            self.codes[code] = query
            self.send(handler, 302, location=query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]}))
        elif url.path == "/logout":
            self.calls["logout"] += 1
            self.send(handler, 302, location=query["post_logout_redirect_uri"])
        else:
            self.send(handler, 404, {"error": "not_found"})

    def post(self, handler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            self.calls["refused"] += 1
            self.send(handler, 401, {"error": "invalid_client"})
            return
        if form.get("grant_type") == "authorization_code":
            asked = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if asked is None or asked["code_challenge"] != challenge or asked["redirect_uri"] != form.get("redirect_uri"):
                self.calls["refused"] += 1
                self.send(handler, 400, {"error": "invalid_grant"})
                return
            self.calls["code"] += 1
            self.send(handler, 200, self.tokens(asked["nonce"]))
        elif form.get("grant_type") == "refresh_token" and form.get("refresh_token") in self.refresh_tokens:
            self.calls["refresh"] += 1
            self.send(handler, 200, self.tokens(None))
        else:
            self.calls["refused"] += 1
            self.send(handler, 400, {"error": "invalid_grant"})

    def tokens(self, nonce: str | None) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": self.user, "email": f"{self.user}@example.com",
                  "iat": now, "exp": now + self.id_token_lifetime}
        if nonce is not None:
            claims["nonce"] = nonce
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = self.user
        return {"id_token": jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "idp-1"}),
                "access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
                "expires_in": self.id_token_lifetime, "refresh_token": refresh}

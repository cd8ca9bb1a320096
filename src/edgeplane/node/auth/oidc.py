"""OpenID Connect login for browser applications: authorization code with PKCE, a session
in a cookie, refresh, logout.

A request without a valid session is sent to the provider's authorization endpoint (GET;
other methods get 401), with `state`, `nonce` and a PKCE challenge kept in a short-lived
login cookie. The callback path trades the code for tokens, checks the ID token (the
provider's algorithms, its JWKS, issuer, audience = client_id, nonce, expiry) and sets the
session cookie: AES-256-GCM under a key derived from `session_secret`, so it is encrypted
and tamper-evident in one. When the ID token expires the refresh token renews it, until
`session_lifetime` ends the session. The logout path clears the cookie and goes to the
provider's end-session endpoint. Discovery and keys are fetched off the request path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...lang.compile import LocalResponse, Step, Suspend
from ...model.config import OidcProvider
from . import TEXT, ClaimHeaders, quoted, refuse, remove_cookie
from .http import FetchError, fetch
from .jwt import Jwks

FETCH_TIMEOUT = 5.0
RETRY_DISCOVERY = 5.0  # seconds between two tries while the provider cannot be reached
LOGIN_LIFETIME = 600  # seconds a login may take at the provider


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """Encrypts and authenticates cookie contents with one key."""

    def __init__(self, secret: str, purpose: bytes):
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"edgeplane oidc " + purpose).derive(secret.encode())
        self.aead = AESGCM(key)

    def seal(self, value: dict) -> str:
        nonce = os.urandom(12)
        return _b64(nonce + self.aead.encrypt(nonce, json.dumps(value, separators=(",", ":")).encode(), None))

    def open(self, text: str) -> dict | None:
        try:
            raw = _unb64(text)
            value = json.loads(self.aead.decrypt(raw[:12], raw[12:], None))
        except (InvalidTag, ValueError, TypeError):
            return None
        return value if isinstance(value, dict) else None


class Discovery:
    """An issuer's `.well-known/openid-configuration` and its JWKS, kept across versions."""

    def __init__(self, issuer: str):
        self.issuer = issuer.rstrip("/")
        self.document: dict | None = None
        self.fetched = 0.0
        self.jwks: Jwks | None = None
        self.pending: Any = None
        self.attempted = -RETRY_DISCOVERY

    def load(self) -> Any:
        if self.pending is None or self.pending.done():
            self.attempted = time.monotonic()
            self.pending = asyncio.ensure_future(self._load())
        return self.pending

    @property
    def failing(self) -> bool:
        """Nothing known, and the last try failed a moment ago: do not try again yet."""
        return (self.document is None and (self.pending is None or self.pending.done())
                and time.monotonic() - self.attempted < RETRY_DISCOVERY)

    async def _load(self) -> None:
        try:
            answer = await fetch(self.issuer + "/.well-known/openid-configuration", FETCH_TIMEOUT)
            document = json.loads(answer.body) if answer.status == 200 else None
        except (FetchError, ValueError):
            return
        if isinstance(document, dict) and document.get("issuer", "").rstrip("/") == self.issuer:
            self.document, self.fetched = document, time.monotonic()
            if self.jwks is None or self.jwks.url != document.get("jwks_uri"):
                self.jwks = Jwks(document["jwks_uri"])
            await self.jwks.refresh()


def compile_oidc(name: str, config: OidcProvider, state: Any) -> Step:
    discovery: Discovery = state.cache(("oidc", config.issuer), lambda: Discovery(config.issuer))
    sessions = Sealer(config.session_secret, b"session")
    logins = Sealer(config.session_secret, b"login")
    cookie, login_cookie = config.cookie, config.cookie + "_login"
    to_headers = ClaimHeaders(config.claims_to_headers) if config.claims_to_headers else None
    unauthorized = refuse(f"Bearer realm={quoted(name)}")
    failed_login = LocalResponse(401, [TEXT], b"401 Unauthorized: the login could not be completed\n")
    unavailable = LocalResponse(503, [(b"Retry-After", b"5"), TEXT],
                                b"503 Service Unavailable: the identity provider cannot be reached\n")

    def set_cookie(ops: list, cookie_name: str, value: str, request: Any, max_age: int) -> None:
        secure = "; Secure" if request.scheme == "https" else ""
        line = f"{cookie_name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ops.append(("add", b"set-cookie", b"Set-Cookie", line.encode("latin-1")))

    def origin(request: Any) -> str:
        host = (request.host_header or b"").decode("latin-1")
        return f"{request.scheme}://{host}"

    def accept(request: Any, session: dict) -> None:
        claims = session["claims"]
        consumer = str(claims.get(config.consumer_claim, "")) if config.consumer_claim else ""
        request.identify(name, consumer, request.tier, claims)
        if to_headers is not None:
            to_headers(request, claims)
        remove_cookie(request, cookie)

    def login(request: Any, ops: list) -> Any:
        if request.method not in ("GET", "HEAD"):
            return unauthorized
        verifier, state_value, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        target = request.target.decode("latin-1")
        set_cookie(ops, login_cookie, logins.seal({"state": state_value, "nonce": nonce, "verifier": verifier,
                                                   "return": target, "until": time.time() + LOGIN_LIFETIME}),
                   request, LOGIN_LIFETIME)
        query = urlencode({"response_type": "code", "client_id": config.client_id, "scope": " ".join(config.scopes),
                           "redirect_uri": origin(request) + config.redirect_path, "state": state_value,
                           "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"})
        location = discovery.document["authorization_endpoint"] + "?" + query
        return LocalResponse(302, [(b"Location", location.encode("latin-1")), (b"Cache-Control", b"no-store")])

    async def token_request(form: dict) -> dict | None:
        """The provider's tokens, or None when it refused them; FetchError when it cannot be
        reached or fails (5xx)."""
        form = {**form, "client_id": config.client_id}
        if config.client_secret is not None:
            form["client_secret"] = config.client_secret
        answer = await fetch(discovery.document["token_endpoint"], FETCH_TIMEOUT, "POST",
                             [("Content-Type", "application/x-www-form-urlencoded")], urlencode(form).encode())
        if answer.status >= 500:
            raise FetchError(f"token endpoint answered {answer.status}")
        try:
            tokens = json.loads(answer.body) if answer.status == 200 else None
        except ValueError:
            return None
        return tokens if isinstance(tokens, dict) and isinstance(tokens.get("id_token"), str) else None

    def id_claims(token: str, nonce: str | None) -> dict | None:
        """The ID token's claims if it is valid for this client (and this login's nonce)."""
        try:
            header = jwt.get_unverified_header(token)
            alg, kid = header.get("alg"), header.get("kid")
            if alg not in config.algorithms or discovery.jwks is None:
                return None
            for key in discovery.jwks.keys:
                if key.fits(alg) and (kid is None or key.kid == kid):
                    claims = jwt.decode(token, key.material, algorithms=[alg], audience=config.client_id,
                                        issuer=discovery.document["issuer"], options={"require": ["exp", "iat", "sub"]})
                    if nonce is not None and claims.get("nonce") != nonce:
                        return None
                    return claims
        except jwt.PyJWTError:
            return None
        return None

    def new_session(request: Any, ops: list, tokens: dict, claims: dict, started: float) -> dict:
        session = {"claims": claims, "refresh": tokens.get("refresh_token"), "id_token": tokens["id_token"],
                   "expires": claims["exp"], "started": started}
        set_cookie(ops, cookie, sessions.seal(session), request, int(started + config.session_lifetime - time.time()))
        return session

    async def callback(request: Any, ops: list) -> Any:
        pending = logins.open((request.cookie(login_cookie) or [""])[0])
        code, given_state = (request.arg("code") or [""])[0], (request.arg("state") or [""])[0]
        if (pending is None or not code or pending.get("until", 0) < time.time()
                or not secrets.compare_digest(str(pending.get("state", "")), given_state)):
            return failed_login
        try:
            tokens = await token_request({"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": origin(request) + config.redirect_path,
                                          "code_verifier": pending["verifier"]})
        except FetchError:
            return unavailable  # the login cookie stays: the same callback may be tried again
        claims = id_claims(tokens["id_token"], pending["nonce"]) if tokens is not None else None
        if claims is None:
            return failed_login
        new_session(request, ops, tokens, claims, time.time())
        set_cookie(ops, login_cookie, "", request, 0)
        back = str(pending.get("return") or "/")
        return LocalResponse(302, [(b"Location", (back if back.startswith("/") else "/").encode("latin-1"))])

    async def refresh(request: Any, ops: list, session: dict) -> Any:
        try:
            tokens = await token_request({"grant_type": "refresh_token", "refresh_token": session["refresh"]})
        except FetchError:
            return unavailable  # a login would need the provider too; the session stays
        claims = id_claims(tokens["id_token"], None) if tokens is not None else None
        if claims is None or claims.get("sub") != session["claims"].get("sub"):
            set_cookie(ops, cookie, "", request, 0)
            return login(request, ops)
        tokens.setdefault("refresh_token", session["refresh"])
        accept(request, new_session(request, ops, tokens, claims, session["started"]))
        return None

    def logout(request: Any, ops: list) -> Any:
        session = sessions.open((request.cookie(cookie) or [""])[0])
        set_cookie(ops, cookie, "", request, 0)
        after = origin(request) + config.post_logout_redirect
        end = discovery.document.get("end_session_endpoint")
        if end and session is not None:
            after = end + "?" + urlencode({"id_token_hint": session["id_token"], "post_logout_redirect_uri": after,
                                           "client_id": config.client_id})
        return LocalResponse(302, [(b"Location", after.encode("latin-1")), (b"Cache-Control", b"no-store")])

    async def discovered(request: Any, ops: list) -> Any:
        await discovery.load()
        if discovery.document is None:
            return unavailable
        return decide(request, ops)

    def decide(request: Any, ops: list) -> Any:
        path = request.path
        if path == config.redirect_path:
            return Suspend(callback(request, ops))
        if path == config.logout_path:
            return logout(request, ops)
        session = sessions.open((request.cookie(cookie) or [""])[0])
        now = time.time()
        if session is None or session.get("started", 0) + config.session_lifetime <= now:
            return login(request, ops)
        if session.get("expires", 0) <= now:
            return Suspend(refresh(request, ops, session)) if session.get("refresh") else login(request, ops)
        accept(request, session)
        return None

    def signed_in(request: Any) -> bool:
        """A request of a live session (not to the callback or logout paths): accepted
        without the provider, which it needs only to log in, refresh or log out."""
        if request.path in (config.redirect_path, config.logout_path):
            return False
        session = sessions.open((request.cookie(cookie) or [""])[0])
        now = time.time()
        if (session is None or session.get("started", 0) + config.session_lifetime <= now
                or session.get("expires", 0) <= now):
            return False
        accept(request, session)
        return True

    def authenticate_oidc(request: Any, ops: list) -> Any:
        if discovery.document is None or time.monotonic() - discovery.fetched > config.discovery_refresh:
            if discovery.document is None:
                if signed_in(request):
                    if not discovery.failing:
                        discovery.load()  # in the background, for the logins to come
                    return None
                return unavailable if discovery.failing else Suspend(discovered(request, ops))
            discovery.load()  # in the background: this request goes on with what is known
        return decide(request, ops)
    return authenticate_oidc

"""JWT bearer tokens (RFC 7519) verified with PyJWT against inline keys and a JWKS.

The algorithm is the provider's choice, never the token's alone: a token whose `alg` the
provider does not list is refused before any key is touched, and a key is tried only with
algorithms of its own type (an HMAC secret only for HS*, an RSA key only for RS*/PS*, an
EC key only for ES* of its curve, an OKP key only for EdDSA) — so `alg: none` and HS/RS key
confusion fail. The JWKS is fetched off the request path and refreshed in the background;
a request waits only for the first fetch, or for a refetch on an unknown `kid` (at most
one per `jwks_min_interval`). A token once verified is remembered by the exact bytes it
was sent as, with what accepting it does (consumer, tier, claim headers) prepared, until
it expires (or the JWKS changes): a client reusing its token costs a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ...lang.compile import Step, Suspend
from ...model.config import JwtKey, JwtProvider
from . import ClaimHeaders, Credential, quoted, refuse
from .http import FetchError, fetch

FETCH_TIMEOUT = 5.0
VERIFIED_TOKENS = 4096  # remembered per provider and worker
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
ALG_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
FAMILIES = {"HS": "oct", "RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True)
class Key:
    kid: str | None
    kind: str             # oct, RSA, EC, OKP
    curve: str | None     # for EC
    alg: str | None       # the key's own `alg`, when its JWK names one
    material: Any         # what PyJWT verifies with: bytes or a cryptography public key

    def fits(self, alg: str) -> bool:
        if FAMILIES[alg[:2]] != self.kind or (self.alg is not None and self.alg != alg):
            return False
        return self.kind != "EC" or ALG_CURVES[alg] == self.curve


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token, with what accepting it again needs made once."""

    claims: dict
    valid_from: float   # nbf and exp, leeway included
    valid_until: float
    version: int        # of the JWKS it was verified with (0: inline keys)
    consumer: str | None  # None: the request's own
    tier: str | None      # None: the consumer's
    lines: list | None    # claims_to_headers lines (ClaimHeaders.values)


def configured_key(key: JwtKey) -> Key:
    if key.secret is not None:
        return Key(key.kid, "oct", None, None, key.secret.encode())
    if key.jwk is not None:
        return jwk_key(key.jwk, key.kid)
    public = load_pem_public_key(key.pem.encode())
    return Key(key.kid, *_kind_of(public), None, public)


def _kind_of(public: Any) -> tuple[str, str | None]:
    if isinstance(public, rsa.RSAPublicKey):
        return "RSA", None
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "EC", CURVES.get(public.curve.name)
    if isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP", None
    raise ValueError(f"unsupported public key type {type(public).__name__}")


def jwk_key(data: dict, kid: str | None = None) -> Key:
    parsed = jwt.PyJWK(data)
    material = parsed.key
    if data.get("kty") == "oct":
        return Key(kid or data.get("kid"), "oct", None, data.get("alg"), material)
    public = material.public_key() if hasattr(material, "public_key") else material  # a private JWK: its public half
    return Key(kid or data.get("kid"), *_kind_of(public), data.get("alg"), public)


def jwks_keys(document: bytes) -> list[Key]:
    """The signature keys of a JWKS document; keys it cannot use are skipped."""
    keys = []
    for data in json.loads(document).get("keys", []):
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            keys.append(jwk_key(data))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
    return keys


class Jwks:
    """A JWKS URL's keys in one worker, kept across config versions."""

    def __init__(self, url: str):
        self.url = url
        self.keys: list[Key] = []
        self.version = 0
        self.fetched = 0.0       # monotonic time of the last successful fetch; 0: never
        self.refetched = -1e9    # of the last fetch an unknown kid asked for
        self.pending: asyncio.Future | None = None
        self.last_error = ""

    def refresh(self) -> asyncio.Future:
        """The fetch in progress, or a new one; every waiter shares it."""
        if self.pending is None or self.pending.done():
            self.pending = asyncio.ensure_future(self._load())
        return self.pending

    def may_refetch(self, interval: float) -> bool:
        """Whether a request with an unknown kid may wait for a fetch: one is under way (or
        none was ever made), or the last one an unknown kid asked for is `interval` old."""
        if (self.pending is not None and not self.pending.done()) or not self.fetched:
            return True
        now = time.monotonic()
        if now - self.refetched < interval:
            return False
        self.refetched = now
        return True

    async def _load(self) -> None:
        try:
            answer = await fetch(self.url, FETCH_TIMEOUT)
            if answer.status != 200:
                raise FetchError(f"GET {self.url}: status {answer.status}")
            keys = jwks_keys(answer.body)
        except (FetchError, ValueError) as error:
            self.last_error = str(error)
            return
        self.keys, self.version, self.fetched, self.last_error = keys, self.version + 1, time.monotonic(), ""


def compile_jwt(name: str, config: JwtProvider, state: Any) -> Step:
    inline = [configured_key(k) for k in config.keys]
    jwks = state.cache(("jwks", config.jwks_uri), lambda: Jwks(config.jwks_uri)) if config.jwks_uri else None
    credential = Credential(config.token)
    algorithms = frozenset(config.algorithms)
    missing = refuse(f"Bearer realm={quoted(name)}")
    invalid = refuse(f'Bearer realm={quoted(name)}, error="invalid_token", '
                     'error_description="the access token is not valid"')
    audience = config.audiences or None
    leeway = config.leeway
    options = {"require": list(config.require), "verify_aud": audience is not None}
    verified: dict[bytes | str, Verified] = {}  # by the credential exactly as sent (a header's bytes)
    to_headers = ClaimHeaders(config.claims_to_headers) if config.claims_to_headers else None
    consumer_claim, tier_claim = config.consumer_claim, config.tier_claim
    # A header credential is taken out as it is read: a request it does not authenticate is
    # answered here and goes nowhere else.
    taken = config.strip and credential.kind == "header"
    strip_later = config.strip and not taken
    tiers = {c.name: c.tier for c in state.config.consumers} if state.config is not None else {}

    def accept(request: Any, entry: Verified) -> None:
        consumer, tier = entry.consumer, entry.tier
        if consumer is None:
            consumer = request.consumer
        request.identify(name, consumer, tier if tier is not None else tiers.get(consumer, request.tier), entry.claims)
        if entry.lines is not None:
            ClaimHeaders.set(request, entry.lines)
        if strip_later:
            credential.strip(request)

    def candidates(alg: str, kid: str | None) -> list[Key]:
        keys = inline + jwks.keys if jwks is not None else inline
        return [k for k in keys if k.fits(alg) and (kid is None or k.kid == kid)]

    def check(request: Any, sent: bytes | str, token: str, may_fetch: bool) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return invalid
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in algorithms or not (kid is None or isinstance(kid, str)):
            return invalid
        keys = candidates(alg, kid)
        if not keys:
            if may_fetch and jwks is not None and jwks.may_refetch(config.jwks_min_interval):
                return Suspend(after_fetch(request, sent, token))
            return invalid
        for key in keys:
            try:
                claims = jwt.decode(token, key.material, algorithms=[alg], audience=audience, issuer=config.issuer,
                                    leeway=leeway, options=options)
            except jwt.InvalidSignatureError:
                continue  # another key with no kid to tell them apart may fit
            except jwt.PyJWTError:
                return invalid
            if not isinstance(claims, dict):
                return invalid
            accept(request, remember(sent, claims))
            return None
        return invalid

    async def after_fetch(request: Any, sent: bytes | str, token: str) -> Any:
        await jwks.refresh()
        return check(request, sent, token, False)

    def remember(sent: bytes | str, claims: dict) -> Verified:
        if len(verified) >= VERIFIED_TOKENS:
            del verified[next(iter(verified))]
        entry = verified[sent] = Verified(
            claims, _number(claims.get("nbf"), -float("inf")) - leeway,
            _number(claims.get("exp"), float("inf")) + leeway, jwks.version if jwks is not None else 0,
            _text(claims.get(consumer_claim)) if consumer_claim is not None else None,
            _text(claims.get(tier_claim)) if tier_claim is not None else None,
            to_headers.values(claims) if to_headers is not None else None)
        return entry

    def authenticate_jwt(request: Any, _ops: list) -> Any:
        sent = credential.sent(request, taken)
        if sent is None:
            return missing
        if jwks is not None and jwks.fetched and time.monotonic() - jwks.fetched > config.jwks_refresh:
            jwks.refresh()  # in the background: this request goes on with the keys it has
        entry = verified.get(sent)
        if entry is not None:
            if entry.valid_from <= time.time() < entry.valid_until and (jwks is None or entry.version == jwks.version):
                accept(request, entry)
                return None
            del verified[sent]
        token = credential.token(sent)
        if token is None:
            return missing
        return check(request, sent, token, True)
    return authenticate_jwt


def _text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

"""API keys and Basic authentication against the config's consumers, and their hashes.

API keys are stored as SHA-256 digests: a key is 256 random bits (`new_api_key`), so no
guess can reach one from its digest however fast the hash is, and a fast hash lets a
request find its consumer with one dictionary lookup. Passwords are people's, so they
are stored with scrypt; a verified password is remembered (keyed by an HMAC with a
per-worker secret, never the password itself) so the hot path is not a scrypt per
request, and an unknown one is checked in a thread while the rule chain waits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from typing import Any

from ...lang.compile import Step, Suspend
from ...model.config import ApiKeyProvider, BasicProvider, Consumer
from . import Credential, quoted, refuse

SCRYPT = (1 << 15, 8, 1)  # N, r, p: about 32 MiB and some 50 ms per check
REMEMBERED = 4096         # verified passwords remembered per provider and worker


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def hash_password(password: str, cost: tuple[int, int, int] = SCRYPT) -> str:
    n, r, p = cost
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            maxmem=256 * 1024 * 1024, dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def _accept(request: Any, provider: str, consumer: Consumer, credential: Credential | None) -> None:
    request.identify(provider, consumer.name, consumer.tier)
    if credential is not None:
        credential.strip(request)


def compile_api_key(name: str, config: ApiKeyProvider, consumers: list[Consumer]) -> Step:
    owners = {digest: consumer for consumer in consumers for digest in consumer.api_keys}
    credential = Credential(config.key)
    strip = credential if config.strip else None
    missing = refuse(f"ApiKey realm={quoted(name)}")
    invalid = refuse(f'ApiKey realm={quoted(name)}, error="invalid_key"')

    def authenticate_api_key(request: Any, _ops: list) -> Any:
        key = credential.read(request)
        if key is None:
            return missing
        consumer = owners.get("sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest())
        if consumer is None:
            return invalid
        _accept(request, name, consumer, strip)
        return None
    return authenticate_api_key


def compile_basic(name: str, config: BasicProvider, consumers: list[Consumer], state: Any) -> Step:
    users = {c.basic.username: c for c in consumers if c.basic is not None}
    credential = Credential("header:Authorization", scheme="basic")
    strip = credential if config.strip else None
    challenge = refuse(f'Basic realm={quoted(config.realm)}, charset="UTF-8"')
    # Remembered across config versions, but only for the same stored hash (a changed password forgets).
    remembered: dict[bytes, float] = state.cache(("basic", name), dict)
    secret = state.cache(("basic-secret",), lambda: os.urandom(32))
    lifetime = config.cache
    decoy = Consumer(name="decoy", basic={"username": "decoy", "password": state.cache(
        ("basic-decoy",), lambda: hash_password(secrets.token_hex(16)))})

    def fingerprint(user: str, password: str, stored: str) -> bytes:
        return hmac.new(secret, f"{user}\0{password}\0{stored}".encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    async def verify(request: Any, consumer: Consumer, password: str, mark: bytes) -> Any:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, check_password, password, consumer.basic.password) or not mark:
            return challenge
        if lifetime:
            if len(remembered) >= REMEMBERED:
                del remembered[next(iter(remembered))]
            remembered[mark] = time.monotonic() + lifetime
        _accept(request, name, consumer, strip)
        return None

    def authenticate_basic(request: Any, _ops: list) -> Any:
        encoded = credential.read(request)
        if encoded is None:
            return challenge
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return challenge
        consumer = users.get(user)
        if not sep:
            return challenge
        if consumer is None:  # as slow as a wrong password, so the time does not tell which it was
            return Suspend(verify(request, decoy, password, b""))
        mark = fingerprint(user, password, consumer.basic.password)
        until = remembered.get(mark)
        if until is not None and time.monotonic() < until:
            _accept(request, name, consumer, strip)
            return None
        return Suspend(verify(request, consumer, password, mark))
    return authenticate_basic

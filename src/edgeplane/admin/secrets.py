"""Secrets at rest: the fields the model marks secret are sealed with AES-GCM in the store.

A sealed value is `{"$sealed": "<base64 nonce+ciphertext>"}` in place of the plain one; the
key (32 random bytes) comes from `$EDGEPLANE_SECRET_KEY` (base64) or from a file in the
data directory created mode 0600 on first start. Objects are sealed on the way into the
store and opened on the way out; API output shows secrets redacted. Nothing else here
knows about objects beyond the paths `kinds.Kind.secret_paths` gives.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED = "$sealed"
REDACTED = "(secret)"
KEY_ENV = "EDGEPLANE_SECRET_KEY"


class SecretBox:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError(f"the secret key must be 32 bytes (base64 of 32 bytes), got {len(key)}")
        self.aead = AESGCM(key)

    @classmethod
    def from_environment(cls, key_file: Path) -> SecretBox:
        """The key from $EDGEPLANE_SECRET_KEY, else from `key_file`, created (0600) when missing."""
        if os.environ.get(KEY_ENV):
            return cls(base64.b64decode(os.environ[KEY_ENV]))
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(base64.b64encode(AESGCM.generate_key(256)) + b"\n")
        return cls(base64.b64decode(key_file.read_bytes().strip()))

    def seal_value(self, value: str) -> dict:
        nonce = os.urandom(12)
        return {SEALED: base64.b64encode(nonce + self.aead.encrypt(nonce, value.encode(), None)).decode()}

    def open_value(self, value: Any) -> Any:
        if not (isinstance(value, dict) and SEALED in value):
            return value
        raw = base64.b64decode(value[SEALED])
        return self.aead.decrypt(raw[:12], raw[12:], None).decode()

    def seal(self, data: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
        return _map_paths(data, paths, lambda v: self.seal_value(v) if isinstance(v, str) else v)

    def open(self, data: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
        return _map_paths(data, paths, self.open_value)


def redact(data: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
    return _map_paths(data, paths, lambda v: REDACTED if v is not None else None)


def keep_redacted(data: Any, before: Any, paths: tuple[tuple[str, ...], ...]) -> Any:
    """`data` with each secret sent back as the redacted placeholder replaced by the value
    `before` holds at the same path (a list's items by position): what GET shows can be
    edited and sent back without knowing the secrets in it."""
    for path in paths:
        data = _keep_path(data, before, path)
    return data


def _keep_path(data: Any, before: Any, path: tuple[str, ...]) -> Any:
    if not path:
        return before if data == REDACTED else data
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(data, list):
            return data
        old = before if isinstance(before, list) else []
        return [_keep_path(item, old[index] if index < len(old) else None, rest) for index, item in enumerate(data)]
    if not isinstance(data, dict) or head not in data:
        return data
    return {**data, head: _keep_path(data[head], before.get(head) if isinstance(before, dict) else None, rest)}


def _map_paths(data: Any, paths: tuple[tuple[str, ...], ...], change: Callable[[Any], Any]) -> Any:
    """A copy of `data` with `change` applied at each path present in it."""
    if not paths:
        return data
    for path in paths:
        data = _map_path(data, path, change)
    return data


def _map_path(data: Any, path: tuple[str, ...], change: Callable[[Any], Any]) -> Any:
    if not path:
        return change(data)
    head, rest = path[0], path[1:]
    if head == "*":
        return [_map_path(item, rest, change) for item in data] if isinstance(data, list) else data
    if not isinstance(data, dict) or data.get(head) is None:
        return data
    return {**data, head: _map_path(data[head], rest, change)}

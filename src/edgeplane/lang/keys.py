"""Request keys for stickiness and hashing, and a hash that is the same everywhere.

Used by consistent-hash balancing and sticky splits alike, so one user lands on one
server or one upstream whichever worker or node sees the request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any


def stable_hash(data: bytes) -> int:
    """A 64-bit hash equal in every process and node (Python's own hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_getter(spec: str) -> Callable[[Any], bytes]:
    """`client-ip`, `uri`, `path`, `header:NAME` or `cookie:NAME` → a function of a request."""
    kind, _, name = spec.partition(":")
    if kind == "client-ip":
        return lambda request: request.client_ip.encode()
    if kind == "uri":
        return lambda request: request.target
    if kind == "path":
        return lambda request: request.path.encode("latin-1", "replace")
    if kind == "header":
        lname = name.lower()
        return lambda request: ",".join(request.header(lname)).encode("latin-1")
    if kind == "cookie":
        return lambda request: ",".join(request.cookie(name)).encode("latin-1")
    raise ValueError(f"unknown key {spec!r}; expected client-ip, uri, path, header:NAME or cookie:NAME")

"""ACME (RFC 8555): certificates issued and renewed for the node, proved over HTTP-01.

The `AcmeManager` runs once per node (in the master; nothing in it depends on being
there, so the control plane can host it later): it keeps an account key and the issued
certificates in the node's data directory (0600), renews them `renew_before` their
expiry, and tells the workers when a certificate changed. Workers answer
`/.well-known/acme-challenge/TOKEN` on plain ports, before any rule, from the files the
manager writes while an order is pending.
"""

from __future__ import annotations

import re
from pathlib import Path

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def challenge_directory(data_dir: Path) -> Path:
    return data_dir / "acme" / "challenges"


def challenge_answer(directory: Path, path: str) -> bytes | None:
    """The key authorization for an HTTP-01 request path, if an order is waiting for it."""
    token = path[len(CHALLENGE_PREFIX):]
    if not _TOKEN.match(token):
        return None
    try:
        return (directory / token).read_bytes()
    except OSError:
        return None

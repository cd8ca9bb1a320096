"""Session-ticket keys shared by every worker of a node, rotated on a schedule.

One writer (the node master today; the control plane could hold the same `TicketKeyFile`)
keeps a small 0600 file: the key in force, the next one (published a whole period before
it takes over, so every worker knows it in time), and the previous ones while they are
still accepted. Workers read the file when it changes and answer OpenSSL's ticket-key
callback from memory. Keys are random, never derived, so a key gone from the file is gone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..model.config import SessionTickets
from .openssl import NAME_SIZE

KEY_FILE = "ticket-keys.json"
PUBLISH_AHEAD = 5.0  # seconds a key is in the file before it takes over: every worker has read it


class TicketKeyFile:
    """The writer's side: `refresh(now)` adds and drops keys, rewriting the file when needed."""

    def __init__(self, path: Path, settings: SessionTickets):
        self.path = path
        self.settings = settings
        self.keys: list[dict] = []

    def refresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        rotate, keep = self.settings.rotate, self.settings.rotate + self.settings.overlap
        keys = [k for k in self.keys if now < k["start"] + keep]
        changed = len(keys) != len(self.keys)
        if not keys or keys[-1]["start"] + rotate <= now:  # nothing in force: start a fresh line of keys
            keys.append(self.new_key(now))
            changed = True
        while keys[-1]["start"] <= now + PUBLISH_AHEAD:  # the next key is known before it takes over
            keys.append(self.new_key(keys[-1]["start"] + rotate))
            changed = True
        self.keys = keys
        if changed:
            self.write()
        return changed

    def new_key(self, start: float) -> dict:
        return {"name": os.urandom(NAME_SIZE).hex(), "hmac": os.urandom(32).hex(), "aes": os.urandom(32).hex(),
                "start": start, "until": start + self.settings.rotate + self.settings.overlap}

    def write(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"keys": self.keys}, handle)
        os.replace(temporary, self.path)


class TicketKeyRing:
    """A worker's side: the keys of the file, and the lookup OpenSSL's callback asks."""

    def __init__(self, path: Path | None):
        self.path = path
        self.signature: tuple = ()
        self.keys: list[tuple[bytes, bytes, bytes, float, float]] = []  # name, hmac, aes, start, until

    def reload_if_changed(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except OSError:
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self.signature:
            return
        try:
            keys = json.loads(self.path.read_text())["keys"]
        except (OSError, ValueError, KeyError):
            return  # being replaced: read it next time
        self.signature = signature
        self.keys = [(bytes.fromhex(k["name"]), bytes.fromhex(k["hmac"]), bytes.fromhex(k["aes"]),
                      float(k["start"]), float(k["until"])) for k in keys]

    def lookup(self, name: bytes | None) -> tuple[bytes, bytes, bytes, bool] | None:
        now = time.time()
        current = None
        for key in self.keys:  # oldest first: the last started one is in force
            if key[3] <= now < key[4]:
                current = key
        if name is None:
            return current[:3] + (True,) if current is not None else None
        for key in self.keys:
            if key[0] == name and now < key[4]:
                return key[:3] + (key is current,)
        return None

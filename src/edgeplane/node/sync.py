"""The node's sync client, run by the master: join once, then long-poll the admin.

Each poll says which release the local store has and which one the workers serve (the
node's report: its last error, workers, metrics), and gets back the delta to the
partition's latest release (or everything, when the admin cannot make a delta). A release
is written to the local store in one transaction, then the workers are told to reload;
the next poll reports what they run. When the admin cannot be reached the node keeps
serving what it has and tries again with a growing pause. Nothing here serves traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from ..collector import collector_paused
from .store import LocalStore
from .worker import log

POLL_WAIT = 25.0  # seconds the admin may hold a poll open
RETRY_MAX = 10.0  # the longest pause between attempts while the admin is unreachable


def default_name(data_dir: Path) -> str:
    """The host name and a short digest of the data directory: two nodes of one host differ."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]
    return f"{socket.gethostname()}-{digest}"


class Identity:
    """What joining gave the node: its id, name, cluster and credential (data_dir/node.json)."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "node.json"

    def load(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def save(self, identity: dict) -> None:
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(identity, handle)
        os.replace(temporary, self.path)


class SyncClient:
    def __init__(self, admin: str, join_token: str | None, data_dir: Path, name: str | None,
                 store: LocalStore, apply: Callable[[int], Awaitable[int]], report: Callable[[], Awaitable[dict]]):
        self.admin = admin.rstrip("/")
        self.join_token = join_token
        self.data_dir = data_dir
        self.name = name or default_name(data_dir)
        self.store = store
        self.apply = apply  # tell the workers a release is stored; returns the release they run
        self.report = report
        self.identity = Identity(data_dir)
        self.running = store.version
        self.state = "joining"
        self.last_contact: float | None = None
        self.last_error = ""
        self.stored = asyncio.Event()  # set once the local store holds a release
        if store.version:
            self.stored.set()
        self.current: asyncio.Future | None = None
        self.kicked = False

    def status(self) -> dict:
        return {"admin": self.admin, "state": self.state, "stored": self.store.version, "running": self.running,
                "last_contact": self.last_contact, "last_error": self.last_error}

    async def join(self, client: httpx.AsyncClient) -> dict:
        identity = self.identity.load()
        if identity is not None:
            return identity
        if not self.join_token:
            raise SystemExit(f"edgeplane node: {self.identity.path} does not exist: join with --token JOIN_TOKEN")
        response = await client.post(f"{self.admin}/api/v1/nodes/join", json={"token": self.join_token,
                                                                               "name": self.name})
        if response.status_code != 201:
            raise SystemExit(f"edgeplane node: the admin refused to join this node: {_message(response)}")
        identity = response.json()
        self.identity.save(identity)
        log("node_joined", name=identity["name"], cluster=identity["cluster"], state=identity["state"])
        return identity

    async def run(self) -> None:
        pause = 0.5
        while True:
            # A fresh client after any failure or kick: a connection pool that saw a refused
            # or cancelled connection can wedge the next request.
            async with httpx.AsyncClient(timeout=httpx.Timeout(POLL_WAIT + 10, connect=5, pool=5)) as client:
                try:
                    identity = await self.join(client)
                    while True:
                        self.current = asyncio.ensure_future(self.poll(client, identity["secret"]))
                        await self.current
                        pause = 0.5
                except asyncio.CancelledError:
                    if not self.kicked:
                        raise
                    self.kicked = False
                    continue
                except (httpx.HTTPError, OSError, ValueError) as error:
                    text = f"{type(error).__name__}: {error}"
                    if text != self.last_error:
                        log("admin_unreachable", admin=self.admin, error=text, serving=self.running or None)
                    self.last_error = text
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def kick(self, running: int) -> None:
        """The workers now run `running`: report it at once instead of after the current poll."""
        self.running = running
        if self.current is not None and not self.current.done():
            self.kicked = True
            self.current.cancel()

    async def poll(self, client: httpx.AsyncClient, secret: str) -> None:
        body = {"have": self.store.version, "running": self.running, "report": await self.report(),
                "wait": POLL_WAIT}
        response = await client.post(f"{self.admin}/api/v1/sync", json=body,
                                     headers={"Authorization": f"Bearer {secret}"})
        if response.status_code == 401:
            raise ValueError(f"the admin does not know this node any more ({_message(response)}); "
                             f"remove {self.identity.path} and join again")
        response.raise_for_status()
        with collector_paused():  # a full release is millions of objects, all dropped once stored
            answer = orjson.loads(response.content)
        self.last_contact = time.time()
        self.last_error = ""
        if answer["state"] != self.state:
            log("node_state", state=answer["state"], partition=answer.get("partition"))
            self.state = answer["state"]
        if answer["version"] == self.store.version or answer["state"] != "approved":
            return
        started = time.monotonic()
        with collector_paused():
            await asyncio.to_thread(self.store.write, answer)
        self.stored.set()
        self.running = await self.apply(answer["version"])
        log("release_applied", version=answer["version"], full=answer["full"], objects=len(answer["objects"]),
            deleted=len(answer["deleted"]), running=self.running, seconds=round(time.monotonic() - started, 3))


def _message(response: httpx.Response) -> str:
    try:
        return response.json().get("message", response.text)
    except ValueError:
        return response.text[:200]

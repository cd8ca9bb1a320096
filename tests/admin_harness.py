"""Harness of the control-plane tests: stores on both backends, admins in-process and as
real processes, nodes synced with them.

Every admin test runs on SQLite and on PostgreSQL (127.0.0.1:5432, database `test`, user
`postgres`), each PostgreSQL test in a schema of its own so that xdist workers never meet.
Without PostgreSQL those tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ENV, free_port, wait_port

PG_URL = os.environ.get("EDGEPLANE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]
TOKEN = "ep_test-admin-token"


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg
        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as error:  # any failure to connect is the reason to report
        return f"PostgreSQL at {PG_URL} is not reachable: {error}"


class PgSchema:
    """A schema of its own in the test database; the store URL selects it."""

    def __init__(self) -> None:
        import psycopg
        self.name = f"t_{secrets.token_hex(6)}"
        self.base = PG_URL.replace("+psycopg", "")
        with psycopg.connect(self.base, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {self.name}")
        self.url = f"{PG_URL}?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        import psycopg
        with psycopg.connect(self.base, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")


def store_for(backend: str, directory: Path) -> tuple[str | None, Any]:
    """(the --store value, a cleanup) for a backend."""
    if backend == "sqlite":
        return None, lambda: None
    reason = postgres_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
    schema = PgSchema()
    return schema.url, schema.drop


def in_process(store: str | None, data_dir: Path):
    """An admin app in this process and a TestClient on it, authenticated as the bootstrap admin."""
    from fastapi.testclient import TestClient

    from edgeplane.admin.api import create_app
    from edgeplane.admin.service import BOOTSTRAP_TOKEN_ENV, Admin
    os.environ[BOOTSTRAP_TOKEN_ENV] = TOKEN
    try:
        admin = Admin(store, data_dir)
        admin.start(announce=lambda _text: None)
    finally:
        del os.environ[BOOTSTRAP_TOKEN_ENV]
    client = TestClient(create_app(admin), headers={"Authorization": f"Bearer {TOKEN}"})
    client.__enter__()
    return admin, client


def sdk_on(test_client: Any, token: str | None = TOKEN):
    """An `edgeplane.sdk.Client` whose HTTP goes to the in-process app of `test_client`."""
    from fastapi.testclient import TestClient

    from edgeplane.sdk import Client
    sdk = Client("http://testserver", token)
    sdk.http.close()
    sdk.http = TestClient(test_client.app, headers={"Authorization": f"Bearer {token}"} if token else {})
    return sdk


@pytest.fixture(params=BACKENDS)
def admin(request, tmp_path):
    """(Admin, TestClient as the bootstrap admin) on each backend."""
    store, cleanup = store_for(request.param, tmp_path)
    service, client = in_process(store, tmp_path / "admin")
    yield service, client
    client.__exit__(None, None, None)
    service.close()
    cleanup()


class AdminProcess:
    """`edgeplane admin` as a real process."""

    def __init__(self, data_dir: Path, store: str | None, port: int | None = None, env: dict | None = None,
                 bootstrap: bool = True):
        self.data_dir = data_dir
        self.store = store
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**ENV, **({"EDGEPLANE_BOOTSTRAP_TOKEN": TOKEN} if bootstrap else {}), **(env or {})}
        self.start()

    def start(self) -> None:
        args = [sys.executable, "-m", "edgeplane", "admin", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}"] + (["--store", self.store] if self.store else [])
        self.log = open(self.data_dir.parent / f"admin-{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60, proc=self.proc)

    def sdk(self, token: str = TOKEN):
        from edgeplane.sdk import Client
        return Client(self.url, token)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class SyncedNode:
    """`edgeplane node --admin URL` as a real process with its own data directory."""

    def __init__(self, data_dir: Path, admin_url: str, token: str | None, name: str, workers: int = 1):
        self.data_dir = data_dir
        self.admin_url = admin_url
        self.token = token
        self.name = name
        self.workers = workers
        self.status_port = free_port()
        self.start()

    def start(self) -> None:
        args = [sys.executable, "-m", "edgeplane", "node", "--admin", self.admin_url, "--data-dir",
                str(self.data_dir), "--name", self.name, "--bind", "127.0.0.1", "--status",
                f"127.0.0.1:{self.status_port}", "--workers", str(self.workers), "--access-log", "off"]
        if self.token:
            args += ["--token", self.token]
        self.log = open(self.data_dir.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(args, env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.status_port, timeout=30, proc=self.proc)

    def status(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=5)
        try:
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def serving(self) -> str | None:
        """The release the node's workers serve (None before the first)."""
        workers = self.status()["workers"]
        versions = {w["version"] for w in workers}
        return versions.pop() if len(versions) == 1 and workers else None

    def wait_serving(self, version: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.serving() == str(version), timeout, f"node {self.name} serving release {version}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return (self.data_dir.parent / f"{self.name}.log").read_text()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError, http.client.HTTPException) as error:
            last_error = error
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout}s (last error: {last_error})")


def get(port: int, path: str = "/", host: str = "example.test") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()

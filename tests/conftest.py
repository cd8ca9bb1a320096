"""Shared harness: real `edgeplane node` processes, real upstream processes, raw sockets.

Every end-to-end test starts what it needs on 127.0.0.1 with ports picked free, and stops
it afterwards; nothing here mocks the network.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


class Echo:
    """The project's echo backend in its own process."""

    def __init__(self, name: str = "echo"):
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeplane", "echo", "--listen", f"127.0.0.1:{self.port}", "--name", name],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def server(self, **extra: Any) -> dict:
        return {"address": "127.0.0.1", "port": self.port, **extra}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Node:
    """An `edgeplane node` process on a config file the test controls."""

    def __init__(self, tmp: Path, config: dict | str, workers: int = 1, access_log: bool = True):
        self.tmp = tmp
        self.config_path = tmp / "edgeplane.yaml"
        self.status_port = free_port()
        self.access_log_path = tmp / "access.log"
        self.stderr_path = tmp / "node.stderr"
        self.workers = workers
        self.write_config(config)
        args = [sys.executable, "-m", "edgeplane", "node", "--config", str(self.config_path),
                "--bind", "127.0.0.1", "--status", f"127.0.0.1:{self.status_port}",
                "--workers", str(workers), "--access-log", str(self.access_log_path) if access_log else "off",
                "--data-dir", str(tmp / "data")]
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_port(self.status_port, timeout=30, proc=self.proc)
        self.wait_ready()

    # --- config ------------------------------------------------------------------------

    def write_config(self, config: dict | str) -> None:
        """Replace the config file atomically (write, then rename), as operators should."""
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        temporary = self.config_path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.config_path)

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every worker answers: each opened its listeners before its control socket."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.status()["workers"]) >= self.workers:
                    return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise TimeoutError("node did not become ready")

    def versions(self) -> set[str]:
        return {w["version"] for w in self.status()["workers"]}

    def wait_version_change(self, old: set[str], timeout: float = 10.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.versions()
            if current.isdisjoint(old) and len(current) == 1:
                return current
            time.sleep(0.05)
        raise TimeoutError(f"config version stayed {old}")

    # --- observing ---------------------------------------------------------------------

    def status(self) -> dict:
        return json.loads(self.get_status_path("/status"))

    def metrics(self) -> str:
        return self.get_status_path("/metrics")

    def get_status_path(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=5)
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        conn.close()
        return body

    def access_log(self, wait_for: int = 0, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log_path.read_text().splitlines() if self.access_log_path.exists() else []
            if len(lines) >= wait_for or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    # --- life cycle --------------------------------------------------------------------

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


def app_config(upstream_servers: list[dict], port: int, rules: list[dict] | None = None,
               upstream: dict | None = None, settings: dict | None = None,
               domains: list[str] | None = None) -> dict:
    """A one-application config proxying everything on `port` to one upstream named `up`."""
    config: dict = {
        "upstreams": [{"name": "up", "servers": upstream_servers, **(upstream or {})}],
        "applications": [{
            "name": "app", "domains": domains or ["*"], "ports": [port],
            "rules": rules if rules is not None else [{"actions": [{"proxy": {"upstream": "up"}}]}],
        }],
    }
    if settings:
        config["settings"] = settings
    return config


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes; return everything read until the peer closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


@pytest.fixture
def echo():
    servers: list[Echo] = []

    def start(name: str = "echo") -> Echo:
        server = Echo(name)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def node(tmp_path):
    nodes: list[Node] = []

    def start(config: dict | str, workers: int = 1, access_log: bool = True) -> Node:
        directory = tmp_path / f"node{len(nodes)}"
        directory.mkdir()
        started = Node(directory, config, workers, access_log)
        nodes.append(started)
        return started
    yield start
    for started in nodes:
        started.stop()


@pytest.fixture
def backend():
    """Starts `backends.Backend` processes: upstreams that count connections, drop them, stream."""
    from backends import Backend  # imported here so that what the upstream tests added stays at the end

    servers: list[Backend] = []

    def start(name: str = "backend", **options: Any) -> Backend:
        server = Backend(name, **options)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def refused_port():
    """Ports that refuse every connection for the whole test: bound, never listening, so no
    other process can take one meanwhile (as it could a port free_port() let go of)."""
    held: list[socket.socket] = []

    def reserve() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return sock.getsockname()[1]
    yield reserve
    for sock in held:
        sock.close()


pytest_plugins = ["admin_harness"]  # the control plane's fixtures: stores on both backends, admins, synced nodes

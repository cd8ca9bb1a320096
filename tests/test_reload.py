"""Config hot-swap: a node changes what it serves without dropping or misrouting a request.

A new config is applied on file change or SIGHUP only when it loads, validates, compiles
and gets every listener it needs; otherwise the old one keeps serving. Requests in flight
finish on the runtime they started with, and upstream connections outlive the swap.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import app_config, free_port

CHANGES = 50
CLIENTS = 8


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "example.test"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def pod(body: bytes) -> str:
    return json.loads(body)["pod"]


def rejections(node) -> list[dict]:
    events = []
    for line in node.stderr_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "config_rejected":
            events.append(record)
    return events


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def worker_pids(node) -> dict[int, int]:
    return {w["worker"]: w["pid"] for w in node.status()["workers"]}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --- zero failed requests under load ---------------------------------------------------


def generation_config(generation: int, upstream_a, upstream_b, port: int) -> dict:
    """Generation g routes to a if even, b if odd; odd ones also have a local /extra rule."""
    rules = [{"name": "stamp", "actions": [{"set-response-header": {"name": "X-Generation", "value": str(generation)}}]}]
    if generation % 2:
        rules.append({"name": "extra", "conditions": [{"var": "path", "op": "prefix", "values": ["/extra"]}],
                      "actions": [{"respond": {"status": 200, "body": "extra"}}]})
    rules.append({"name": "proxy", "actions": [{"proxy": {"upstream": "up"}}]})
    backend = upstream_b if generation % 2 else upstream_a
    return app_config([backend.server()], port, rules=rules)


def served_by(generation: int, path: str, body: bytes, upstream_a, upstream_b) -> bool:
    """Whether (path, body) is what generation `generation` answers, and nothing else."""
    if path == "/extra" and generation % 2:
        return body == b"extra"
    return pod(body) == (upstream_b.name if generation % 2 else upstream_a.name)


class Hammer(threading.Thread):
    """One keep-alive client sending requests until told to stop, checking every answer."""

    def __init__(self, port: int, check, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.check, self.stop = port, check, stop
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        last_generation = -1
        while not self.stop.is_set():
            path = "/extra" if self.sent % 2 else "/"
            self.sent += 1
            try:
                conn.request("GET", path, headers={"Host": "example.test"})
                response = conn.getresponse()
                body = response.read()
                generation = int(response.getheader("X-Generation", "-1"))
                if response.status != 200 or not self.check(generation, path, body):
                    self.failures.append(f"{path} in generation {generation}: {response.status} {body[:200]!r}")
                elif generation < last_generation:
                    self.failures.append(f"generation went back from {last_generation} to {generation}")
                last_generation = generation
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.failures.append(f"{path}: {error!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                last_generation = -1
        conn.close()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_no_request_fails_while_the_config_changes_50_times_under_load(node, echo, workers):
    upstream_a, upstream_b = echo("a"), echo("b")
    port = free_port()
    started = node(generation_config(0, upstream_a, upstream_b, port), workers=workers, access_log=False)
    stop = threading.Event()
    clients = [Hammer(port, lambda g, p, b: served_by(g, p, b, upstream_a, upstream_b), stop)
               for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    applied = [started.versions()]
    try:
        for generation in range(1, CHANGES + 1):
            started.write_config(generation_config(generation, upstream_a, upstream_b, port))
            if generation % 10:
                started.reload()  # SIGHUP, which is prompt; every tenth change is left to the file poll
            applied.append(started.wait_version_change(applied[-1]))
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    failures = [f for client in clients for f in client.failures]
    assert len(failures) == 0, failures[:5]
    assert len(applied) == CHANGES + 1 and len({frozenset(v) for v in applied}) == CHANGES + 1
    assert all(client.sent > CHANGES for client in clients)


# --- requests in flight ----------------------------------------------------------------


@pytest.mark.parametrize("change", ["rerouted", "removed"])
def test_a_request_in_flight_finishes_on_the_config_it_started_with(node, echo, change):
    old, new = echo("old"), echo("new")
    port = free_port()
    started = node(app_config([old.server()], port))
    before = started.versions()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = time.monotonic()
    conn.request("GET", "/?delay=2s", headers={"Host": "example.test"})
    time.sleep(0.2)  # the request has reached the old upstream
    rules = [{"actions": [{"respond": {"status": 404, "body": "gone"}}]}] if change == "removed" else None
    started.write_config(app_config([new.server()], port, rules=rules))
    started.reload()
    started.wait_version_change(before)
    assert time.monotonic() - sent < 2, "the new config was applied only after the slow request ended"
    response = conn.getresponse()
    assert response.status == 200 and pod(response.read()) == "old"
    conn.request("GET", "/", headers={"Host": "example.test"})
    response = conn.getresponse()
    body = response.read()
    if change == "removed":
        assert (response.status, body) == (404, b"gone")
    else:
        assert response.status == 200 and pod(body) == "new"
    conn.close()


# --- invalid configs -------------------------------------------------------------------


INVALID = {
    # name: ((valid text, port) -> broken text, field path in the message, text on the offending line)
    "bad-yaml": (lambda text, port: text.replace("  ports:\n", "  ports:\n\tbroken: [\n"),
                 "(top level)", "\tbroken: ["),
    "port-out-of-range": (lambda text, port: text.replace(f"- {port}\n", "- 70000\n"),
                          "applications[0].ports[0]", "- 70000"),
    "missing-upstream": (lambda text, port: text.replace("upstream: up", "upstream: missing"),
                         "applications[0].rules[0].actions[0].proxy.upstream", "upstream: missing"),
}


@pytest.mark.parametrize("kind", list(INVALID))
def test_an_invalid_config_is_rejected_with_its_location_and_the_old_one_keeps_serving(node, echo, kind):
    backend = echo("kept")
    port = free_port()
    valid = yaml.safe_dump(app_config([backend.server()], port), sort_keys=False)
    started = node(valid)
    before = started.versions()
    breaker, field_path, marker = INVALID[kind]
    broken = breaker(valid, port)
    [line] = [number for number, text in enumerate(broken.splitlines(), 1) if marker in text]
    started.write_config(broken)
    started.reload()
    [rejected] = wait_for(lambda: rejections(started), what="config_rejected")
    assert rejected["errors"][0].startswith(f"{started.config_path}:{line}: {field_path}: ")
    assert rejected["serving"] == next(iter(before))
    time.sleep(0.7)  # the file poll sees the same broken file; the version must stay
    assert started.versions() == before
    status, _, body = get(port)
    assert status == 200 and pod(body) == "kept"
    started.write_config(valid.replace("name: app", "name: fixed"))
    assert started.wait_version_change(before) != before
    assert get(port)[0] == 200


def test_sighup_applies_a_change_the_file_poll_cannot_see(node, echo):
    backend = echo()
    port = free_port()
    started = node(app_config([backend.server()], port, rules=[
        {"actions": [{"set-response-header": {"name": "X-Mark", "value": "aaaa"}}, {"proxy": {"upstream": "up"}}]}]))
    before, workers = started.versions(), worker_pids(started)
    stat = started.config_path.stat()
    text = started.config_path.read_text()
    with open(started.config_path, "r+") as same_file:  # same inode, same size, same mtime
        same_file.write(text.replace("aaaa", "bbbb"))
    os.utime(started.config_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(0.7)  # more than a poll period
    assert started.versions() == before, "the poll noticed a change it was meant not to see"
    assert get(port)[1]["X-Mark"] == "aaaa"
    started.reload()
    started.wait_version_change(before, timeout=1.5)
    assert get(port)[1]["X-Mark"] == "bbbb"
    assert worker_pids(started) == workers, "the worker was replaced, not reloaded"


# --- listeners -------------------------------------------------------------------------


def two_port_config(backend, first: int, second: int) -> dict:
    config = app_config([backend.server()], first)
    config["applications"].append({"name": "second", "domains": ["*"], "ports": [second],
                                   "rules": [{"actions": [{"proxy": {"upstream": "up"}}]}]})
    return config


def test_an_application_on_a_new_port_opens_it_without_a_restart(node, echo):
    backend = echo()
    first, second = free_port(), free_port()
    started = node(app_config([backend.server()], first), workers=2)
    master, workers = started.proc.pid, worker_pids(started)
    assert refused(second)
    before = started.versions()
    started.write_config(two_port_config(backend, first, second))
    started.wait_version_change(before)
    assert get(second)[0] == 200 and get(first)[0] == 200
    assert started.proc.poll() is None and started.proc.pid == master
    assert worker_pids(started) == workers


def test_removing_an_application_closes_its_port_and_the_others_keep_serving(node, echo):
    backend = echo()
    first, second = free_port(), free_port()
    started = node(two_port_config(backend, first, second), workers=2)
    workers = worker_pids(started)
    assert get(second)[0] == 200
    before = started.versions()
    started.write_config(app_config([backend.server()], first))
    started.wait_version_change(before)
    assert refused(second)
    assert get(first)[0] == 200
    assert worker_pids(started) == workers


def test_a_config_whose_new_port_is_taken_is_rejected_and_the_old_one_keeps_serving(node, echo):
    backend = echo()
    first = free_port()
    squatter = socket.socket()  # a plain listener, without SO_REUSEPORT, owns the port
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        started = node(app_config([backend.server()], first))
        before = started.versions()
        started.write_config(two_port_config(backend, first, taken))
        started.reload()
        [rejected] = wait_for(lambda: rejections(started), what="config_rejected")
        assert "cannot listen" in rejected["errors"][0] and "in use" in rejected["errors"][0]
        assert started.versions() == before
        assert get(first)[0] == 200
    finally:
        squatter.close()


# --- upstream connections --------------------------------------------------------------


class CountingUpstream:
    """An HTTP/1.1 keep-alive server that counts the TCP connections it accepts."""

    def __init__(self):
        self.connects = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connects += 1
                super().setup()

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_upstream_keepalive_connections_survive_a_reload_that_keeps_the_upstream(node):
    upstream = CountingUpstream()
    try:
        port = free_port()
        server = {"address": "127.0.0.1", "port": upstream.port}
        started = node(app_config([server], port))
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

        def ask() -> set[str | None]:
            marks = set()
            for _ in range(5):
                client.request("GET", "/", headers={"Host": "example.test"})
                response = client.getresponse()
                assert (response.status, response.read()) == (200, b"ok")
                marks.add(response.getheader("X-New"))
            return marks
        assert ask() == {None}
        assert upstream.connects == 1
        before = started.versions()
        started.write_config(app_config([server], port, rules=[
            {"actions": [{"set-response-header": {"name": "X-New", "value": "1"}}, {"proxy": {"upstream": "up"}}]}]))
        started.reload()
        started.wait_version_change(before)
        assert ask() == {"1"}
        client.close()
        assert upstream.connects == 1
    finally:
        upstream.stop()


def test_a_recompile_keeps_the_upstreams_and_applications_that_nothing_it_uses_changed():
    from edgeplane.model.config import Config
    from edgeplane.node.endpoints import EndpointRegistry
    from edgeplane.node.runtime import compile_runtime

    def config(api_port: int = 9001, timezone: str = "UTC") -> Config:
        return Config.model_validate({
            "settings": {"timezone": timezone},
            "upstreams": [{"name": "api", "servers": [{"address": "127.0.0.1", "port": api_port}]},
                          {"name": "web", "servers": [{"address": "127.0.0.1", "port": 9002}]}],
            "applications": [{"name": name, "domains": [f"{name}.example"],
                              "rules": [{"actions": [{"proxy": {"upstream": upstream}}]}]}
                             for name, upstream in (("shop", "api"), ("blog", "web"))]})
    registry = EndpointRegistry()
    first = compile_runtime(config(), registry, version="1")
    second = compile_runtime(config(api_port=9003), registry, version="2", previous=first)
    assert second.upstreams["web"] is first.upstreams["web"] and second.upstreams["api"] is not first.upstreams["api"]
    assert second.apps["blog"] is first.apps["blog"], "routes only to the unchanged upstream: kept"
    assert second.apps["shop"] is not first.apps["shop"], "routes to the changed upstream: compiled again"
    assert second.context is first.context
    third = compile_runtime(config(api_port=9003, timezone="Europe/Paris"), registry, version="3", previous=second)
    assert third.context is not second.context and third.upstreams["web"] is second.upstreams["web"]
    assert all(third.apps[name] is not second.apps[name] for name in ("shop", "blog")), "a new context compiles all"

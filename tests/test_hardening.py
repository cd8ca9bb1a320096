"""Defects found in review, each pinned by the behaviour that was wrong: memory a client can
pin, heads held back, deadlines that fired on the wrong party, framing an upstream could
break, housekeeping a bad reload could stop, and configs that could inject into the wire."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import threading
import time

import pytest

from edgeplane.model import ConfigError, parse
from edgeplane.node.request import normalize_path

from conftest import app_config, free_port, raw_exchange, wait_port

ACCEPT_WITHIN = 120.0  # seconds: longer than a node may take to start (30 s to open, 30 s to be ready)


class ScriptedUpstream:
    """Reads one request head, then plays `script`: a list of bytes to send or seconds to wait.

    It is made before the node that will connect to it, and a node can take tens of seconds
    to start on a loaded machine: it waits for that connection as long as the test could."""

    def __init__(self, script: list):
        self.script = script
        self.received = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(ACCEPT_WITHIN)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.received:
                self.received += conn.recv(65536)
            threading.Thread(target=self.keep_reading, args=(conn,), daemon=True).start()
            for step in self.script:
                if step == "reset":  # an abortive close: the peer sees a reset, not an end
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if isinstance(step, bytes):
                    conn.sendall(step)
                else:
                    time.sleep(step)
            time.sleep(0.5)

    def keep_reading(self, conn: socket.socket) -> None:
        try:
            while chunk := conn.recv(65536):
                self.received += chunk
        except OSError:
            pass


def proxied_to(node, upstream_port: int, **settings) -> int:
    port = free_port()
    upstream = {"timeouts": settings.pop("timeouts")} if "timeouts" in settings else None
    node(app_config([{"address": "127.0.0.1", "port": upstream_port}], port, upstream=upstream,
                    settings={"limits": settings} if settings else None))
    return port


def worker_rss_kib(started) -> int:
    pid = started.status()["workers"][0]["pid"]
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_of_request_trailers_is_refused_at_the_head_limit(node, echo):
    port = proxied_to(node, echo("t").port, max_header_size="8k")
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    answer = raw_exchange(port, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
                          + trailers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_client_that_never_reads_its_responses_stops_being_read(node):
    port = free_port()
    rules = [{"actions": [{"respond": {"body": "x" * 50_000}}]}]
    started = node(app_config([{"address": "127.0.0.1", "port": 9}], port, rules=rules))
    before = worker_rss_kib(started)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.2)
        request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        try:
            for _ in range(4000):  # 200 MB of answers if the node kept reading
                sock.sendall(request * 10)
        except (TimeoutError, OSError):
            pass  # the node stopped reading: our send buffer filled up
        time.sleep(0.5)
        assert worker_rss_kib(started) - before < 30_000


def test_a_response_head_is_sent_before_a_slow_body_begins(node):
    upstream = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                                 2.0, b"5\r\nhello\r\n0\r\n\r\n"])
    port = proxied_to(node, upstream.port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < 1.5


def test_websocket_bytes_sent_with_the_handshake_reach_the_upstream_after_its_101(node):
    upstream = ScriptedUpstream([0.3, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 0.5])
    port = proxied_to(node, upstream.port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEARLY-FRAME")
        sock.sendall(b"LATER-FRAME")
        assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
        time.sleep(0.3)
    assert b"EARLY-FRAME" in upstream.received and b"LATER-FRAME" in upstream.received


def test_an_upstream_transfer_coding_other_than_chunked_is_a_502(node):
    upstream = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip"])
    port = proxied_to(node, upstream.port)
    assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", read_until_close=False).startswith(b"HTTP/1.1 502 ")


def test_content_length_named_in_connection_is_still_sent(node):
    upstream = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"])
    port = proxied_to(node, upstream.port)
    answer = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=2)
    assert b"\r\nContent-Length: 5\r\n" in answer and answer.endswith(b"hello")


def test_a_small_request_pipelined_after_a_large_body_is_not_mistaken_for_a_large_head(node, echo):
    port = proxied_to(node, echo("p").port, max_header_size="4k")
    body = b"x" * 40_000
    data = (b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            + b"GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = raw_exchange(port, data, timeout=5)
    assert answer.count(b"HTTP/1.1 200 ") == 2


def test_a_broken_geoip_database_refuses_the_reload_and_later_reloads_still_apply(node, tmp_path):
    port = free_port()
    rules = [{"actions": [{"respond": {"body": "v1"}}]}]
    started = node(app_config([{"address": "127.0.0.1", "port": 9}], port, rules=rules))
    not_a_database = tmp_path / "fake.mmdb"
    not_a_database.write_bytes(b"this is not a MaxMind database" * 100)
    broken = app_config([{"address": "127.0.0.1", "port": 9}], port, rules=[{"actions": [{"respond": {"body": "v2"}}]}],
                        settings={"geoip_database": str(not_a_database)})
    old = started.versions()
    started.write_config(broken)
    deadline = time.monotonic() + 5
    while "cannot compile" not in started.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot compile" in started.stderr_text() and started.versions() == old
    started.write_config(app_config([{"address": "127.0.0.1", "port": 9}], port,
                                    rules=[{"actions": [{"respond": {"body": "v3"}}]}]))
    started.wait_version_change(old)
    assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").endswith(b"v3")


def test_a_restarted_worker_serves_the_last_good_config_when_the_file_is_broken(node):
    port = free_port()
    started = node(app_config([{"address": "127.0.0.1", "port": 9}], port,
                              rules=[{"actions": [{"respond": {"body": "good"}}]}]))
    started.write_config("applications: [this is not valid")
    time.sleep(1.0)
    pid = started.status()["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        workers = started.status()["workers"]
        if workers and workers[0]["pid"] != pid:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the worker was not restarted")
    wait_port(port)
    assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").endswith(b"good")


def test_a_204_from_a_rule_has_no_body():
    from edgeplane.lang.compile import LocalResponse
    from edgeplane.node.wire import serialize_local
    data = serialize_local(LocalResponse(204, [], b"ignored"), [], False, True, False)
    assert data.endswith(b"\r\n\r\n") and b"ignored" not in data and b"Content-Length" not in data


@pytest.mark.parametrize("action, where", [
    ({"redirect": {"path": "/a\r\nSet-Cookie: x=1"}}, "redirect.path"),
    ({"redirect": {"host": "evil.test\r\nX: y"}}, "redirect.host"),
    ({"rewrite-path": {"path": "/a b"}}, "rewrite-path.path"),
    ({"rewrite-path": {"prefix": "/a", "replacement": "/b\nc"}}, "rewrite-path.replacement"),
    ({"set-response-header": {"name": "Content-Length", "value": "0"}}, "set-response-header.name"),
    ({"remove-request-header": {"name": "Transfer-Encoding"}}, "remove-request-header.name"),
    ({"respond": {"headers": {"Connection": "close"}}}, "respond.headers"),
    ({"rewrite-path": {"regex": "^/(a)", "replacement": "/\\2"}}, "rewrite-path"),
])
def test_configs_cannot_inject_into_the_wire_or_break_framing(action, where):
    text = json.dumps({"applications": [{"name": "a", "domains": ["a.test"], "rules": [{"actions": [action]}]}]})
    with pytest.raises(ConfigError, match=rf"actions\[0\]\.{where}"):
        parse(text, "x.json")


@pytest.mark.parametrize("raw", ["/public/..\\admin", "/.;/admin", "/public/..;x/admin", "/%5c..%5cadmin"])
def test_paths_backends_would_read_as_admin_are_admin_to_rules(raw):
    assert normalize_path(raw).startswith("/admin")


def test_an_absolute_form_target_with_an_ipv6_host_is_routed(node, echo):
    port = proxied_to(node, echo("v6").port)
    answer = raw_exchange(port, b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"host": "[::1]:8080"' in answer


def test_a_reset_in_a_close_delimited_body_cuts_the_response_instead_of_ending_it(node):
    upstream = ScriptedUpstream([b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial", 0.3, "reset"])
    port = proxied_to(node, upstream.port)
    answer = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"partial" in answer
    assert not answer.endswith(b"0\r\n\r\n")  # no clean end of the chunked body: the client knows it is cut


def test_a_request_retried_on_a_fresh_connection_is_mirrored_once(node, backend, echo):
    from backends import ON_NEXT_REQUEST
    main, shadow = backend(one_shot=ON_NEXT_REQUEST), echo("shadow")
    port = free_port()
    node({"upstreams": [{"name": "main", "servers": [{"address": "127.0.0.1", "port": main.port}]},
                        {"name": "shadow", "servers": [shadow.server()]}],
          "applications": [{"name": "a", "domains": ["*"], "ports": [port],
                            "rules": [{"actions": [{"mirror": {"upstream": "shadow"}}, {"proxy": {"upstream": "main"}}]}]}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(10):  # every request after the first meets a dead pooled connection and is retried
        conn.request("GET", "/", headers={"Host": "a"})
        assert conn.getresponse().read() is not None
    assert main.stats()["dropped"] == 9
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn2 = http.client.HTTPConnection("127.0.0.1", shadow.port, timeout=5)
        conn2.request("GET", "/__echo/requests")
        seen = json.loads(conn2.getresponse().read())["requests"]
        conn2.close()
        if len(seen) >= 10:
            break
        time.sleep(0.1)
    assert len(seen) == 10


def test_a_stalled_client_does_not_hold_a_drain_past_its_own_deadline(node, echo):
    port = free_port()
    started = node(app_config([echo("d").server()], port,
                              settings={"limits": {"client_header_timeout": "500ms", "drain_timeout": "20s"}}))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")  # a head that never ends
        time.sleep(0.1)
        began = time.monotonic()
        started.proc.send_signal(signal.SIGTERM)
        started.proc.wait(15)
    assert time.monotonic() - began < 5

"""Retries and their budget, through a real node and real upstream processes: failed tries
go to another server, a killed upstream under load costs (almost) nothing, a POST is sent
once unless the route says otherwise, and a failing upstream is not buried in retries.

What each upstream received is counted at the upstream; the node's own report is only
used for what only it knows (metrics, access-log fields).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

from test_reload import get, wait_for

from conftest import app_config, free_port


def proxying(servers: list[dict], port: int, retry: dict, upstream: dict | None = None, **proxy) -> dict:
    rules = [{"actions": [{"proxy": {"upstream": "up", "retry": retry, **proxy}}]}]
    return app_config(servers, port, rules=rules, upstream=upstream)


def received(server, path: str | None = None, method: str | None = None) -> list[dict]:
    """What an echo server received, asked directly."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/__echo/requests")
    requests = json.loads(conn.getresponse().read())["requests"]
    conn.close()
    return [r for r in requests if (path is None or r["path"] == path) and (method is None or r["method"] == method)]


def send(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Clients:
    """`count` threads, each sending GETs on its own keep-alive connection until stopped
    (or until each has sent `each`), counting every answer."""

    def __init__(self, port: int, count: int, path: str = "/", each: int | None = None):
        self.port, self.path, self.each = port, path, each
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = 0
        while not self.stopped.is_set() and (self.each is None or sent < self.each):
            sent += 1
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self.lock:
                self.statuses[status] += 1
        conn.close()

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def stop(self) -> Counter:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)
        return self.statuses


def test_a_killed_upstream_under_load_fails_fewer_than_one_request_in_a_thousand(node, echo):
    servers = [echo(f"s{n}") for n in range(3)]
    port = free_port()
    node(proxying([s.server() for s in servers], port, {"attempts": 3},
                  upstream={"outlier_detection": {"consecutive_gateway_errors": 2}}), workers=2)
    clients = Clients(port, 8)
    wait_for(lambda: clients.total() >= 1500, timeout=30, what="1500 requests before the kill")
    servers[1].proc.kill()  # connections in flight are reset, new ones refused
    killed_at = clients.total()
    wait_for(lambda: clients.total() >= killed_at + 1500, timeout=30, what="1500 requests after the kill")
    statuses = clients.stop()
    total = sum(statuses.values())
    failed = total - statuses[200]
    assert failed * 1000 < total, statuses


def test_a_failed_try_goes_to_another_server(node, backend):
    bad, good = backend("bad", status=503), backend("good")
    port = free_port()
    started = node(proxying([bad.server(), good.server()], port, {"attempts": 2, "backoff": "1ms"}))
    answered = [get(port) for _ in range(10)]
    assert [status for status, _, _ in answered] == [200] * 10
    assert {json.loads(body)["pod"] for _, _, body in answered} == {"good"}
    assert bad.stats()["requests"] == 5 and good.stats()["requests"] == 10  # round robin: every other first try
    retried = [line for line in started.access_log(wait_for=10) if line.get("attempts") == 2]
    assert len(retried) == 5
    assert {(line["retry"], line["upstream_addr"]) for line in retried} == {("503", f"127.0.0.1:{good.port}")}
    assert 'edgeplane_retries_total{upstream="up",condition="503"} 5' in started.metrics()


def test_a_try_that_outlives_its_backend_timeout_is_retried_elsewhere(node, backend):
    slow, fast = backend("slow", delay=2.0), backend("fast")
    port = free_port()
    started = node(proxying([slow.server(), fast.server()], port, {"attempts": 2, "backoff": "1ms"},
                            backend_timeout="300ms"))
    assert [get(port)[0] for _ in range(4)] == [200] * 4
    assert slow.stats()["requests"] == 2
    assert {line["retry"] for line in started.access_log(wait_for=4) if line["attempts"] == 2} == {"timeout"}


def test_a_post_is_sent_once_unless_the_route_allows_retrying_it(node, echo):
    server = echo()
    port = free_port()
    retry = {"attempts": 3, "backoff": "1ms"}
    rules = [{"conditions": [{"var": "query", "op": "eq", "values": ["any"]}],
              "actions": [{"proxy": {"upstream": "up", "retry": {**retry, "non_idempotent": True}}}]},
             {"actions": [{"proxy": {"upstream": "up", "retry": retry}}]}]
    node(app_config([server.server()], port, rules=rules))
    assert send(port, "POST", "/status/503", b"order=1")[0] == 503
    assert len(received(server, "/status/503", "POST")) == 1
    assert send(port, "GET", "/status/503")[0] == 503
    assert len(received(server, "/status/503", "GET")) == 3
    assert send(port, "POST", "/status/503?any", b"order=2")[0] == 503
    assert len(received(server, "/status/503?any", "POST")) == 3


def test_a_body_too_large_to_keep_is_not_sent_twice(node, echo):
    server = echo()
    port = free_port()
    node(proxying([server.server()], port, {"attempts": 3, "backoff": "1ms", "replay_limit": "1k"}))
    assert send(port, "PUT", "/status/503", b"x" * 1000)[0] == 503
    assert send(port, "PUT", "/status/502", b"x" * 2000)[0] == 502
    assert (len(received(server, "/status/503")), len(received(server, "/status/502"))) == (3, 1)


def test_the_retry_budget_caps_what_a_failing_upstream_receives(node, echo):
    server = echo()
    port = free_port()
    started = node(proxying([server.server()], port, {"attempts": 5, "backoff": "0s"},
                            upstream={"retry_budget": {"percent": 20, "min_concurrency": 1}}))
    # Slow answers keep the 40 clients' requests in flight together, as a loaded upstream would.
    clients = Clients(port, 40, "/status/503?delay=50ms", each=25)
    for thread in clients.threads:
        thread.join(60)
    sent = clients.total()
    assert clients.statuses == {503: 1000}
    seen = len(received(server, "/status/503?delay=50ms"))
    # Four retries each would make it 5000; the budget allows 20 % of the first tries in flight.
    assert sent < seen <= sent * 1.2 + 10, (sent, seen)
    assert 'edgeplane_retries_denied_total{upstream="up",limit="retry_budget"}' in started.metrics()


def test_when_every_try_fails_to_connect_a_route_with_a_policy_answers_503(node):
    port = free_port()
    closed = [{"address": "127.0.0.1", "port": free_port(), "max_fails": 0} for _ in range(2)]
    started = node(proxying(closed, port, {"attempts": 3, "backoff": "1ms"}))
    status, _, body = get(port)
    assert status == 503 and b"could not connect to upstream 'up'" in body
    [line] = started.access_log(wait_for=1)
    assert (line["attempts"], line["retry"]) == (3, "connect-failure,connect-failure")


def test_a_retry_waits_a_backoff_and_gives_up_at_the_total_timeout(node, echo):
    server = echo()
    port = free_port()
    node(proxying([server.server()], port, {"attempts": 10, "backoff": "200ms", "max_backoff": "200ms"},
                  timeout="500ms"))
    started = time.monotonic()
    status = get(port, "/status/503")[0]
    assert status in (503, 504)
    # Full jitter waits up to 200 ms between tries; the 500 ms total stops it well before ten.
    assert len(received(server, "/status/503")) < 10
    assert time.monotonic() - started < 5

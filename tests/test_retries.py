"""Retries and their budget, through a real node and real upstream processes: failed tries
go to another server, a killed upstream under load costs (almost) nothing, a POST is sent
once unless the route says otherwise, and a failing upstream is not buried in retries.

What each upstream received is counted at the upstream; the node's own report is only
used for what only it knows (metrics, access-log fields).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter

from edgeplane.model.config import CircuitBreaker, Retry, RetryBudget
from edgeplane.node.breaker import Breaker
from edgeplane.node.retry import CONNECT_FAILURE, RESET, retry_policy
from test_outlier_detection import Reporter
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


def test_each_try_goes_to_a_server_this_request_has_not_tried_yet(node, echo):
    servers = [echo(f"s{n}") for n in range(3)]
    port = free_port()
    # Hashing on a header the requests lack sends every request to the same server first, and
    # would send each retry there too: only leaving out the servers tried spreads the retries.
    node(proxying([s.server() for s in servers], port, {"attempts": 3, "backoff": "1ms"},
                  upstream={"balance": "hash", "hash_key": "header:X-User"}))
    assert [get(port, "/status/503")[0] for _ in range(6)] == [503] * 6
    assert [len(received(s, "/status/503")) for s in servers] == [6, 6, 6]


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
    # Four retries each would make it 5000. The budget keeps the retries in flight within 20 %
    # of the first tries in flight, so the upstream receives at most 20 % more than was sent,
    # plus the retries still in flight as the clients stop: 20 % of the 40 first tries at most.
    assert sent < seen <= sent * 1.2 + 40 * 0.2, (sent, seen)
    assert 'edgeplane_retries_denied_total{upstream="up",limit="retry_budget"}' in started.metrics()


def test_when_every_try_fails_to_connect_a_route_with_a_policy_answers_503(node, refused_port):
    port = free_port()
    closed = [{"address": "127.0.0.1", "port": refused_port(), "max_fails": 0} for _ in range(2)]
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
    status = get(port, "/status/503")[0]
    assert status in (503, 504)
    # Full jitter waits up to 200 ms between tries; the 500 ms total stops it well before ten.
    assert len(received(server, "/status/503")) < 10


# --- the arithmetic alone: what a policy covers, its backoff, the budget -------------------


def covered(policy) -> set:
    return {c for c in (CONNECT_FAILURE, RESET) if policy.covers(c)} | \
        {s for s in range(400, 600) if policy.covers("status", s)}


def test_retry_on_names_what_a_policy_covers():
    gateway = {CONNECT_FAILURE, RESET, 502, 503, 504}
    assert covered(retry_policy(Retry())) == gateway
    assert covered(retry_policy(Retry(retry_on=["5xx"]))) == {CONNECT_FAILURE, RESET, *range(500, 600)}
    assert covered(retry_policy(Retry(retry_on=["connect-failure"], statuses=[429]))) == {CONNECT_FAILURE, 429}
    assert covered(retry_policy(Retry(retry_on=[], statuses=[503]))) == {503}


def test_backoff_doubles_up_to_max_backoff_and_each_wait_is_drawn_anywhere_below_it():
    policy = retry_policy(Retry(backoff=0.1, max_backoff=0.5))
    random.seed(5)
    for retry, ceiling in enumerate([0.1, 0.2, 0.4, 0.5, 0.5], start=1):
        waits = [policy.delay(retry) for _ in range(2000)]
        assert all(0 <= wait <= ceiling for wait in waits)
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(waits) < ceiling * 0.05 and max(waits) > ceiling * 0.95
        assert abs(sum(waits) / len(waits) - ceiling / 2) < ceiling * 0.05
    assert retry_policy(Retry(backoff=0.1)).max_backoff == 1.0, "max_backoff defaults to 10 x backoff"


def breaker(percent: float = 20, minimum: int = 0, **limits) -> tuple[Breaker, Reporter]:
    reporter = Reporter()
    found = Breaker("up", reporter)
    found.configure(CircuitBreaker(**limits), RetryBudget(percent=percent, min_concurrency=minimum))
    return found, reporter


def retries_admitted(found: Breaker, requests: int) -> int:
    """`requests` in flight on their first try, then each asks for a retry in turn."""
    for _ in range(requests):
        assert found.admit() is None
    admitted = 0
    while admitted < requests and found.admit_retry(False) is None:
        admitted += 1
    return admitted


def test_the_budget_keeps_retries_in_flight_within_percent_of_first_tries():
    found, reporter = breaker(percent=20)
    # 16 retries beside 84 first tries is 19 %; a 17th would make it 17 / 83, above 20 %.
    assert retries_admitted(found, 100) == 16
    assert reporter.counted == [("retries_denied", "up", "retry_budget")]


def test_min_concurrency_retries_are_allowed_whatever_the_load():
    found, _ = breaker(percent=20, minimum=3)
    assert retries_admitted(found, 1) == 1
    found, _ = breaker(percent=20, minimum=3)
    assert retries_admitted(found, 10) == 3  # 20 % of 10 is fewer than 3


def test_each_retry_of_a_request_is_judged_again_against_the_load_of_its_moment():
    found, reporter = breaker(percent=20)
    assert retries_admitted(found, 10) == 1  # one retry beside nine first tries
    for _ in range(9):
        found.leave(False)  # the load that allowed it is gone
    assert found.admit_retry(True) == "retry_budget"  # its second retry: nothing left to allow it
    assert (found.requests, found.retries) == (1, 0), "the retry that ended no longer counts"
    found.leave(False)
    assert (found.requests, found.retries) == (0, 0)


def test_a_retry_ending_releases_its_place_for_the_next_one():
    found, _ = breaker(percent=0, minimum=1)
    assert retries_admitted(found, 2) == 1
    assert found.admit_retry(True) is None  # its next retry takes the place its last one left
    found.leave(True)
    assert found.admit_retry(False) is None and found.retries == 1


def test_max_retries_caps_retries_in_flight_whatever_the_budget():
    found, reporter = breaker(percent=100, minimum=10, max_retries=2)
    assert retries_admitted(found, 10) == 2
    assert reporter.counted == [("retries_denied", "up", "max_retries")]


def test_max_pending_requests_counts_requests_waiting_for_a_connection():
    found, reporter = breaker(max_pending_requests=2)
    assert found.may_connect() is None
    found.pending = 2
    assert found.may_connect() == "max_pending_requests" and found.open == {"max_pending_requests"}
    found.pending = 1
    assert found.may_connect() is None and not found.open
    assert [event[3:] for event in reporter.events] == [
        ("open", "max_pending_requests (2) reached"), ("closed", "max_pending_requests has room again")]

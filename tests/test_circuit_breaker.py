"""Circuit breakers: past a limit a request fails at once with 503 naming the limit,
instead of waiting behind the others; the breaker closes again when there is room.

A slow backend holds requests in flight; the refused requests are answered while those are
still waiting, which is what "fails fast" means here (no clock is read to judge it).
"""

from __future__ import annotations

import socket
import threading

from test_reload import get, wait_for

from conftest import app_config, free_port


def behind_a_breaker(node, backend, **limits) -> tuple:
    """(node, its port, the slow backend it proxies to with these circuit_breaker limits)."""
    slow = backend("slow", delay=2.0)
    port = free_port()
    return node(app_config([slow.server()], port, upstream={"circuit_breaker": limits})), port, slow


def breaker_state(node) -> dict:
    return node.status()["circuit_breakers"]["0"]["up"]


def hold(port: int, count: int) -> tuple[list[threading.Thread], list[int]]:
    """`count` requests to the slow backend, in flight in threads; their statuses once done."""
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(get(port, timeout=30)[0])) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, statuses


def test_the_breaker_opens_fails_fast_and_closes_again(node, backend):
    started, port, slow = behind_a_breaker(node, backend, max_requests=2)
    threads, held = hold(port, 2)
    wait_for(lambda: breaker_state(started)["requests"] == 2, what="two requests in flight")
    refused = [get(port) for _ in range(3)]
    assert all(thread.is_alive() for thread in threads), "refused requests waited for the held ones"
    assert [status for status, _, _ in refused] == [503] * 3
    assert all(b"circuit breaker of upstream 'up' is open: max_requests (2) reached" in body for _, _, body in refused)
    assert breaker_state(started)["open"] == ["max_requests"]
    for thread in threads:
        thread.join(30)
    assert held == [200, 200]
    assert get(port, timeout=30)[0] == 200  # room again: the breaker closes
    expected = [("circuit_breaker", "open", "max_requests (2) reached"),
                ("circuit_breaker", "closed", "max_requests has room again")]
    assert [(t["source"], t["state"], t["cause"]) for t in started.status()["transitions"]] == expected
    metrics = started.metrics()
    assert 'edgeplane_circuit_breaker_rejected_total{upstream="up",limit="max_requests"} 3' in metrics
    for state in ("open", "closed"):
        assert ('edgeplane_upstream_transitions_total{upstream="up",endpoint="",'
                f'source="circuit_breaker",state="{state}"}} 1') in metrics
    assert slow.stats()["requests"] == 3
    log = started.access_log(wait_for=8)
    assert [line.get("circuit_breaker") for line in log if "status" in line].count("max_requests") == 3
    assert [(t["source"], t["state"], t["cause"]) for t in log if t.get("event") == "transition"] == expected


def test_max_pending_requests_refuses_a_request_while_another_waits_for_its_connection(node):
    # A server that never accepts, its queue (of one) filled by the test: the node's attempts
    # to connect wait, their SYNs dropped, until the connect timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname(), timeout=5):
            port = free_port()
            started = node(app_config([{"address": "127.0.0.1", "port": listener.getsockname()[1]}], port,
                                      upstream={"circuit_breaker": {"max_pending_requests": 1},
                                                "timeouts": {"connect": "5s"}}))
            threads, held = hold(port, 1)
            wait_for(lambda: breaker_state(started)["pending"] == 1, what="one request waiting for a connection")
            status, _, body = get(port)
            assert threads[0].is_alive(), "the refused request waited for the pending one"
            assert status == 503 and b"max_pending_requests (1) reached" in body
            threads[0].join(30)
    assert held == [504]  # its connect timed out
    assert breaker_state(started)["open"] == ["max_pending_requests"], "open until a request fits again"


def test_max_connections_refuses_a_request_that_would_need_one_more_connection(node, backend):
    started, port, slow = behind_a_breaker(node, backend, max_connections=1)
    threads, held = hold(port, 1)
    wait_for(lambda: breaker_state(started)["connections"] == 1, what="one connection open")
    status, _, body = get(port)
    assert status == 503 and b"max_connections (1) reached" in body
    threads[0].join(30)
    assert held == [200]
    assert get(port, timeout=30)[0] == 200  # the pooled connection is reused: no second one needed
    assert slow.stats()["connects"] == 1


def test_max_retries_refuses_a_retry_while_another_is_in_flight(node, backend):
    failing = backend("failing", delay=1.0, status=503)
    port = free_port()
    rules = [{"actions": [{"proxy": {"upstream": "up", "retry": {"attempts": 2, "backoff": "1ms"}}}]}]
    started = node(app_config([failing.server()], port, rules=rules, upstream={"circuit_breaker": {"max_retries": 1}}))
    threads, held = hold(port, 2)  # both first tries fail together; the second retry would overlap the first
    for thread in threads:
        thread.join(30)
    assert held == [503, 503]
    assert failing.stats()["requests"] == 3, "one request retried, the other's retry refused"
    assert 'edgeplane_retries_denied_total{upstream="up",limit="max_retries"} 1' in started.metrics()
    retries = sorted(line["retry"] for line in started.access_log(wait_for=2) if "status" in line)
    assert retries == ["503", "503 (not retried: max_retries)"]

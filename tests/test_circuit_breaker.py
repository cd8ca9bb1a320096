"""Circuit breakers: past a limit a request fails at once with 503 naming the limit,
instead of waiting behind the others; the breaker closes again when there is room.

A slow backend holds requests in flight; the refused requests are answered while those are
still waiting, which is what "fails fast" means here (no clock is read to judge it).
"""

from __future__ import annotations

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
    events = [(t["source"], t["state"], t["cause"]) for t in started.status()["transitions"]]
    assert events == [("circuit_breaker", "open", "max_requests (2) reached"),
                      ("circuit_breaker", "closed", "max_requests has room again")]
    metrics = started.metrics()
    assert 'edgeplane_circuit_breaker_rejected_total{upstream="up",limit="max_requests"} 3' in metrics
    assert slow.stats()["requests"] == 3
    logged = [line.get("circuit_breaker") for line in started.access_log(wait_for=8) if "status" in line]
    assert logged.count("max_requests") == 3


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

"""Outlier detection: servers ejected from real traffic and readmitted, never too many.

End to end through a one-worker node (detection is per worker) with backends that are slow
or answer 5xx; the detector's arithmetic (success rates, growing ejection times, the
ejection allowance) on its own, with endpoints and no sockets.
"""

from __future__ import annotations

import json

from edgeplane.model.config import OutlierDetection, Pool, Server
from edgeplane.node.endpoints import Endpoint
from edgeplane.node.outlier import OutlierDetector, ejection_allowance
from test_reload import get, wait_for

from conftest import app_config, free_port


def transitions(node, source: str = "outlier_detection") -> list[dict]:
    return [t for t in node.status()["transitions"] if t["source"] == source]


def test_a_slow_server_is_ejected_and_readmitted_once_its_ejection_ends(node, backend):
    slow, fast = backend("slow", delay=3.0), backend("fast")
    port = free_port()
    started = node(app_config([slow.server(), fast.server()], port, upstream={
        "timeouts": {"read": "1s"},  # slow: 3 s; fast: well within 1 s even on a loaded machine
        "outlier_detection": {"consecutive_gateway_errors": 2, "base_ejection_time": "1s"}}))
    wait_for(lambda: [get(port)[0] for _ in range(2)] and transitions(started), timeout=15, what="the ejection")
    [ejected] = transitions(started)
    assert (ejected["endpoint"], ejected["state"]) == (f"127.0.0.1:{slow.port}", "ejected")
    assert ejected["cause"].startswith("2 consecutive gateway errors (last: timeout); ejected for 1s")
    served = slow.stats()["requests"]
    assert {json.loads(get(port)[2])["pod"] for _ in range(20)} == {"fast"}
    assert slow.stats()["requests"] == served

    slow.stop()
    recovered = backend("slow", port=slow.port)  # the same server, fast again
    wait_for(lambda: len(transitions(started)) == 2, timeout=10, what="the readmission")
    assert transitions(started)[1]["state"] == "returned"
    assert "slow" in {json.loads(get(port)[2])["pod"] for _ in range(10)}
    assert recovered.stats()["requests"] > 0

    # Who, why and when, in the metrics and the access log as in /status.
    endpoint = f"127.0.0.1:{slow.port}"
    metrics = started.metrics()
    for state in ("ejected", "returned"):
        assert (f'edgeplane_upstream_transitions_total{{upstream="up",endpoint="{endpoint}",'
                f'source="outlier_detection",state="{state}"}} 1') in metrics

    def logged() -> list[dict]:
        return [line for line in started.access_log() if line.get("event") == "transition"]
    wait_for(lambda: len(logged()) == 2, what="both transitions in the access log")
    keys = ("time", "upstream", "endpoint", "source", "state", "cause", "worker")
    assert [{k: line[k] for k in keys} for line in logged()] == [{k: t[k] for k in keys} for t in transitions(started)]


def test_ejection_never_takes_more_than_max_ejection_percent_of_the_servers(node, echo):
    servers = [echo(f"s{n}") for n in range(4)]
    port = free_port()
    started = node(app_config([s.server() for s in servers], port, upstream={
        "outlier_detection": {"consecutive_5xx": 2, "max_ejection_percent": 50, "base_ejection_time": "1m"}}))
    for _ in range(40):  # every server fails every request
        status, _, body = get(port, "/status/503")
        assert status == 503 and json.loads(body)["pod"], body  # answered by a server, never "no server"
        ejected = [e for e in started.status()["upstreams"]["up"] if e["ejected_for"] > 0]
        assert len(ejected) <= 2
    assert len(ejected) == 2
    assert 'edgeplane_outlier_ejections_overflow_total{upstream="up"}' in started.metrics()


def test_a_server_answering_far_worse_than_the_others_is_ejected_by_success_rate(node, echo, backend):
    good = [echo("a"), echo("b")]
    poor = backend("poor", error_rate=0.8)  # four answers in five are 503
    port = free_port()
    started = node(app_config([s.server() for s in (*good, poor)], port, upstream={"outlier_detection": {
        "consecutive_5xx": 0, "consecutive_gateway_errors": 0, "interval": "1s", "max_ejection_percent": 50,
        "success_rate": {"minimum_hosts": 3, "request_volume": 10, "stdev_factor": 1}}}))
    # Only the rate over an interval can tell: consecutive failures count for nothing here.
    wait_for(lambda: [get(port) for _ in range(10)] and transitions(started), timeout=30, what="the ejection")
    [ejected] = transitions(started)
    assert (ejected["endpoint"], ejected["state"]) == (f"127.0.0.1:{poor.port}", "ejected")
    assert "below" in ejected["cause"] and ejected["cause"].startswith("success rate "), ejected["cause"]
    served = poor.stats()["requests"]
    assert all(get(port)[0] == 200 for _ in range(20))
    assert poor.stats()["requests"] == served


# --- the detector alone ------------------------------------------------------------------


class Reporter:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.counted: list[tuple] = []

    def transition(self, *event: str) -> None:
        self.events.append(event)

    def count(self, *labels: str) -> None:
        self.counted.append(labels)


def detector(servers: int, **config) -> tuple[OutlierDetector, list[Endpoint], Reporter]:
    endpoints = [Endpoint("up", Server(address=f"10.0.0.{n}", port=80), Pool()) for n in range(servers)]
    reporter = Reporter()
    return OutlierDetector("up", endpoints, OutlierDetection(**config), reporter), endpoints, reporter


def test_each_repeated_ejection_lasts_longer_up_to_the_maximum():
    found, (endpoint, _), _ = detector(2, consecutive_5xx=1, base_ejection_time=10, max_ejection_time=25)
    lasted = []
    now = 0.0
    for _ in range(4):
        found.observe_status(endpoint, 500, now)
        lasted.append(endpoint.ejected_until - now)
        now = endpoint.ejected_until
        found.sweep(now)
    assert lasted == [10, 20, 25, 25]


def test_a_server_that_stays_in_earns_back_its_ejection_time():
    found, (endpoint, _), _ = detector(2, consecutive_5xx=1, base_ejection_time=10, interval=5)
    found.sweep(0.0)
    found.observe_status(endpoint, 500, 0.0)
    found.sweep(10.0)  # readmitted
    assert endpoint.times_ejected == 1
    for now in (15.0, 20.0):
        found.sweep(now)
    assert endpoint.times_ejected == 0


def test_a_success_resets_the_count_of_consecutive_failures():
    found, (endpoint, _), reporter = detector(2, consecutive_5xx=3)
    for status in (500, 502, 200, 500, 503):
        found.observe_status(endpoint, status, 0.0)
    assert not reporter.events and endpoint.consecutive_5xx == 2


def test_gateway_errors_count_connect_failures_resets_timeouts_and_502_to_504():
    found, (endpoint, _), reporter = detector(2, consecutive_5xx=0, consecutive_gateway_errors=4)
    found.observe_error(endpoint, "connect-failure", 0.0)
    found.observe_error(endpoint, "reset", 0.0)
    found.observe_status(endpoint, 504, 0.0)
    found.observe_error(endpoint, "timeout", 0.0)
    assert reporter.events == [("up", "10.0.0.0:80", "outlier_detection", "ejected",
                                "4 consecutive gateway errors (last: timeout); ejected for 30s (ejection 1)")]


def test_a_server_far_below_the_others_success_rate_is_ejected():
    found, endpoints, reporter = detector(6, consecutive_5xx=0, consecutive_gateway_errors=0, interval=10,
                                          success_rate={"minimum_hosts": 5, "request_volume": 50})
    found.sweep(0.0)
    for index, endpoint in enumerate(endpoints):
        for number in range(100):
            found.observe_status(endpoint, 500 if index == 5 and number % 2 else 200, 1.0)
    found.sweep(10.0)
    assert [event[1] for event in reporter.events] == ["10.0.0.5:80"]
    assert "success rate 50.0% below" in reporter.events[0][4]
    assert all(e.answered == 0 for e in endpoints)  # each interval is judged on its own


def test_the_allowance_is_a_percentage_at_least_one_and_never_everyone():
    assert [ejection_allowance(n, 10) for n in (1, 2, 3, 10, 30)] == [0, 1, 1, 1, 3]
    assert [ejection_allowance(n, 50) for n in (1, 2, 4, 5)] == [0, 1, 2, 2]
    assert [ejection_allowance(n, 100) for n in (1, 3)] == [1, 3]
    assert ejection_allowance(5, 0) == 0


def test_the_last_available_server_is_never_ejected():
    found, (first, second), reporter = detector(2, consecutive_5xx=1, max_ejection_percent=100)
    second.unhealthy = True  # the active check already took it out
    second.refresh()
    found.observe_status(first, 500, 0.0)
    assert first.ejected_until == 0 and reporter.counted == [("outlier_overflow", "up")]

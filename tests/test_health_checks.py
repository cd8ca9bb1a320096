"""Active health checks: run once per node by the master, whatever the number of workers,
and shared with every worker (including one the master restarts).

Probes are counted where they land, at the echo backend; verdicts are read from /status,
from /metrics and from the access log's transition events, and proved by where traffic goes.
"""

from __future__ import annotations

import http.client
import json
import os
import signal

from test_reload import get, pod, wait_for, worker_pids

from conftest import app_config, free_port

FAST = {"interval": "200ms", "timeout": "1s", "rise": 2, "fall": 2}


def checked_config(servers: list[dict], port: int, check: dict) -> dict:
    return app_config(servers, port, upstream={"health_check": {**FAST, **check}})


def probes_seen(backend, path: str) -> list[dict]:
    """The health probes a backend received (asked directly, not through the node)."""
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    conn.request("GET", "/__echo/requests")
    received = json.loads(conn.getresponse().read())["requests"]
    conn.close()
    return [r for r in received if r["path"] == path]


def verdict(node, backend) -> str:
    return node.status()["health_checks"]["up"][f"127.0.0.1:{backend.port}"]["state"]


def test_active_checks_run_once_per_node_whatever_the_number_of_workers(node, echo):
    backend = echo("a")
    started = node(checked_config([backend.server()], free_port(), {"path": "/healthz"}), workers=3)
    wait_for(lambda: started.status()["health_checks"]["up"][f"127.0.0.1:{backend.port}"]["checks"] >= 10,
             timeout=15, what="ten checks")
    checks = started.status()["health_checks"]["up"][f"127.0.0.1:{backend.port}"]["checks"]
    probes = probes_seen(backend, "/healthz")
    # Three workers, one prober: the backend saw the master's count (plus one in flight), not three times it.
    assert checks <= len(probes) <= checks + 1, (checks, len(probes))
    assert {p["headers"]["User-Agent"][0] for p in probes} == {"edgeplane-health-check"}
    assert all("X-Forwarded-For" not in p["headers"] for p in probes)


def test_a_failing_server_leaves_every_worker_and_returns_after_rise_passes(node, echo):
    a, b = echo("a"), echo("b")
    port = free_port()
    # The body must name pod a: b answers 200 but fails the check, while still reachable.
    config = checked_config([a.server(), b.server()], port, {"body": '"pod": "a"'})
    started = node(config, workers=2)
    wait_for(lambda: verdict(started, b) == "unhealthy", what="b's failing verdict")
    assert {pod(get(port)[2]) for _ in range(30)} == {"a"}
    by_worker = started.status()["upstreams_by_worker"].values()
    assert [next(e for e in w["up"] if e["address"].endswith(f":{b.port}"))["health_check"] for w in by_worker] \
        == ["failing", "failing"]

    config["upstreams"][0]["health_check"]["body"] = '"pod": "[ab]"'
    started.write_config(config)  # the master's file watcher applies it to the checks
    wait_for(lambda: verdict(started, b) == "healthy", what="b's passing verdict")
    assert {pod(get(port)[2]) for _ in range(30)} == {"a", "b"}

    status = started.status()
    events = [t for t in status["transitions"] if t["endpoint"] == f"127.0.0.1:{b.port}"]
    assert [(t["source"], t["state"]) for t in events] == [("health_check", "unhealthy"), ("health_check", "healthy")]
    assert "does not match" in events[0]["cause"] and events[1]["cause"] == "2 consecutive checks passed"
    metrics = started.metrics()
    assert f'edgeplane_health_check_healthy{{upstream="up",endpoint="127.0.0.1:{b.port}"}} 1' in metrics
    assert (f'edgeplane_upstream_transitions_total{{upstream="up",endpoint="127.0.0.1:{b.port}",'
            f'source="health_check",state="unhealthy"}} 1') in metrics

    def logged() -> list[str]:  # the master writes its event lines a few times a second
        return [line["state"] for line in started.access_log()
                if line.get("event") == "transition" and line["endpoint"] == f"127.0.0.1:{b.port}"]
    wait_for(lambda: len(logged()) == 2, what="two transition lines in the access log")
    assert logged() == ["unhealthy", "healthy"]


def test_a_tcp_check_fails_a_server_that_refuses_connections(node, echo):
    a = echo("a")
    closed = free_port()  # nothing listens here; max_fails 0 so only the check can take it out
    started = node(checked_config([a.server(), {"address": "127.0.0.1", "port": closed, "max_fails": 0}],
                                  free_port(), {"type": "tcp"}))
    wait_for(lambda: started.status()["health_checks"]["up"][f"127.0.0.1:{closed}"]["state"] == "unhealthy",
             what="the closed port's verdict")
    assert started.status()["health_checks"]["up"][f"127.0.0.1:{a.port}"]["state"] == "healthy"


def test_a_worker_restarted_by_the_master_starts_with_the_current_verdicts(node, echo):
    a, b = echo("a"), echo("b")
    port = free_port()
    started = node(checked_config([a.server(), b.server()], port, {"body": '"pod": "a"', "interval": "1h"}), workers=2)
    wait_for(lambda: verdict(started, b) == "unhealthy", what="b's failing verdict")
    before = worker_pids(started)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: worker_pids(started).get(0) not in (None, before[0]), timeout=15, what="the restart")
    # With an hour between probes, only the verdict the master kept can tell the new worker.
    restarted = started.status()["upstreams_by_worker"]["0"]
    assert next(e for e in restarted["up"] if e["address"].endswith(f":{b.port}"))["state"] == "down"
    assert {pod(get(port)[2]) for _ in range(30)} == {"a"}


def test_removing_the_check_brings_a_failing_server_back_at_once(node, echo):
    a, b = echo("a"), echo("b")
    port = free_port()
    config = checked_config([a.server(), b.server()], port, {"body": '"pod": "a"'})
    started = node(config)
    wait_for(lambda: verdict(started, b) == "unhealthy", what="b's failing verdict")
    del config["upstreams"][0]["health_check"]
    old = started.versions()
    started.write_config(config)
    started.wait_version_change(old)
    wait_for(lambda: {pod(get(port)[2]) for _ in range(10)} == {"a", "b"}, what="b serving again")
    assert started.status()["health_checks"] == {}


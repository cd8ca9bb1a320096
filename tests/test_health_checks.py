"""Active health checks: run once per node by the master, whatever the number of workers,
and shared with every worker (including one the master restarts).

Probes are counted where they land, at the echo backend; verdicts are read from /status,
from /metrics and from the access log's transition events, and proved by where traffic goes.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal

from edgeplane.model.config import Config
from edgeplane.node.health import HealthRunner
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
    # The backend's count, the master's, the backend's again: probes go on between the reads.
    # One prober has at most one probe received and not yet counted, so the master's count lies
    # between the first read less that one and the second read; three probers would have made
    # the backend see three times the master's count.
    before = len(probes_seen(backend, "/healthz"))
    checks = started.status()["health_checks"]["up"][f"127.0.0.1:{backend.port}"]["checks"]
    probes = probes_seen(backend, "/healthz")
    assert before - 1 <= checks <= len(probes), (before, checks, len(probes))
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


def test_a_tcp_check_fails_a_server_that_refuses_connections(node, echo, refused_port):
    a = echo("a")
    closed = refused_port()  # max_fails 0 so only the check can take it out
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



def test_a_prober_outlives_failing_to_tell_or_record_its_verdicts(refused_port):
    """The master's runner alone: telling the workers fails once (a full disk, say) and so
    does recording the transition; probing goes on, and the workers are told after the next probe."""
    told, recorded, complaints = [], [], []

    def publish(message: dict) -> None:
        told.append(message)
        if len(told) == 1:
            raise OSError(28, "No space left on device")

    def record(event: dict) -> None:
        recorded.append(event)
        if len(recorded) == 1:
            raise ValueError("unwritable event")

    async def probe_a_while() -> dict:
        runner = HealthRunner(publish, record, lambda event, **fields: complaints.append((event, fields)))
        closed = refused_port()
        runner.apply_config(Config.model_validate({"upstreams": [{
            "name": "up", "servers": [{"address": "127.0.0.1", "port": closed}],
            "health_check": {"type": "tcp", "interval": "10ms", "fall": 1, "rise": 1}}]}))
        while runner.status()["up"][f"127.0.0.1:{closed}"]["checks"] < 5:
            await asyncio.sleep(0.01)
        runner.close()
        return runner.status()

    asyncio.run(asyncio.wait_for(probe_a_while(), 30))
    assert [event["state"] for event in recorded] == ["unhealthy"]
    assert [(event, fields["error"]) for event, fields in complaints] == [
        ("health_check_error", "ValueError: unwritable event"),
        ("health_check_error", "OSError: [Errno 28] No space left on device")]
    # Probe 1: the verdict, its record failing; probe 2: telling fails; probe 3: told. No change since.
    assert [len(message["failing"]) for message in told] == [1, 1]


def test_a_probe_is_the_configured_request_judged_by_status_body_and_timeout_against_rise_and_fall():
    """The master's runner alone, against a server answering each probe as the test says."""
    answers = [(200, b"ok"), (500, b"ok"), (200, b"ok"), (200, b"nope"), None, (200, b"ok"), (200, b"ok")]
    heads: list[bytes] = []
    recorded: list[dict] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        given = answers[len(heads) - 1] if len(heads) <= len(answers) else (200, b"ok")
        if given is None:
            await asyncio.sleep(1)  # no answer: the probe's 0.2 s timeout fails it
        else:
            status, body = given
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        writer.close()

    async def probe_a_while() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        runner = HealthRunner(lambda message: None, recorded.append, lambda event, **fields: None)
        runner.apply_config(Config.model_validate({"upstreams": [{
            "name": "up", "servers": [{"address": "127.0.0.1", "port": port}],
            "health_check": {"path": "/ready", "host": "probe.internal", "statuses": ["200-204"], "body": "^ok$",
                             "interval": "10ms", "timeout": "200ms", "rise": 2, "fall": 2}}]}))
        while runner.status()["up"][f"127.0.0.1:{port}"]["checks"] < len(answers):
            await asyncio.sleep(0.01)
        runner.close()
        server.close()

    asyncio.run(asyncio.wait_for(probe_a_while(), 30))
    assert heads[0].startswith(b"GET /ready HTTP/1.1\r\nHost: probe.internal\r\n")
    # A failure between passes starts the count again: only two in a row (a body that does not
    # match, then no answer in time) make the server unhealthy, and two passes bring it back.
    assert [(event["state"], event["cause"]) for event in recorded] == [
        ("healthy", "first check passed"),
        ("unhealthy", "2 consecutive checks failed (last: no answer within 0.2s)"),
        ("healthy", "2 consecutive checks passed")]

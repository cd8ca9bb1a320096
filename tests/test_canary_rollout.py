"""Automated canaries end to end: what a node serves for a canary's released weight; the
controller of a real admin ramping, promoting and rolling back a canary on the figures
real nodes report about real upstreams (one healthy stable, one canary whose 503 rate or
delay the test sets), and operators acting through the CLI; two admins on PostgreSQL, one driving.
(The controller's decisions on its own clock: test_canary_controller.py.)
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from edgeplane.admin.canary import LEASE

from admin_harness import TOKEN, AdminProcess, SyncedNode, get, store_for, wait_until
from conftest import ENV, free_port


def shop_config(port: int, stable, canary, weight: int | None = None) -> dict:
    config = {
        "upstreams": [{"name": "orders-v1", "servers": [stable.server()]},
                      {"name": "orders-v2", "servers": [canary.server()]}],
        "applications": [{"name": "shop", "domains": ["*"], "ports": [port], "rules": [
            {"name": "orders", "actions": [{"set-request-header": {"name": "X-Route", "value": "orders"}},
                                           {"proxy": {"upstream": "orders-v1"}}]}]}],
        "canaries": [{"name": "orders", "application": "shop", "rule": "orders", "stable": "orders-v1",
                      "canary": "orders-v2", "sticky": "header:X-Canary-User",
                      "match": [{"var": "header", "name": "X-Canary", "op": "eq", "values": ["always"]}]}],
    }
    if weight is not None:
        config["canary_weights"] = [{"name": "orders", "weight": weight}]
    return config


def pod(port: int, headers: dict | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return json.loads(body)["pod"] if response.status == 200 else str(response.status)
    finally:
        conn.close()


def test_a_released_weight_compiles_the_canary_into_its_rule_and_no_weight_leaves_the_rule_as_written(node, backend):
    stable, canary = backend("stable"), backend("canary")
    port = free_port()
    started = node(shop_config(port, stable, canary))
    assert {pod(port), pod(port, {"X-Canary": "always"})} == {"stable"}, "no weight: the rule as written"
    old = started.versions()
    started.write_config(shop_config(port, stable, canary, weight=30))
    started.wait_version_change(old)
    users = Counter(pod(port, {"X-Canary-User": f"user-{n}"}) for n in range(200))
    assert 30 <= users["canary"] <= 90, users
    assert all(pod(port, {"X-Canary-User": f"user-{n}"}) == pod(port, {"X-Canary-User": f"user-{n}"})
               for n in range(20)), "sticky: a user stays on one version"
    assert pod(port, {"X-Canary": "always"}) == "canary", "the canary's match goes to the canary at any weight"
    old = started.versions()
    started.write_config(shop_config(port, stable, canary, weight=100))
    started.wait_version_change(old)
    assert {pod(port, {"X-Canary-User": f"user-{n}"}) for n in range(20)} == {"canary"}


# --- the controller of a real admin, real nodes reporting ------------------------------------


class Load:
    """Requests at a steady pace to a node's port from a thread, counting who answered."""

    def __init__(self, port: int, per_second: float = 100.0):
        self.port, self.pause = port, 1 / per_second
        self.answers: Counter = Counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.answers[pod(self.port)] += 1
            except OSError:
                self.answers["unreachable"] += 1
            time.sleep(self.pause)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture
def platform(tmp_path, backend):
    """An admin process on SQLite with the shop released, its canary drafted, nodes joined;
    load on every node while the test runs."""
    started: list = []

    def start(canary_error_rate: float = 0.0, nodes: int = 1, canary_delay: float = 0.0, **spec):
        directory = tmp_path / "admin"
        directory.mkdir()
        admin = AdminProcess(directory, None)
        started.append(admin)
        sdk = admin.sdk()
        stable, canary = backend("stable"), backend("canary", error_rate=canary_error_rate,
                                                         delay=canary_delay)
        port = free_port()
        config = shop_config(port, stable, canary)
        for kind in ("upstreams", "applications"):
            for item in config[kind]:
                sdk.create(kind, item)
        sdk.patch("clusters", "default", {"auto_approve": True})
        first = sdk.release(note="the shop, before the canary")["version"]
        token = sdk.join_token()["token"]
        synced = []
        for index in range(nodes):
            (tmp_path / f"n{index}").mkdir()
            synced.append(SyncedNode(tmp_path / f"n{index}", admin.url, token, f"n{index}"))
            started.append(synced[-1])
        for node in synced:
            node.wait_serving(first)
        spec = {**config["canaries"][0], "match": [], "interval": "1500ms", "min_requests": 20,
                "min_success_rate": 0.95, "max_failed_checks": 2, **spec}
        sdk.create("canaries", spec)
        started.extend(Load(port) for _ in synced)
        return admin, sdk, synced, port
    yield start
    for process in reversed(started):
        if isinstance(process, AdminProcess):
            process.kill()  # the last; a graceful stop would wait on the nodes' ended long polls
        else:
            process.stop()


def verdicts(decisions: list[dict]) -> list[tuple[str, int]]:
    """(action, weight after), oldest first; waits for enough requests left out (a loaded
    machine may send fewer in a window)."""
    return [(d["action"], d["weight_to"]) for d in reversed(decisions) if d["action"] != "wait"]


def decisions_until(sdk, action: str, timeout: float) -> list[dict]:
    return wait_until(lambda: (d := sdk.canary_decisions("orders", 100)) and d[0]["action"] == action and d,
                      timeout, f"the canary's decision {action!r}")


def test_an_injected_5xx_rate_rolls_the_canary_back_and_the_decision_names_the_threshold(platform, tmp_path):
    _admin, sdk, (node,), port = platform(canary_error_rate=0.4, step_weight=30)
    sdk.release(note="start the canary")
    decisions = decisions_until(sdk, "rollback", 30)
    rollback = decisions[0]
    assert verdicts(decisions) == [("start", 30), ("hold", 30), ("rollback", 0)]
    assert rollback["figures"]["crossed"] == ["min_success_rate"]
    assert "below min_success_rate 95.00 %" in rollback["reasons"][0]  # perhaps before min_requests: it was certain
    canary = rollback["figures"]["canary"]
    assert canary["failures"] >= 2 and 0.3 <= canary["success_rate"] <= 0.8, canary
    assert rollback["figures"]["stable"]["success_rate"] == 1.0
    assert [n["name"] for n in rollback["figures"]["nodes"]] == ["n0"]
    node.wait_serving(rollback["release"])
    assert {pod(port) for _ in range(30)} == {"stable"}, "the traffic is back on stable"
    status = cli("canary", "status", "orders", admin=_admin)
    assert "rolled_back" in status and "below min_success_rate" in status


def test_a_slow_canary_crosses_max_p99_and_is_rolled_back_the_decision_naming_the_measured_p99(platform):
    # The canary answers every request 300 ms late, the stable at once; max_p99 is 100 ms, so
    # only the latency threshold can fail (no 5xx: the success rate stays 100 %).
    admin, sdk, (node,), port = platform(canary_delay=0.3, step_weight=50, min_requests=5, max_p99="100ms")
    sdk.release(note="start the canary")
    decisions = decisions_until(sdk, "rollback", 40)
    assert verdicts(decisions) == [("start", 50), ("hold", 50), ("rollback", 0)]
    for check in (d for d in decisions if d["action"] in ("hold", "rollback")):
        figures = check["figures"]
        canary = figures["canary"]
        assert figures["crossed"] == ["max_p99"], figures
        assert canary["requests"] >= 5 and canary["failures"] == 0 and canary["success_rate"] == 1.0, canary
        # A bucket bound: never under the 300 ms the canary takes, at most 20 % over (+ the node's share).
        assert 300 <= canary["p99_ms"] <= 1000, canary
        assert figures["thresholds"]["max_p99_ms"] == 100
        assert f"p99 {canary['p99_ms']:g} ms is above max_p99 100 ms" in check["reasons"], check["reasons"]
        assert any(r.startswith("success rate 100.00 % meets") for r in check["reasons"]), check["reasons"]
        assert figures["stable"]["requests"] > 0 and figures["stable"]["failures"] == 0, figures["stable"]
    rollback = decisions[0]
    assert "failed checks: 2 of max_failed_checks 2: rolled back" in rollback["reasons"][-1]
    node.wait_serving(rollback["release"])
    assert {pod(port) for _ in range(30)} == {"stable"}, "the traffic is back on stable"
    status = cli("canary", "status", "orders", admin=admin)
    assert "rolled_back" in status and f"p99 {rollback['figures']['canary']['p99_ms']:g} ms is above max_p99" in status


def test_a_healthy_canary_is_promoted_step_by_step_each_step_a_release_the_nodes_apply_then_operated(platform):
    admin, sdk, nodes, port = platform(nodes=2, step_weight=25, max_weight=75)
    sdk.release(note="start the canary")
    sdk.create("applications", {"name": "pending", "domains": ["pending.example"], "ports": [port],
                                "rules": [{"actions": [{"respond": {"body": "not released"}}]}]})
    decisions = decisions_until(sdk, "promote", 40)
    assert verdicts(decisions) == [("start", 25), ("advance", 50), ("advance", 75), ("promote", 100)]
    steps = [r["version"] for r in sdk.releases(limit=20) if r["actor"] == "canary:orders"]
    assert sorted(steps) == [d["release"] for d in reversed(decisions) if d["release"]]
    for node in nodes:
        node.wait_serving(steps[0])
        applied = node.log_text()
        assert all(f'"event": "release_applied", "version": {step},' in applied for step in steps), applied
    checks = [d for d in decisions if d["action"] in ("advance", "promote")]
    assert {n["name"] for d in checks for n in d["figures"]["nodes"] if n["state"] == "reporting"} == {"n0", "n1"}, \
        [d["figures"]["nodes"] for d in checks]
    for check in checks:
        assert check["figures"]["canary"]["requests"] == sum(n["requests"].get("orders-v2", 0)
                                                             for n in check["figures"]["nodes"]), "merged"
    assert {pod(port) for _ in range(30)} == {"canary"}
    assert [c["name"] for c in sdk.pending()["changes"]] == ["pending"], "the human's change is still pending"
    assert all(get(port, host="pending.example")[1] != b"not released" for _ in range(5))

    assert "abort → aborted, weight 0 %" in cli("canary", "abort", "orders", "-m", "a bug after all", admin=admin)
    nodes[0].wait_serving(sdk.releases(limit=1)[0]["version"])
    assert {pod(port) for _ in range(30)} == {"stable"}
    assert "resume → progressing, weight 25 %" in cli("canary", "resume", "orders", admin=admin)
    assert "pause → paused" in cli("canary", "pause", "orders", admin=admin)
    operated = sdk.canary_decisions("orders")[:3]
    assert [(d["action"], d["actor"], d["run"]) for d in operated] == [
        ("pause", "admin", 2), ("resume", "admin", 2), ("abort", "admin", 1)]
    assert operated[2]["reasons"][0] == "abort by admin: a bug after all"


class Nowhere:
    """An upstream no request reaches (nothing serves this test's traffic)."""

    def server(self) -> dict:
        return {"address": "127.0.0.1", "port": 9}


def cli(*args: str, admin) -> str:
    result = subprocess.run([sys.executable, "-m", "edgeplane", *args, "--admin", admin.url, "--token", TOKEN],
                            env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_on_postgresql_one_admin_drives_a_canary_and_another_goes_on_where_it_was_when_it_dies(tmp_path):
    store, cleanup = store_for("postgresql", tmp_path)
    admins = []
    try:
        for index in range(2):
            (tmp_path / f"admin{index}").mkdir()
            admins.append(AdminProcess(tmp_path / f"admin{index}", store, bootstrap=index == 0))
        sdk = admins[0].sdk()
        config = shop_config(free_port(), Nowhere(), Nowhere())
        for kind in ("upstreams", "applications"):
            for item in config[kind]:
                sdk.create(kind, item)
        sdk.create("canaries", {**config["canaries"][0], "interval": "1s", "min_requests": 1000})
        sdk.release()
        waits = wait_until(lambda: len(d := sdk.canary_decisions("orders")) >= 4 and d, 20, "checks that wait")
        assert {d["admin"] for d in waits[:3]} == {waits[0]["admin"]}, "one admin drives the canary"
        leader = next(a for a in admins if f":{a.proc.pid}:" in waits[0]["admin"])
        survivor = next(a for a in admins if a is not leader)
        leader.kill()
        other = survivor.sdk()
        taken = wait_until(lambda: (d := other.canary_decisions("orders"))[0]["admin"] != waits[0]["admin"] and d,
                           LEASE + 10, "the other admin driving the canary")
        assert f":{survivor.proc.pid}:" in taken[0]["admin"]
        status = other.canary_status("orders")["run"]
        assert (status["run"], status["phase"], status["weight"]) == (1, "progressing", 10), "the same run, same step"
        assert [d["action"] for d in taken if d["run"] == 1][-1] == "start" and taken[0]["action"] == "wait"
        assert len([d for d in taken if d["action"] == "start"]) == 1
    finally:
        for admin in admins:
            admin.stop()
        cleanup()

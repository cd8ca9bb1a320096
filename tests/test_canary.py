"""Progressive delivery on the node: a canary by weight, by header or by cookie, with sticky
assignment so a user stays on one version, and the figures a canary decision reads
(success rate, p50/p99) measured by the node itself.

End to end where a client is involved (cookies, status); the placement arithmetic of
sticky splits on compiled rules alone, over ten thousand users.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter

from edgeplane.lang.compile import compile_rules
from edgeplane.model.config import Rule
from edgeplane.node.request import Request
from edgeplane.node.stats import TrafficWindow, summary

from conftest import free_port


def canary_config(port: int, stable, canary, weights: tuple[int, int], **split) -> dict:
    upstreams = [{"upstream": "stable", "weight": weights[0]}, {"upstream": "canary", "weight": weights[1]}]
    return {
        "upstreams": [{"name": "stable", "servers": [stable.server()]}, {"name": "canary", "servers": [canary.server()]}],
        "applications": [{"name": "shop", "domains": ["*"], "ports": [port], "rules": [
            {"name": "testers", "conditions": [{"var": "header", "name": "X-Canary", "op": "eq", "values": ["always"]}],
             "actions": [{"proxy": {"upstream": "canary"}}]},
            {"name": "everyone", "actions": [{"split": {"upstreams": upstreams, **split}}]},
        ]}],
    }


def visit(port: int, cookie: str | None = None, headers: dict | None = None) -> tuple[str, str | None]:
    """(pod that answered, Set-Cookie of the answer) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200, body
    return json.loads(body)["pod"], response.getheader("Set-Cookie")


def test_a_cookie_pins_each_client_to_the_version_it_was_first_given(node, echo):
    stable, canary = echo("stable"), echo("canary")
    port = free_port()
    config = canary_config(port, stable, canary, (80, 20), cookie="version", cookie_max_age="1h")
    started = node(config)
    clients = {}
    for number in range(100):
        pod, set_cookie = visit(port)
        assert set_cookie == f"version={pod}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"
        clients[number] = pod
    assert 5 <= Counter(clients.values())["canary"] <= 40
    assert all(visit(port, f"version={pod}") == (pod, None) for pod in clients.values())

    config["applications"][0]["rules"][1]["actions"][0]["split"]["upstreams"][1]["weight"] = 50  # ramp up
    old = started.versions()
    started.write_config(config)
    started.wait_version_change(old)
    assert all(visit(port, f"version={pod}") == (pod, None) for pod in clients.values())

    config["applications"][0]["rules"][1]["actions"][0]["split"]["upstreams"][1]["weight"] = 0  # roll back
    old = started.versions()
    started.write_config(config)
    started.wait_version_change(old)
    assert visit(port, "version=canary") == ("stable", "version=stable; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600")
    assert visit(port, "version=canary", {"X-Canary": "always"}) == ("canary", None)  # testers still reach it


def test_the_node_measures_each_upstreams_success_rate_and_latency(node, echo):
    stable, canary = echo("stable"), echo("canary")
    port = free_port()
    started = node(canary_config(port, stable, canary, (100, 0)), workers=2)
    for path in ["/"] * 15 + ["/status/503"] * 5:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"X-Canary": "always"})
        conn.getresponse().read()
        conn.close()
    stats = started.status()["upstream_stats"]
    figures = stats["upstreams"]["canary"]
    assert (figures["requests"], figures["failures"], figures["success_rate"]) == (20, 5, 0.75)
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] < 5000
    assert sum(figures["buckets_ms"].values()) == 20
    assert "stable" not in stats["upstreams"] and stats["window_s"] >= 0


# --- placement, without sockets ---------------------------------------------------------


def placements(weights: tuple[int, int], users: list[str], sticky: str = "header:X-Canary-User") -> list[str]:
    upstreams = {"stable": "stable", "canary": "canary"}
    rule = Rule.model_validate({"actions": [{"split": {"upstreams": [
        {"upstream": "stable", "weight": weights[0]}, {"upstream": "canary", "weight": weights[1]}], "sticky": sticky}}]})
    route = compile_rules([rule], upstreams)
    placed = []
    for user in users:
        request = Request()
        request.headers = [(b"X-Canary-User", user.encode())] if user else []
        placed.append(route(request, [])[1].upstream)
    return placed


USERS = [f"user-{number}" for number in range(10_000)]


def test_a_sticky_canary_takes_its_share_and_ramping_only_moves_users_to_it():
    steps = [placements((100 - share, share), USERS) for share in (1, 5, 25, 50, 100)]
    for share, placed in zip((1, 5, 25, 50, 100), steps):
        assert abs(placed.count("canary") / len(USERS) - share / 100) < 0.02
    for before, after in zip(steps, steps[1:]):
        assert all(a == "canary" for b, a in zip(before, after) if b == "canary")


def test_a_request_without_the_sticky_key_is_drawn_by_weight_not_pinned():
    placed = placements((50, 50), [""] * 2000)
    assert 800 < placed.count("canary") < 1200


def test_quantiles_come_from_buckets_twenty_percent_wide():
    window = TrafficWindow(0.0)
    for millis in range(1, 1001):  # 1 ms .. 1 s, one each
        window.record("up", millis > 990, millis / 1000)
    figures = summary(window.snapshot(0.0)["upstreams"]["up"])
    assert figures["success_rate"] == 0.99
    assert 500 <= figures["p50_ms"] <= 600 and 990 <= figures["p99_ms"] <= 1200

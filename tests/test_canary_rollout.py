"""Automated canaries end to end: what a node serves for a canary's released weight, and
the controller of a real admin ramping, promoting and rolling back a canary on the figures
real nodes report about real upstreams (one healthy stable, one canary whose 503 rate the
test sets). (The controller's decisions on its own clock: test_canary_controller.py.)
"""

from __future__ import annotations

import http.client
import json
from collections import Counter

from conftest import free_port


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

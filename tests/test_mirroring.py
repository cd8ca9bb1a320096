"""Traffic mirroring: the client's answer never waits for the shadow nor fails because of
it; copies are marked, bounded in size and in number, and every outcome is counted.

Shadows here are slow, failing or small-minded on purpose; what they received is counted
at the shadow itself.
"""

from __future__ import annotations

import http.client
import json

from test_reload import wait_for
from test_rule_features import mirror_counts

from conftest import free_port


def mirrored_config(port: int, main, shadow, **mirror) -> dict:
    return {
        "upstreams": [{"name": "main", "servers": [main.server()]}, {"name": "shadow", "servers": [shadow.server()]}],
        "applications": [{"name": "app", "domains": ["*"], "ports": [port], "rules": [
            {"actions": [{"mirror": {"upstream": "shadow", **mirror}}, {"proxy": {"upstream": "main"}}]}]}],
    }


def post(port: int, body: bytes, path: str = "/") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body)
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    assert response.status == 200, answer
    return json.loads(answer)


def test_a_slow_and_failing_shadow_never_delays_or_fails_the_client(node, echo, backend):
    main, shadow = echo("main"), backend("shadow", delay=5.0, status=503)
    port = free_port()
    started = node(mirrored_config(port, main, shadow))
    for _ in range(10):
        assert post(port, b"order")["pod"] == "main"
    # Every answer is in while the shadow still holds its copies: nobody waited for it.
    assert mirror_counts(started) == {}
    wait_for(lambda: mirror_counts(started) == {"5xx": 10}, timeout=30, what="the shadow's ten answers")
    assert shadow.stats()["requests"] == 10


def test_copies_in_flight_to_a_slow_shadow_are_bounded_by_its_circuit_breaker(node, echo, backend):
    main, shadow = echo("main"), backend("shadow", delay=5.0)
    port = free_port()
    config = mirrored_config(port, main, shadow)
    config["upstreams"][1]["circuit_breaker"] = {"max_requests": 2}
    started = node(config)
    for _ in range(5):
        assert post(port, b"order")["pod"] == "main"
    # Two copies wait on the shadow; the others were not made, and the client never knew.
    assert mirror_counts(started) == {"skipped-circuit-breaker": 3}
    wait_for(lambda: mirror_counts(started).get("2xx") == 2, timeout=30, what="the two copies' answers")
    assert shadow.stats()["requests"] == 2


def test_copies_are_marked_and_bodies_past_the_replay_limit_are_not_copied(node, echo):
    main, shadow = echo("main"), echo("shadow")
    port = free_port()
    started = node(mirrored_config(port, main, shadow))
    assert post(port, b"x" * 1000, "/small")["body_size"] == 1000
    assert post(port, b"x" * (100 * 1024), "/large")["body_size"] == 100 * 1024  # the main upstream gets it all
    wait_for(lambda: mirror_counts(started) == {"2xx": 1, "skipped-body-too-large": 1}, what="both outcomes")
    conn = http.client.HTTPConnection("127.0.0.1", shadow.port, timeout=5)
    conn.request("GET", "/__echo/requests")
    [copy] = json.loads(conn.getresponse().read())["requests"]
    conn.close()
    assert (copy["path"], copy["body_size"], copy["headers"]["X-Edgeplane-Mirror"]) == ("/small", 1000, ["1"])

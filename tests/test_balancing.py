"""Which server gets each request: the balancing algorithms, measured through a real node
(one worker, so one balancer sees every request), plus the ring of the consistent hash on
its own, failover when a server refuses connections, passive health and backup servers.
"""

import http.client
import json
import threading
import time
from collections import Counter

from edgeplane.model.config import Pool, Server
from edgeplane.node.balance import ConsistentHash
from edgeplane.node.endpoints import Endpoint
from edgeplane.node.request import Request
from test_reload import wait_for

from conftest import app_config, free_port


def proxy(node, servers: list[dict], **upstream):
    """A one-worker node balancing over `servers`: (its listener port, the node)."""
    port = free_port()
    return port, node(app_config(servers, port, upstream=upstream))


def pods(port: int, count: int, path: str = "/", headers: dict | None = None) -> list[str]:
    """Which server answered each of `count` sequential requests; every one must succeed."""
    return answering(port, [headers or {}] * count, path)


def answering(port: int, header_sets: list[dict], path: str = "/") -> list[str]:
    """Which server answered each request, sent one at a time on one client connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answered = []
    for headers in header_sets:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        answered.append(json.loads(body)["pod"])
    conn.close()
    return answered


def owner_per_user(port: int, users: list[str]) -> dict[str, str]:
    return dict(zip(users, answering(port, [{"X-User": user} for user in users])))


def longest_run(sequence: list[str], item: str) -> int:
    longest = run = 0
    for current in sequence:
        run = run + 1 if current == item else 0
        longest = max(longest, run)
    return longest


def endpoint(node, port: int) -> dict:
    """The node's view of the server listening on `port`."""
    return next(e for e in node.status()["upstreams"]["up"] if e["address"] == f"127.0.0.1:{port}")


# --- smooth weighted round robin ---------------------------------------------------------


def test_weights_3_to_1_split_exactly_75_25_with_at_most_3_in_a_row(node, echo):
    heavy, light = echo("heavy"), echo("light")
    port, _ = proxy(node, [heavy.server(weight=3), light.server(weight=1)])
    answered = pods(port, 400)
    assert Counter(answered) == {"heavy": 300, "light": 100}
    assert longest_run(answered, "heavy") <= 3


def test_weights_5_1_1_interleave_the_light_servers_between_the_heavy_ones(node, echo):
    a, b, c = echo("a"), echo("b"), echo("c")
    port, _ = proxy(node, [a.server(weight=5), b.server(weight=1), c.server(weight=1)])
    answered = pods(port, 70)
    assert answered == ["a", "a", "b", "a", "c", "a", "a"] * 10


# --- least connections -------------------------------------------------------------------


def test_least_conn_sends_new_requests_away_from_a_server_busy_with_a_slow_one(node, echo):
    one, two = echo("one"), echo("two")
    port, started = proxy(node, [one.server(), two.server()], balance="least-conn")
    names = {f"127.0.0.1:{one.port}": "one", f"127.0.0.1:{two.port}": "two"}
    slow: list[str] = []
    request = threading.Thread(target=lambda: slow.extend(pods(port, 1, "/?delay=3s")))
    request.start()
    deadline = time.monotonic() + 5
    while not (busy := [names[e["address"]] for e in started.status()["upstreams"]["up"] if e["active"]]):
        assert time.monotonic() < deadline, "the slow request never reached a server"
        time.sleep(0.02)
    fast = pods(port, 20)
    request.join()
    assert slow == busy
    assert fast == [({"one", "two"} - set(busy)).pop()] * 20


# --- consistent hash ---------------------------------------------------------------------


def test_hash_on_a_header_keeps_each_user_on_one_server_and_spreads_users_evenly(node, echo):
    port, _ = proxy(node, [echo(name).server() for name in ("a", "b", "c")], balance="hash",
                    hash_key="header:X-User")
    users = [f"user-{number}" for number in range(1000)]
    first = owner_per_user(port, users)
    again = owner_per_user(port, users[::-1])
    assert again == first
    spread = Counter(first.values())
    assert len(spread) == 3
    # 320 ring points per server: a server's share varies with its address, ideal 333 of 1000.
    assert 200 <= min(spread.values()) and max(spread.values()) <= 470, spread


def user_request(user: str) -> Request:
    request = Request()
    request.headers = [(b"X-User", user.encode())]
    return request


def owners(addresses: list[str], requests: list[Request]) -> list[str]:
    """The address the ring over `addresses` gives each request."""
    tier = [(Endpoint("up", Server(address=address, port=8080), Pool()), 1) for address in addresses]
    ring = ConsistentHash(tier, [], "header:X-User")
    return [ring.pick(request, now=0.0).address for request in requests]


KEYS = [user_request(f"user-{number}") for number in range(10_000)]
FIVE = [f"10.0.0.{number}" for number in range(1, 6)]


def test_adding_a_fifth_server_moves_about_a_fifth_of_the_keys_all_to_it():
    before, after = owners(FIVE[:4], KEYS), owners(FIVE, KEYS)
    moved = [index for index in range(len(KEYS)) if before[index] != after[index]]
    assert 0.15 <= len(moved) / len(KEYS) <= 0.25
    assert {after[index] for index in moved} == {FIVE[4]}


def test_removing_a_server_moves_only_the_keys_it_owned():
    before, after = owners(FIVE[:4], KEYS), owners(FIVE[:3], KEYS)
    moved = {index for index in range(len(KEYS)) if before[index] != after[index]}
    assert moved == {index for index in range(len(KEYS)) if before[index] == FIVE[3]}
    assert moved


def test_a_server_added_by_reload_takes_keys_only_from_the_others_share(node, echo):
    servers = [echo(f"s{number}").server() for number in range(5)]
    port = free_port()
    config = app_config(servers[:4], port, upstream={"balance": "hash", "hash_key": "header:X-User"})
    started = node(config)
    users = [f"user-{number}" for number in range(300)]
    before = owner_per_user(port, users)
    old = started.versions()
    config["upstreams"][0]["servers"] = servers
    started.write_config(config)
    started.wait_version_change(old)
    after = owner_per_user(port, users)
    moved = [user for user in users if before[user] != after[user]]
    assert {after[user] for user in moved} == {"s4"}
    # ideal 1/5; 300 keys and 320 ring points per server leave it between these
    assert 0.08 <= len(moved) / len(users) <= 0.35


# --- peak EWMA -----------------------------------------------------------------------------


def test_ewma_prefers_a_fast_server_over_a_slow_one(node, backend):
    fast, slow = backend("fast"), backend("slow", delay=0.05)
    port, _ = proxy(node, [fast.server(), slow.server()], balance="ewma")
    answered = Counter(pods(port, 100))
    assert answered["fast"] > 80, answered


# --- failures and backups ------------------------------------------------------------------


def test_a_refused_connection_moves_the_request_to_the_next_server(node, echo, refused_port):
    # max_fails 0 keeps the dead server in rotation, so every other request is sent to it first.
    dead = {"address": "127.0.0.1", "port": refused_port(), "max_fails": 0}
    port, _ = proxy(node, [dead, echo("alive").server()])
    assert pods(port, 20) == ["alive"] * 20


def test_max_fails_marks_a_server_down_and_it_is_skipped_until_fail_timeout_passes(node, backend):
    flaky, steady = backend("flaky"), backend("steady")
    port, started = proxy(node, [flaky.server(max_fails=2, fail_timeout="4s"), steady.server()])
    flaky.stop()
    states = []
    while "down" not in states:
        assert len(states) < 4, f"still up after {states.count('up')} requests: {states}"
        assert pods(port, 1) == ["steady"]
        marked = endpoint(started, flaky.port)
        states.append(marked["state"])
    assert states[0] == "up"  # one refusal is not enough, two are
    assert 0 < marked["down_for"] <= 4, marked  # for fail_timeout, by the node's own clock
    flaky = backend("flaky", port=flaky.port)
    assert pods(port, 20) == ["steady"] * 20
    assert flaky.stats()["connects"] == 0
    wait_for(lambda: endpoint(started, flaky.port)["state"] == "up", timeout=15, what="the return after fail_timeout")
    assert "flaky" in pods(port, 4)


def test_a_backup_server_serves_only_when_every_primary_is_down(node, echo):
    first, second, backup = echo("first"), echo("second"), echo("backup")
    port, _ = proxy(node, [first.server(), second.server(), backup.server(backup=True)])
    assert set(pods(port, 40)) == {"first", "second"}
    first.stop()
    assert pods(port, 40) == ["second"] * 40
    second.stop()
    assert pods(port, 40) == ["backup"] * 40


def test_ewma_tries_a_once_slow_server_again_after_its_estimate_fades():
    from edgeplane.model.config import Pool, Server
    from edgeplane.node.balance import PeakEwma
    from edgeplane.node.endpoints import Endpoint
    slow = Endpoint("up", Server(address="127.0.0.1", port=1), Pool())
    fast = Endpoint("up", Server(address="127.0.0.1", port=2), Pool())
    slow.observe_latency(1.0, now=0.0)
    balancer = PeakEwma([(slow, 1), (fast, 1)], [])
    fast.observe_latency(0.01, now=0.0)
    assert {balancer.pick(None, 0.0) for _ in range(50)} == {fast}
    fast.observe_latency(0.01, now=59.9)  # the fast one kept serving; the slow one was idle for a minute
    assert balancer.pick(None, 60.0) is slow

"""Cluster-wide rate limits through real nodes and the real Redis on 127.0.0.1:6379 (each
test under its own key prefix): accuracy across nodes and workers, and the policies when
Redis cannot be reached, and coming back when it can."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import redis

from test_rate_limits import admitted, get, hammer, ideal_bucket

from conftest import app_config, free_port, wait_port

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix():
    """A key prefix of this test's own; the keys are removed afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"these tests need Redis on 127.0.0.1:6379 ({error}); start it with "
                    "redis-server --daemonize yes --port 6379 --save '' --appendonly no")
    name = f"test:{uuid.uuid4().hex}:"
    yield name
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


def cluster_config(echo_server, port: int, redis_url: str, prefix: str, limits: list, rules: list | None = None,
                   retry: str = "1s") -> dict:
    config = app_config([echo_server.server()], port, rules or [
        {"actions": [{"rate-limit": {"policy": limits[0]["name"]}}, {"proxy": {"upstream": "up"}}]}])
    config["settings"] = {"redis": {"url": redis_url, "key_prefix": prefix, "timeout": "200ms", "retry": retry}}
    config["rate_limits"] = limits
    return config


def test_two_nodes_of_two_workers_admit_100_per_second_within_five_percent(echo, node, prefix):
    """One token bucket of 100/s in Redis (burst 10) for 2 nodes × 2 workers; 10 s of load
    from 8 connections, 4 on each node. The cluster admits what an exact bucket admits of
    the same requests at the times they were sent — 100/s while the load exceeds it —
    within ±5 %."""
    import threading

    server = echo()
    limit = {"name": "api", "limit": 100, "window": "1s", "burst": 10, "scope": "cluster"}
    ports = [free_port(), free_port()]
    for port in ports:
        node(cluster_config(server, port, REDIS_URL, prefix, [limit]), workers=2)
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, hammer(p, 10.0, connections=4)))
               for p in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = results[ports[0]] + results[ports[1]]
    assert all(admitted(r) > 0 and admitted(r) < len(r) for r in results.values())  # both nodes admitted and refused
    expected = ideal_bucket(sent, 100, 10)
    seconds = max(t for t, _ in sent) - min(t for t, _ in sent)
    print(f"cluster, 2 nodes x 2 workers: admitted {admitted(sent)} of {len(sent)} in {seconds:.2f} s "
          f"({admitted(sent) / seconds:.1f}/s), exact bucket {expected} ({admitted(sent) / expected - 1:+.1%})")
    assert abs(admitted(sent) - expected) / expected <= 0.05, (admitted(sent), expected)


def test_a_sliding_window_in_redis_refuses_past_the_limit_with_its_headers(echo, node, prefix):
    port = free_port()
    limit = {"name": "win", "algorithm": "sliding-window", "limit": 3, "window": "1m", "scope": "cluster",
             "key": ["header:X-User"]}
    node(cluster_config(echo(), port, REDIS_URL, prefix, [limit]))
    wait_port(port)
    answers = [get(port, headers={"X-User": "ann"}) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert answers[0][1]["ratelimit"].startswith('"win";r=2;')
    # At worst the rest of this minute, then until the 3 fade to 2 in the next: 60 + 20 s.
    assert 1 <= int(answers[3][1]["retry-after"]) <= 80
    assert get(port, headers={"X-User": "bob"})[0] == 200  # another key


def test_redis_unreachable_follows_each_policy(echo, node, prefix):
    port = free_port()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    limits = [{"name": name, "limit": 2, "window": "1m", "scope": "cluster", "on_unreachable": name}
              for name in ("allow", "deny", "local")]
    rules = [{"conditions": [{"var": "path", "op": "eq", "values": [f"/{name}"]}],
              "actions": [{"rate-limit": {"policy": name}}, {"proxy": {"upstream": "up"}}]}
             for name in ("allow", "deny", "local")]
    node(cluster_config(echo(), port, nowhere, prefix, limits, rules))
    assert [get(port, "/allow")[0] for _ in range(3)] == [200, 200, 200]
    status, headers, _ = get(port, "/deny")
    assert (status, headers["retry-after"]) == (503, "1")
    assert [get(port, "/local")[0] for _ in range(3)] == [200, 200, 429]


def test_counting_moves_to_redis_once_it_comes_back(echo, node, prefix, tmp_path):
    server = echo()
    port, redis_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    limit = {"name": "api", "limit": 1000, "window": "1m", "scope": "cluster", "on_unreachable": "allow"}
    node(cluster_config(server, port, url, prefix, [limit], retry="200ms"))
    wait_port(port)
    assert get(port)[0] == 200  # Redis is not there: allowed by policy
    redis_server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(redis_port, proc=redis_server)
        client = redis.Redis(port=redis_port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(client.scan_iter(f"{prefix}*")):
            assert get(port)[0] == 200
            time.sleep(0.1)
        keys = list(client.scan_iter(f"{prefix}*"))
        assert keys == [f"{prefix}rl:api:".encode()]
        client.close()
    finally:
        redis_server.kill()
        redis_server.wait()


def test_the_redis_sliding_window_decides_and_shapes_as_the_node_does(prefix):
    """The Lua script against `shared.window_step`, from the same states (a 100 s window, so
    the moment hardly moves between the two): admitted now, delayed within this window,
    delayed into the next, refused because the next window is full."""
    import math

    from edgeplane.node.cluster_limits import SLIDING_WINDOW
    from edgeplane.node.shared import window_step
    client = redis.Redis.from_url(REDIS_URL)
    script = client.register_script(SLIDING_WINDOW)
    window, max_wait = 100.0, 1000.0
    for index, (previous, count, later) in enumerate([(1, 1, 0), (4, 3, 0), (0, 4, 0), (0, 4, 4)]):
        key = f"{prefix}shape{index}"
        now = time.time()
        current = math.floor(now / window)
        client.hset(key, mapping={"window": current, "previous": previous, "count": count, "later": later})
        admitted, remaining, wait = script(keys=[key], args=[4, window, max_wait])
        state, (expected, expected_remaining, expected_wait) = window_step(
            (current, previous, count, later), now, 4, window, max_wait)
        assert (bool(admitted), int(remaining)) == (expected, expected_remaining), (previous, count, later)
        assert abs(float(wait) - expected_wait) < 1.0, (previous, count, later)
        stored = [float(v) for v in client.hmget(key, "previous", "count", "later")]
        assert stored == list(state[1:]), (previous, count, later)
    client.close()

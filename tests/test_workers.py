"""Worker processes and draining: a node is a master supervising workers that share ports.

Each worker is its own process listening with SO_REUSEPORT; the master restarts one that
dies. SIGTERM drains: listeners close, idle connections close, requests in flight finish
(told `Connection: close`), and the node exits 0 once they have.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time

from test_reload import get, pod, refused, wait_for, worker_pids

from conftest import app_config, free_port

SLOW = 1.5  # seconds the echo backend holds the in-flight request


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc, or None once the process is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def dead(pid: int) -> bool:
    state = process_state(pid)
    return state is None or state[0] == "Z"


def test_two_workers_are_distinct_processes_that_both_serve_traffic(node, echo):
    backend = echo()
    port = free_port()
    started = node(app_config([backend.server()], port), workers=2)
    pids = worker_pids(started)
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2
    assert all(process_state(pid)[1] == started.proc.pid for pid in pids.values())  # children of the master
    for _ in range(40):  # each on a new connection, spread over the listeners by the kernel
        assert get(port)[0] == 200
    assert {line["worker"] for line in started.access_log(wait_for=40)} == {0, 1}


def test_a_killed_worker_is_restarted_and_traffic_keeps_flowing(node, echo):
    backend = echo()
    port = free_port()
    started = node(app_config([backend.server()], port), workers=2)
    before = worker_pids(started)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: dead(before[0]), what="the worker's death")
    answered = 0
    while worker_pids(started).get(0) in (None, before[0]):
        status, _, body = get(port)
        assert status == 200 and pod(body) == "echo"
        answered += 1
        assert answered < 2000, "the master did not restart the worker"
    after = worker_pids(started)
    assert after[1] == before[1] and after[0] != before[0] and started.proc.poll() is None
    for _ in range(40):
        assert get(port, "/after-restart")[0] == 200

    def logged_after_restart() -> list[dict]:
        lines = [line for line in started.access_log() if line["uri"] == "/after-restart"]
        return lines if len(lines) == 40 else []
    assert {line["worker"] for line in wait_for(logged_after_restart, what="40 log lines")} == {0, 1}


# --- draining --------------------------------------------------------------------------


def start_slow_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /?delay=%gs HTTP/1.1\r\nHost: example.test\r\n\r\n" % SLOW)
    time.sleep(0.2)  # it has reached the upstream
    return sock


def read_until_close(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def test_sigterm_finishes_the_request_in_flight_with_connection_close_then_exits_zero(node, echo):
    port = free_port()
    drain = 30.0
    started = node(app_config([echo().server()], port, settings={"limits": {"drain_timeout": f"{drain:g}s"}}), workers=2)
    slow = start_slow_request(port)
    started.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert started.proc.poll() is None, "the node exited with a request in flight"
    head, _, body = read_until_close(slow).partition(b"\r\n\r\n")
    answered = time.monotonic()
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 200") and pod(body) == "echo"
    assert b"connection: close" in [line.lower() for line in lines[1:]]
    # It exits once nothing is in flight, not when the drain timeout ends (seconds of margin
    # for a loaded machine: exiting took 2.9 s at a load average of 15 on two cores).
    assert started.proc.wait(drain / 3) == 0
    assert time.monotonic() - answered < drain / 3


def test_sigterm_at_once_refuses_new_connections_and_closes_idle_ones(node, echo):
    port = free_port()
    started = node(app_config([echo().server()], port))
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/", headers={"Host": "example.test"})
    response = idle.getresponse()
    assert response.status == 200 and response.read()
    slow = start_slow_request(port)  # keeps the node draining while the rest is observed
    signalled = time.monotonic()
    started.proc.send_signal(signal.SIGTERM)
    idle.sock.settimeout(SLOW)
    assert idle.sock.recv(1) == b""
    assert time.monotonic() - signalled < 0.8, "the idle connection was closed only at the end of the drain"
    wait_for(lambda: refused(port), timeout=0.5, what="refusing new connections while draining")
    assert started.proc.poll() is None
    idle.close()
    slow.close()

"""Limits per client address for the whole node (two workers here): open connections, on
plain and HTTPS ports together, and new TLS handshakes per second. Each test is its own
client address on the loopback network, so they share one node."""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest
import trustme

from conftest import Node, free_port, wait_port

CA = trustme.CA()
CERT = CA.issue_cert("limits.test")
CONNECTIONS = 3
HANDSHAKES = 0.05  # per second: one at once, the next 20 s later


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    plain, https = free_port(), free_port()
    config = {
        "settings": {"limits": {"connections_per_client": CONNECTIONS, "tls_handshakes_per_client": HANDSHAKES}},
        "certificates": [{"name": "c", "cert": "".join(b.bytes().decode() for b in CERT.cert_chain_pems),
                          "key": CERT.private_key_pem.bytes().decode()}],
        "applications": [{"name": "a", "domains": ["limits.test"], "ports": [plain], "https_ports": [https],
                          "certificates": ["c"], "rules": [{"actions": [{"respond": {"body": "ok"}}]}]}],
    }
    node = Node(tmp_path_factory.mktemp("limits"), config, workers=2)
    wait_port(plain)
    wait_port(https)
    yield plain, https, node
    node.stop()


def connect(port: int, source: str, tls: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if not tls:
        return sock
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context.wrap_socket(sock, server_hostname="limits.test")


def answered(sock: socket.socket, path: str) -> bool:
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: limits.test\r\n\r\n".encode())
        return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def refused(port: int, source: str, tls: bool) -> bool:
    try:
        sock = connect(port, source, tls)
    except OSError:  # (ssl.SSLError is one) closed before or during the handshake
        return True
    with sock:
        return not answered(sock, "/extra")


def counter(node: Node, metric: str, port: int) -> int:
    found = re.search(rf'^{metric}{{port="{port}"}} (\d+)$', node.metrics(), re.M)
    return int(found.group(1)) if found else 0


def workers_of(node: Node, paths: list[str], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in node.access_log() if line["uri"] in paths]
        if len(lines) == len(paths) or time.monotonic() > deadline:
            return {line["worker"] for line in lines}
        time.sleep(0.05)


def hold_on_both_workers(node: Node, port: int, source: str) -> list[socket.socket]:
    """Open the allowed connections and keep them once both workers serve some (reopening
    otherwise): then a count per worker would let any further connection in."""
    for attempt in range(50):
        held = [connect(port, source, False) for _ in range(CONNECTIONS)]
        paths = [f"/held-{attempt}-{index}" for index in range(CONNECTIONS)]
        assert all(answered(sock, path) for sock, path in zip(held, paths))
        if workers_of(node, paths) == {0, 1}:
            return held
        for sock in held:
            sock.close()
        time.sleep(0.2)  # the node sees them close and releases their counts
    raise AssertionError("the kernel never spread the connections over both workers")


def test_a_client_address_holds_at_most_its_connections_on_the_whole_node(limited):
    plain, https, node = limited
    source = "127.0.0.3"
    held = hold_on_both_workers(node, plain, source)
    before = [counter(node, "edgeplane_client_connections_refused_total", port) for port in (plain, https)]
    assert all(refused(plain, source, False) for _ in range(8))
    assert all(refused(https, source, True) for _ in range(4))  # the count is the address's, on every port
    after = [counter(node, "edgeplane_client_connections_refused_total", port) for port in (plain, https)]
    assert [a - b for a, b in zip(after, before)] == [8, 4]
    with connect(plain, "127.0.0.4", False) as other:
        assert answered(other, "/another-address")
    held.pop().close()
    for _ in range(50):  # the closed one is released when the node sees it close
        with connect(plain, source, False) as again:
            if answered(again, "/again"):
                break
        time.sleep(0.1)
    else:
        raise AssertionError("a closed connection never made room for a new one")
    for sock in held:
        sock.close()


def test_new_tls_handshakes_per_client_address_are_limited_on_the_whole_node(limited):
    _, https, node = limited
    source = "127.0.0.2"
    started = time.monotonic()
    results = [not refused(https, source, True) for _ in range(10)]
    allowed = 1 + int((time.monotonic() - started) * HANDSHAKES)  # the burst, and what refilled meanwhile
    assert results[0] and 1 <= results.count(True) <= allowed  # counted per worker, each would allow one
    assert counter(node, "edgeplane_tls_handshakes_refused_total", https) >= 10 - allowed

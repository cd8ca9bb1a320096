"""Limits per client address (per worker): open connections, and new TLS handshakes per second."""

from __future__ import annotations

import socket
import ssl

import trustme

from conftest import free_port, wait_port

CA = trustme.CA()
CERT = CA.issue_cert("limits.test")


def config(plain: int, https: int) -> dict:
    return {
        "settings": {"limits": {"connections_per_client": 3, "tls_handshakes_per_client": 0.2}},
        "certificates": [{"name": "c", "cert": "".join(b.bytes().decode() for b in CERT.cert_chain_pems),
                          "key": CERT.private_key_pem.bytes().decode()}],
        "applications": [{"name": "a", "domains": ["limits.test"], "ports": [plain], "https_ports": [https],
                          "certificates": ["c"], "rules": [{"actions": [{"respond": {"body": "ok"}}]}]}],
    }


def answered(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: limits.test\r\n\r\n")
        return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_a_client_address_holds_at_most_its_connections_and_gets_more_once_one_closes(node):
    plain, https = free_port(), free_port()
    started = node(config(plain, https))
    wait_port(plain)
    held = [socket.create_connection(("127.0.0.1", plain), timeout=5) for _ in range(3)]
    assert all(answered(sock) for sock in held)
    extra = socket.create_connection(("127.0.0.1", plain), timeout=5)
    assert not answered(extra)
    held.pop().close()
    for _ in range(50):  # the closed one is released when the node sees it close
        again = socket.create_connection(("127.0.0.1", plain), timeout=5)
        if answered(again):
            break
        again.close()
    else:
        raise AssertionError("a closed connection never made room for a new one")
    assert "edgeplane_client_connections_refused_total" in started.metrics()


def test_new_tls_handshakes_per_client_address_are_limited(node):
    plain, https = free_port(), free_port()
    started = node(config(plain, https))
    wait_port(https)
    context = ssl.create_default_context()
    CA.configure_trust(context)
    results = []
    for _ in range(4):  # one at once, then one every 5 seconds
        try:
            with socket.create_connection(("127.0.0.1", https), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="limits.test"):
                    results.append(True)
        except (ssl.SSLError, OSError):
            results.append(False)
    assert results[0] and results.count(False) >= 2
    assert "edgeplane_tls_handshakes_refused_total" in started.metrics()

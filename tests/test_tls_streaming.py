"""Bodies stream over TLS as over plain TCP: an upload arrives intact while the upstream sets
the pace, a download arrives whole, and a client that stops reading holds the upstream back
(the TLS transport's own buffers pause and resume, they do not grow)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import time

import pytest
import trustme

from conftest import app_config, free_port, wait_port

CA = trustme.CA()
SITE = CA.issue_cert("stream.test")
SIZE = 32 << 20
BLOCK = os.urandom(1 << 20)


@pytest.fixture
def https(node, backend):
    """A node proxying HTTPS on one port to a streaming backend: (port, backend)."""
    upstream = backend("stream")
    port = free_port()
    config = app_config([upstream.server()], port)
    config["applications"][0].update(ports=[], https_ports=[port], certificates=["site"])
    config["certificates"] = [{"name": "site", "cert": SITE.cert_chain_pems[0].bytes().decode(),
                               "key": SITE.private_key_pem.bytes().decode()}]
    node(config)
    wait_port(port)
    return port, upstream


def client(port: int) -> socket.socket:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="stream.test")


def test_an_upload_over_tls_arrives_intact(https):
    port, _ = https
    digest = hashlib.sha256()
    with client(port) as tls:
        tls.sendall(b"PUT /upload HTTP/1.1\r\nHost: stream.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % SIZE)
        for _ in range(SIZE // len(BLOCK)):
            digest.update(BLOCK)
            tls.sendall(BLOCK)
        response = http.client.HTTPResponse(tls)
        response.begin()
        answer = json.loads(response.read())
    assert response.status == 200
    assert answer == {"method": "PUT", "size": SIZE, "sha256": digest.hexdigest()}


def test_a_client_that_stops_reading_over_tls_holds_back_the_upstream_and_then_gets_everything(https):
    port, upstream = https
    with client(port) as tls:
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        tls.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: stream.test\r\nConnection: close\r\n\r\n" % SIZE)
        response = http.client.HTTPResponse(tls)
        response.begin()
        assert response.status == 200
        # The client reads nothing now: every buffer on the way fills, then the upstream must stop.
        time.sleep(1.5)
        sent_when_full = upstream.stats()["sent"]
        time.sleep(1.5)
        assert upstream.stats()["sent"] == sent_when_full < SIZE // 2
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
    assert received == SIZE

"""WebSocket through the node: the upgrade is carried to the upstream, and after its 101
the connection is a byte tunnel both ways until either side closes, over TCP or TLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import trustme

from conftest import free_port, wait_port


class UpgradingUpstream:
    """Answers `Upgrade: websocket` with 101 (or with `refuse`, a plain 400) and then echoes
    bytes upper-cased; records each request head it received."""

    def __init__(self, refuse: bool = False):
        self.refuse = refuse
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                self.heads.append(head)
                if b"upgrade: websocket" in head.lower() and not self.refuse:
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n" + data.upper())
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk or chunk == b"BYE":
                            return
                        conn.sendall(chunk.upper())
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nno ws\r\n" if b"upgrade" in head.lower()
                             else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")

    def stop(self) -> None:
        self.running = False
        self.sock.close()


@pytest.fixture
def upgrading():
    servers = []

    def start(**kwargs) -> UpgradingUpstream:
        server = UpgradingUpstream(**kwargs)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


CA = trustme.CA()
SITE = CA.issue_cert("ws.test")


def proxied(node, upstream: UpgradingUpstream, tls: bool = False) -> tuple[int, object]:
    """The node in front of `upstream`, on a plain port or (`tls`) an HTTPS one."""
    port = free_port()
    app = {"name": "app", "domains": ["*"], "ports": [port], "rules": [{"actions": [{"proxy": {"upstream": "ws"}}]}]}
    config = {"upstreams": [{"name": "ws", "servers": [{"address": "127.0.0.1", "port": upstream.port}]}],
              "applications": [app]}
    if tls:
        app.update(ports=[], https_ports=[port], certificates=["site"])
        config["certificates"] = [{"name": "site", "cert": SITE.cert_chain_pems[0].bytes().decode(),
                                   "key": SITE.private_key_pem.bytes().decode()}]
    started = node(config)
    wait_port(port)
    return port, started


def connect(port: int, tls: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if not tls:
        return sock
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context.wrap_socket(sock, server_hostname="ws.test")


HANDSHAKE = (b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def read_until(sock: socket.socket, marker: bytes, limit: float = 5.0) -> bytes:
    data, deadline = b"", time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_websocket_upgrade_becomes_a_two_way_tunnel(node, upgrading, tls):
    upstream = upgrading()
    port, started = proxied(node, upstream, tls)
    with connect(port, tls) as sock:
        sock.sendall(HANDSHAKE)
        head = read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: websocket" in head and b"Connection: Upgrade" in head
        assert b"Sec-WebSocket-Accept: test" in head
        for message in (b"hello", b"x" * 100_000, b"again"):
            sock.sendall(message)
            assert read_until(sock, message.upper()[-5:]).endswith(message.upper()[-5:])
    forwarded = upstream.heads[0].lower()
    assert b"upgrade: websocket" in forwarded and b"connection: upgrade" in forwarded
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in forwarded
    log = started.access_log(wait_for=1)
    assert log[-1]["status"] == 101 and log[-1]["bytes_in"] >= 100_010


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_client_sees_the_tunnel_close_when_the_upstream_closes_it(node, upgrading, tls):
    port, _ = proxied(node, upgrading(), tls)
    with connect(port, tls) as sock:
        sock.sendall(HANDSHAKE)
        read_until(sock, b"\r\n\r\n")
        sock.sendall(b"BYE")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                break
        else:
            pytest.fail("the node kept the client side of a closed tunnel open")


def test_a_refused_upgrade_is_an_ordinary_response_and_the_connection_goes_on(node, upgrading):
    port, _ = proxied(node, upgrading(refuse=True))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(HANDSHAKE + b"GET /next HTTP/1.1\r\nHost: ws.test\r\n\r\n")
        data = read_until(sock, b"plain")
        assert data.startswith(b"HTTP/1.1 400 ") and data.endswith(b"plain")


def test_upgrades_other_than_websocket_are_not_carried(node, upgrading):
    upstream = upgrading()
    port, _ = proxied(node, upstream)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        assert read_until(sock, b"plain").startswith(b"HTTP/1.1 200 ")
    forwarded = upstream.heads[0].lower()
    assert b"upgrade" not in forwarded and b"http2-settings" not in forwarded

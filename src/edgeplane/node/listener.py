"""HTTPS listeners: accept, read the ClientHello before OpenSSL does, choose the context.

The ClientHello is peeked (`MSG_PEEK`), never consumed, so the handshake then runs on the
untouched socket with the context of the application the name belongs to: its own
certificate, versions, ciphers and client CAs, with nothing inherited from a front
context. While a hello is incomplete the socket's low-water mark is raised to the size the
record announces, so the loop wakes once it has arrived instead of spinning; a hello that
does not arrive within `client_header_timeout` is dropped. The handshake and the connection
then belong to `tls_transport.py`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

from .client import ClientConnection
from .clienthello import MAX_HELLO, ClientHello, NotTls, read_hello
from .tls import TlsSession
from .tls_transport import TlsHandshake, TlsTransport

if TYPE_CHECKING:
    from .worker import Worker

ACCEPT_BATCH = 64  # connections accepted per wake-up of the listening socket
DEFER_ACCEPT = 5   # seconds the kernel keeps a silent new connection before handing it over anyway


class TlsListener:
    __slots__ = ("worker", "port", "sock", "loop", "closed")

    def __init__(self, worker: Worker, port: int, sock: socket.socket):
        self.worker = worker
        self.port = port
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.closed = False
        # The kernel hands a connection over once its first bytes (the ClientHello) are in, so
        # the usual hello is read at once: no wake-up, failed peek and timer per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
        self.loop.add_reader(sock.fileno(), self.accept)

    def accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors and the like: try again on the next wake-up
                return
            admitted, counted = self.worker.client_limits.admit(
                address[0], self.worker.runtime.limits.connections_per_client, self.port)
            if not admitted:
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            PendingHello(self, conn, address, counted).read()

    def hand_over(self, pending: PendingHello, hello: ClientHello) -> None:
        worker = self.worker
        site = worker.runtime.tls_site(self.port, hello.server_name)
        if site is None or not worker.client_limits.handshake(
                pending.address, worker.runtime.limits.tls_handshakes_per_client, self.port):
            self.refuse(pending)
            return
        try:
            context = worker.contexts.get(site)
        except (OSError, ssl.SSLError, ValueError) as error:
            worker.tls_failure(site, error)
            self.refuse(pending)
            return
        session = TlsSession(hello, site.policy.client_auth is not None)
        try:
            pending.conn = context.wrap_socket(pending.conn, server_side=True, do_handshake_on_connect=False)
        except OSError:
            self.refuse(pending)
            return

        def handed_over(sock: ssl.SSLSocket) -> None:
            TlsTransport(sock, ClientConnection(worker, self.port, session, pending.counted), pending.peer)

        def failed() -> None:
            worker.metrics.handshake_failed()
            self.refuse(pending)
        TlsHandshake(pending.conn, worker.runtime.limits.client_header_timeout, handed_over, failed)

    def refuse(self, pending: PendingHello) -> None:
        """Close a connection that never became a client connection (its count ends here)."""
        pending.conn.close()
        if pending.counted is not None:
            self.worker.client_limits.release(pending.counted)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class PendingHello:
    """An accepted connection until its handshake: the ClientHello may not have fully arrived."""

    __slots__ = ("listener", "conn", "peer", "address", "counted", "timer", "seen", "lowered")

    def __init__(self, listener: TlsListener, conn: socket.socket, peer: tuple, counted: str | None):
        self.listener = listener
        self.conn: socket.socket = conn  # an ssl.SSLSocket once its context is chosen
        self.peer = peer
        self.address: str = peer[0]
        self.counted = counted  # the address it counts against, to release if it never becomes a client
        self.timer: asyncio.TimerHandle | None = None
        self.seen = -1        # bytes peeked at the last wake-up
        self.lowered = False  # the low-water mark was raised and must be put back

    def read(self) -> None:
        try:
            data = self.conn.recv(MAX_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self.wait(1)
            return
        except OSError:
            self.drop()
            return
        if not data or len(data) == self.seen:  # closed, or closed before the rest arrived
            self.drop()
            return
        self.seen = len(data)
        try:
            found = read_hello(data)
        except NotTls:
            self.drop()
            return
        if isinstance(found, int):
            self.wait(found)
            return
        self.stop_waiting()
        self.listener.hand_over(self, found)

    def wait(self, size: int) -> None:
        if size > 1:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
            self.lowered = True
        if self.timer is None:
            loop = self.listener.loop
            loop.add_reader(self.conn.fileno(), self.read)
            self.timer = loop.call_later(self.listener.worker.runtime.limits.client_header_timeout, self.drop)

    def stop_waiting(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.listener.loop.remove_reader(self.conn.fileno())
        if self.lowered:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def drop(self) -> None:
        if self.conn.fileno() >= 0:
            self.stop_waiting()
            self.listener.refuse(self)

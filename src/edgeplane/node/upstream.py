"""The upstream side of a proxied request: one keep-alive HTTP/1.1 connection to a server.

It parses responses with httptools and hands each event to the exchange it currently
serves; between exchanges it sits idle in its endpoint's pool. It makes no routing or
retry decisions: those belong to `exchange.py`.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .exchange import Exchange


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "endpoint", "transport", "parser", "exchange", "served", "idle_since", "closed",
        "deadline", "headers", "reason", "received", "poisoned", "reading_paused", "tunneling",
    )

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.served = 0
        self.idle_since = 0.0
        self.closed = False
        self.deadline = 0.0
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.received = False
        self.poisoned = False
        self.reading_paused = False
        self.tunneling = False

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.endpoint.breaker.connections += 1

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if self.tunneling:
            exchange.tunnel_down(data)
            return
        if exchange is None:
            self.close()  # bytes on an idle connection: the server broke the protocol
            return
        self.received = True
        exchange.upstream_data_arrived(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if not exchange.switching:
                self.fail("upstream switched protocols without being asked to")
                return
            self.tunneling = True
            exchange.tunnel_open(data[upgrade.args[0]:] if upgrade.args else b"")
        except httptools.HttpParserError as error:
            self.fail(f"invalid response from upstream: {error}")
        else:
            # A head with no body yet in this packet goes out now (SSE, long polls); with the
            # body in the same packet it went out with it, in one write.
            if exchange.pending_head is not None and self.exchange is exchange:
                exchange.flush_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.endpoint.breaker.connections -= 1
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    # --- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        if self.exchange is None:
            self.poisoned = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.response_head(self.parser.get_status_code(), self.reason, self.headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)
        else:
            self.poisoned = True

    def on_message_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.response_complete(self.parser.should_keep_alive())

    # --- used by the exchange and the pool --------------------------------------------

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_reading(self) -> None:
        """The client is not taking the response as fast as it comes: stop reading it."""
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def fail(self, cause: str) -> None:
        exchange = self.exchange
        self.exchange = None
        self.close()
        if exchange is not None:
            exchange.upstream_failed(cause, 502)

    def detach(self) -> None:
        """The exchange is done with this connection (its response ended or was skipped)."""
        self.exchange = None
        self.deadline = 0.0
        self.served += 1
        if self.reading_paused:  # a pooled connection must not stay paused for its next user
            self.resume_reading()

    def end_bodiless_response(self) -> bool:
        """A response the parser cannot know has no body (to HEAD) ends at its head: start
        the next one with a fresh parser. Returns whether the connection may be reused."""
        keep = self.parser.should_keep_alive()
        self.parser = httptools.HttpResponseParser(self)
        return keep

    def reusable(self) -> bool:
        return not (self.closed or self.poisoned) and not self.transport.is_closing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


async def open_connection(endpoint: Endpoint, timeout: float) -> UpstreamConnection:
    """A new connection to an endpoint, counted; a failure (OSError, TimeoutError) counts
    against the endpoint's passive health before it is raised."""
    loop = asyncio.get_running_loop()
    context, server_name = endpoint.tls or (None, None)
    try:
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(endpoint), endpoint.address, endpoint.port,
                                   ssl=context, server_hostname=server_name), timeout or None)
    except (TimeoutError, OSError):
        endpoint.failed(monotonic())
        raise
    endpoint.connects += 1
    return connection

"""Traffic mirroring: one copy of a finished request to a shadow upstream, answer discarded.

A mirror exchange borrows a pooled upstream connection like a real exchange does, but
nothing it meets (no server, a refused connection, an error, a slow answer) reaches the
client or delays it: each outcome is only counted in `edgeplane_mirror_requests_total` —
the status class of the shadow's answer, or how the copy failed or why it was skipped.
Copies count against the shadow upstream's circuit breaker (at most `MIRROR_IN_FLIGHT` at
once when it sets no `max_requests`), so a slow shadow costs bounded memory and
connections. Mirrored requests carry `X-Edgeplane-Mirror: 1` so the shadow can tell.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any

from .telemetry import STATUS_CLASSES
from .upstream import UpstreamConnection, open_connection
from .wire import request_head

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .worker import Worker

MIRROR_MARK = b"X-Edgeplane-Mirror: 1\r\n"
MIRROR_IN_FLIGHT = 1024  # copies in flight per shadow upstream and worker, unless its breaker says


class MirrorExchange:
    __slots__ = ("worker", "upstream", "request", "data", "endpoint", "conn", "final_head", "head_only", "breaker",
                 "result")
    switching = False  # a mirror never switches protocols
    pending_head = None  # nor holds a head for a client

    def __init__(self, worker: Worker, upstream: Any, request: Any, client_ip: bytes, body: bytes):
        self.worker = worker
        self.upstream = upstream
        self.request = request
        self.endpoint: Endpoint | None = None
        self.conn: UpstreamConnection | None = None
        self.final_head = False
        self.breaker = None
        self.result = ""
        self.head_only = request.method == "HEAD"
        framing = b"Content-Length: %d\r\n\r\n" % len(body) if body or request.content_length >= 0 else b"\r\n"
        self.data = (client_ip, framing, body)

    def start(self) -> None:
        breaker = self.upstream.breaker
        if (breaker.max_requests is None and breaker.requests >= MIRROR_IN_FLIGHT) or breaker.admit() is not None:
            self.done("skipped-circuit-breaker")
            return
        self.breaker = breaker
        endpoint = self.upstream.balancer.pick(self.request, monotonic(), ())
        if endpoint is None:
            self.done("no-server")
            return
        self.endpoint = endpoint
        connection = endpoint.take_idle()
        if connection is not None:
            self.attach(connection)
        elif breaker.may_connect() is not None:
            self.done("skipped-circuit-breaker")
        else:
            breaker.pending += 1
            self.worker.spawn(self.open(endpoint))

    async def open(self, endpoint: Endpoint) -> None:
        try:
            connection = await open_connection(endpoint, self.upstream.timeouts.connect)
        except (TimeoutError, OSError):
            connection = None
        finally:
            self.breaker.pending -= 1
        if connection is None:
            self.done("connect-failed")
        else:
            self.attach(connection)

    def attach(self, connection: UpstreamConnection) -> None:
        self.conn = connection
        connection.exchange = self
        connection.received = False
        self.endpoint.active += 1
        self.worker.busy.add(connection)
        connection.deadline = monotonic() + self.upstream.timeouts.read
        client_ip, framing, body = self.data
        head = request_head(self.request, self.upstream, self.endpoint.label, client_ip, framing, MIRROR_MARK)
        connection.write(head + body)

    # --- the upstream connection's calls (the same interface an Exchange offers) ---------

    def upstream_data_arrived(self, connection: UpstreamConnection) -> None:
        connection.deadline = monotonic() + self.upstream.timeouts.read

    def response_head(self, status: int, reason: bytes, headers: list) -> None:
        if status < 200:
            return
        self.final_head = True
        self.result = STATUS_CLASSES[min(status // 100, 5) - 1]
        if self.head_only:
            self.response_complete(self.conn.end_bodiless_response())

    def response_body(self, chunk: bytes) -> None:
        return  # discarded by design: the shadow's answer goes nowhere

    def response_complete(self, keep_upstream: bool) -> None:
        if self.final_head:
            self.release(keep_upstream)
            self.done(self.result)

    def upstream_lost(self, connection: UpstreamConnection, exc: Exception | None) -> None:
        self.release(False)
        self.done("reset")

    def upstream_failed(self, cause: str, status: int) -> None:
        self.release(False)
        self.done("invalid-answer")

    def upstream_timeout(self) -> None:
        self.release(False)
        self.done("timeout")

    def upstream_paused(self, paused: bool) -> None:
        return  # a mirror's body is sent whole; nothing to hold back

    # --- the end ----------------------------------------------------------------------

    def release(self, keep: bool) -> None:
        connection, self.conn = self.conn, None
        if connection is None:
            return
        self.endpoint.active -= 1
        self.worker.busy.discard(connection)
        connection.detach()
        if keep:
            self.endpoint.give_back(connection, monotonic())
        else:
            connection.close()

    def done(self, result: str) -> None:
        if self.breaker is not None:
            self.breaker.leave(False)
            self.breaker = None
        self.worker.metrics.count("mirror_requests", self.upstream.name, result)

"""One request's way through the node: app lookup → rules → upstream → response → log.

The exchange owns the decisions of the proxy phase: which endpoint, when to try another
(connect failures; a reused connection that died before answering, for idempotent
requests with a replayable body; what the route's retry policy covers, when the
upstream's breaker affords it), and how failures map to 502/503/504. It streams bodies
both ways (holding at most what arrives while an upstream connection opens, and a copy of
small bodies to send again) and holds the runtime it started with until it ends. What a
retry policy covers lives in `retry.py`, the limits in `breaker.py`.
"""

from __future__ import annotations

import asyncio
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING

from ..lang.compile import LocalResponse, Suspend
from .acme import CHALLENGE_PREFIX, challenge_answer
from .mirror import MirrorExchange
from .retry import CONNECT_FAILURE, RESET
from .upstream import UpstreamConnection, open_connection
from .wire import (
    CONNECTION,
    LENGTH,
    SPELLINGS,
    TRANSFER,
    UPGRADE,
    apply_header_ops,
    connection_header,
    connection_tokens,
    end_to_end_lines,
    error_response,
    header_class,
    request_head,
    serialize_local,
    status_line,
)
from .wire import (
    chunk as chunk_of,
)

if TYPE_CHECKING:
    from .breaker import Breaker
    from .client import ClientConnection
    from .endpoints import Endpoint
    from .request import Request
    from .retry import RetryPolicy
    from .runtime import Runtime, UpstreamRuntime

NOT_DROPPABLE = frozenset({b"close", b"keep-alive", b"content-length", b"transfer-encoding"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are kept to be sent again (unless a policy says)
STATUS = "status"  # a retry condition: the answer's status
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    """Class attributes are the defaults; an exchange sets only what differs (it is made for
    every request, so its construction is kept to a handful of assignments)."""

    app = None
    rule: object = -1
    upstream: UpstreamRuntime | None = None
    endpoint: Endpoint | None = None
    conn: UpstreamConnection | None = None
    tried: tuple = ()
    reused = False
    retried = False
    replay: tuple | list | None = ()  # the body as sent, for the one safe retry; None: too big
    replay_size = 0
    pending_head: bytes | None = None
    head_sent = False
    final_head = False
    status = 0
    chunk_out = False
    until_close = False
    head_only = False
    keep_client = True
    bytes_out = 0
    done = False
    connected_at = 0.0
    sent_at = 0.0
    upstream_status = 0
    error = ""
    continue_sent = False
    last_error = ""
    timed_out = False
    upstream_keep = False
    deadline = 0.0      # the route's timeout for the whole exchange
    try_deadline = 0.0  # the route's backend timeout for this attempt
    timeout: float | None = None
    backend_timeout: float | None = None
    switching = False   # the upstream answered 101 to a WebSocket upgrade
    upstream_full = False  # the upstream connection's write buffer is full
    bytes_in = 0        # bytes the client sent through a tunnel
    retry_policy: RetryPolicy | None = None
    replay_limit = REPLAY_LIMIT
    breaker: Breaker | None = None  # the upstream's, once it counts this request
    breaker_limit = ""  # the circuit-breaker limit that refused this request
    attempt = 1         # tries so far
    retrying = False    # the breaker counts this request's try as a retry in flight
    retry_log = ""      # why each retry was sent or refused, for the access log

    def __init__(self, client: ClientConnection, request: Request, runtime: Runtime):
        self.client = client
        self.request = request
        self.runtime = runtime
        self.ops: list = []
        self.started = request.start

    # --- route phase ------------------------------------------------------------------

    def start(self) -> None:
        self.guarded(self.route)

    def guarded(self, phase, *args) -> None:
        try:
            phase(*args)
        except Exception as error:  # a rule that fails at run time must not take the connection
            if self.head_sent or self.done:
                raise
            self.release(close=True)
            self.fail_local(500, f"the rules of this route failed: {type(error).__name__}: {error}")

    def route(self) -> None:
        request = self.request
        if self.runtime.acme_challenges is not None and request.uri_path.startswith(CHALLENGE_PREFIX):
            if self.acme_challenge():
                return
        app = self.client.application(self.runtime, request.host)
        if app is None:
            self.fail_local(404, f"no application serves host {request.host!r} on port {self.client.port}")
            return
        self.app = app
        self.rule, outcome = app.route(request, self.ops)
        self.decide(outcome)

    def decide(self, outcome: object) -> None:
        if outcome.__class__ is Suspend:
            self.suspend(outcome)
        elif outcome is None:
            self.fail_local(404, f"no rule of application {self.app.name!r} routes this request")
        elif isinstance(outcome, LocalResponse):
            self.respond(outcome)
        else:
            upstream = self.upstream = outcome.upstream
            limit = upstream.breaker.admit()
            if limit is not None:
                self.refuse(limit)
                return
            self.breaker = upstream.breaker
            self.timeout, self.backend_timeout = outcome.timeout, outcome.backend_timeout
            if outcome.retry is not None:
                self.retry_policy = outcome.retry
                self.replay_limit = outcome.retry.replay_limit
            if self.timeout or self.backend_timeout:
                if self.timeout:
                    self.deadline = self.started + self.timeout
                self.client.worker.timed.add(self)
            self.connect()

    def acme_challenge(self) -> bool:
        """Answer an ACME HTTP-01 validation (plain ports only) before any rule sees it."""
        answer = challenge_answer(self.runtime.acme_challenges, self.request.uri_path)
        if answer is None or self.request.scheme != "http":
            return False
        self.respond(LocalResponse(200, [(b"Content-Type", b"application/octet-stream")], answer))
        return True

    def suspend(self, suspended: Suspend) -> None:
        """A rule step must wait: once it is over, the chain goes on after that step."""
        waiting = suspended.waiting
        future = waiting if asyncio.isfuture(waiting) else asyncio.ensure_future(waiting)
        future.add_done_callback(partial(self.resume, suspended))

    def resume(self, suspended: Suspend, future: asyncio.Future) -> None:
        if self.done:  # the client left meanwhile
            if not future.cancelled():
                future.exception()  # retrieved, so asyncio does not report it
            return
        self.guarded(self.resumed, suspended, future.result)

    def resumed(self, suspended: Suspend, result) -> None:
        outcome = result()
        if outcome is None:
            self.rule, outcome = suspended.resume()
        else:
            self.rule = suspended.label
        self.decide(outcome)

    # --- local responses --------------------------------------------------------------

    def fail_local(self, status: int, cause: str) -> None:
        self.error = cause
        self.respond(error_response(status, cause, self.request.request_id))

    def refuse(self, limit: str) -> None:
        """The upstream's circuit breaker is open: fail fast instead of waiting."""
        self.breaker_limit = limit
        upstream = self.upstream
        self.fail_local(503, f"circuit breaker of upstream {upstream.name!r} is open: "
                             f"{upstream.breaker.describe(limit)}")

    def failure_status(self, timed_out: bool = False) -> int:
        """Of a request whose tries all failed to connect or were reset: with a retry policy
        the upstream is unavailable (503, as Envoy says), without one it failed (502)."""
        return 504 if timed_out else 503 if self.retry_policy is not None else 502

    def respond(self, response: LocalResponse, close: bool = False) -> None:
        request = self.request
        keep = not close and request.complete and self.client.may_keep_alive(request)
        data = serialize_local(response, self.ops, request.method == "HEAD", keep, request.version == "1.0")
        self.status = response.status
        self.bytes_out = len(data)
        self.head_sent = True
        self.client.write(data)
        self.finish(keep)

    # --- connecting -------------------------------------------------------------------

    def connect(self, failover: bool = False) -> None:
        """Pick the server of the next try: one not tried yet when there is one; after a
        connect failure (`failover`) only such a one, while a retry may go back to any."""
        if self.done:
            return  # a retry's backoff outlived its request
        upstream = self.upstream
        endpoint = upstream.single
        if endpoint is None or endpoint.down_until or self.tried:
            endpoint = upstream.balancer.pick(self.request, monotonic(), self.tried)
            if endpoint is None and self.tried and not failover:
                endpoint = upstream.balancer.pick(self.request, monotonic(), ())
        if endpoint is None:
            if not failover:
                self.fail_local(503, f"no available server in upstream {upstream.name!r}")
            elif not self.try_again(CONNECT_FAILURE, CONNECT_FAILURE):  # every server refused: later, maybe
                self.fail_local(self.failure_status(self.timed_out),
                                f"could not connect to upstream {upstream.name!r}: {self.last_error}")
            return
        self.endpoint = endpoint
        connection = endpoint.take_idle()
        if connection is not None:
            self.attach(connection, reused=True)
            return
        limit = self.breaker.may_connect()
        if limit is not None:
            self.refuse(limit)
        else:
            self.open_new(endpoint)

    def open_new(self, endpoint: Endpoint) -> None:
        self.breaker.pending += 1
        self.client.worker.spawn(self.open(endpoint))

    async def open(self, endpoint: Endpoint) -> None:
        timeout = self.upstream.timeouts.connect
        breaker = self.breaker
        try:
            connection = await open_connection(endpoint, timeout)
        except (TimeoutError, OSError) as error:
            connection, failure = None, error
        finally:
            breaker.pending -= 1
        if connection is None:
            timed_out = isinstance(failure, asyncio.TimeoutError)
            if self.done:
                return
            self.timed_out = timed_out
            self.last_error = (f"{endpoint.label}: connect timed out after {timeout:g}s" if timed_out
                               else f"{endpoint.label}: {failure.strerror or failure}")
            self.gateway_error(endpoint, CONNECT_FAILURE)
            self.tried += (endpoint,)
            self.connect(failover=True)
            return
        if self.done:
            endpoint.give_back(connection, monotonic())
            return
        self.attach(connection, reused=False)

    def attach(self, connection: UpstreamConnection, reused: bool) -> None:
        request, endpoint = self.request, self.endpoint
        self.conn = connection
        self.reused = reused
        connection.exchange = self
        connection.received = False
        if self.client.write_paused:
            connection.pause_reading()
        endpoint.active += 1
        endpoint.requests += 1
        self.client.worker.busy.add(connection)
        now = monotonic()
        self.connected_at = now
        if self.backend_timeout:
            self.try_deadline = now + self.backend_timeout
        parts = [self.request_head()]
        body = request.body
        if body:
            for chunk in body:
                parts.append(self.encode_body(chunk))
            self.remember(body)
        request.body = None
        if request.complete:
            if request.chunked:
                parts.append(self.body_end())
            self.sent_at = now
            connection.deadline = now + self.upstream.timeouts.read
        else:
            request.exchange = self
            if request.expect_continue and not body and not self.continue_sent and request.version == "1.1":
                self.continue_sent = True
                self.client.write(CONTINUE)
            self.client.unblock_body()
        connection.write(b"".join(parts))
        if request.complete and request.mirrors:  # the request itself went first
            self.send_mirrors(request.mirrors)

    def request_head(self) -> bytes:
        request = self.request
        if request.chunked:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        elif request.content_length >= 0:
            framing = b"Content-Length: %d\r\n\r\n" % request.content_length
        else:
            framing = b"\r\n"
        extra = b"Connection: Upgrade\r\nUpgrade: %s\r\n" % request.upgrade if request.upgrade else b""
        return request_head(request, self.upstream, self.endpoint.label, self.client.peer_ip, framing, extra)

    def send_mirrors(self, mirrors: list) -> None:
        """Copies go out once the whole request is known (and once, even if it is retried);
        their fate never touches this exchange."""
        request = self.request
        request.mirrors = None
        worker = self.client.worker
        if self.replay is None:
            for upstream in mirrors:
                worker.metrics.count("mirror_requests", upstream.name, "skipped-body-too-large")
            return
        body = b"".join(self.replay)
        for upstream in mirrors:
            MirrorExchange(worker, upstream, request, self.client.peer_ip, body).start()

    def encode_body(self, data: bytes) -> bytes:
        return chunk_of(data) if self.request.chunked else data

    def body_end(self) -> bytes:
        request = self.request
        if not request.chunked:
            return b""
        trailers = b"".join(b"%s: %s\r\n" % pair for pair in request.trailers or ())
        return b"0\r\n" + trailers + b"\r\n"

    def remember(self, chunks: list[bytes]) -> None:
        if self.replay is None:
            return
        self.replay_size += sum(len(c) for c in chunks)
        self.replay = None if self.replay_size > self.replay_limit else [*self.replay, *chunks]

    # --- request body, streamed by the client connection -------------------------------

    def request_body(self, chunk: bytes) -> None:
        self.remember([chunk])
        if self.conn is not None:
            self.conn.write(self.encode_body(chunk))

    def request_complete(self) -> None:
        connection = self.conn
        if connection is None:
            return
        end = self.body_end()
        if end:
            connection.write(end)
        self.sent_at = monotonic()
        if not self.final_head and not self.upstream_full:
            connection.deadline = self.sent_at + self.upstream.timeouts.read
        if request_mirrors := self.request.mirrors:
            self.send_mirrors(request_mirrors)

    # --- response, from the upstream connection ---------------------------------------

    def upstream_data_arrived(self, connection: UpstreamConnection) -> None:
        if self.sent_at:
            connection.deadline = monotonic() + self.upstream.timeouts.read

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        request = self.request
        if status == 101 and request.upgrade is not None:
            self.switch_protocols(reason, headers)
            return
        if status < 200:
            self.relay_interim(status, reason, headers)
            return
        detector = self.endpoint.detector
        if detector is not None:
            detector.observe_status(self.endpoint, status, monotonic())
        policy = self.retry_policy
        if policy is not None and status in policy.statuses and self.try_again(STATUS, str(status), status):
            return
        self.final_head = True
        self.status = self.upstream_status = status
        length = None
        chunked = False
        dropped: list[bytes] = []
        kept: list[tuple[bytes, bytes]] = []
        append = kept.append
        spelled = SPELLINGS.get
        for pair in headers:
            cls = spelled(pair[0], -1)
            if cls < 0:
                cls = header_class(pair[0])
            if cls == 0 or cls > UPGRADE:  # only hop-by-hop and framing headers matter here
                append(pair)
            elif cls == LENGTH:
                length = pair[1]
                append(pair)
            elif cls == TRANSFER:
                if pair[1].rstrip(b" \t").lower() != b"chunked":
                    self.upstream_failed(f"upstream used transfer coding {pair[1].decode('latin-1')!r}; "
                                         "only chunked is supported", 502)
                    return
                chunked = True
            elif cls == CONNECTION:
                dropped += [t for t in connection_tokens(pair[1]) if t not in NOT_DROPPABLE]
        if dropped:
            kept = [h for h in kept if h[0].lower() not in dropped]
        if self.ops:
            kept = apply_header_ops(kept, self.ops)
        http10 = request.version == "1.0"
        keep = self.client.may_keep_alive(request) and request.complete
        self.head_only = request.method == "HEAD" or status in (204, 304)
        parts = [status_line(status, reason)]
        for name, value in kept:
            parts += (name, b": ", value, b"\r\n")
        if not self.head_only and length is None:
            self.until_close = not chunked
            if http10:
                keep = False
            else:
                self.chunk_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
        self.keep_client = keep
        parts.append(connection_header(keep, http10))
        parts.append(b"\r\n")
        self.pending_head = b"".join(parts)
        if request.method == "HEAD":
            self.response_complete(self.conn.end_bodiless_response())

    # --- WebSocket: after a 101 the exchange is a byte tunnel until either side closes ------

    def switch_protocols(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.switching = True
        self.status = self.upstream_status = 101
        parts = [status_line(101, reason), *end_to_end_lines(headers)]
        parts.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % self.request.upgrade)
        head = b"".join(parts)
        self.head_sent = True
        self.bytes_out += len(head)
        self.client.write(head)

    def tunnel_open(self, first: bytes) -> None:
        self.refresh_tunnel()
        self.client.start_tunnel(self)
        if first:
            self.tunnel_down(first)

    def tunnel_up(self, data: bytes) -> None:
        connection = self.conn
        if connection is not None:
            self.bytes_in += len(data)
            connection.write(data)
            self.refresh_tunnel()

    def tunnel_down(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client.write(data)
        self.refresh_tunnel()

    def refresh_tunnel(self) -> None:
        """An idle tunnel lives as long as the upstream's read timeout, counted from either side."""
        if self.conn is not None:
            self.conn.deadline = monotonic() + self.upstream.timeouts.read

    def flush_head(self) -> None:
        """Send a response head still waiting for body bytes: the upstream's packet ended."""
        head, self.pending_head = self.pending_head, None
        if head is not None:
            self.head_sent = True
            self.bytes_out += len(head)
            self.client.write(head)

    def relay_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 101 or self.request.version == "1.0" or (status == 100 and self.continue_sent):
            return
        if status == 100:
            self.continue_sent = True
        parts = [status_line(status, reason), *end_to_end_lines(headers), b"\r\n"]
        self.client.write(b"".join(parts))

    def response_body(self, data: bytes) -> None:
        if self.head_only:
            return
        data = chunk_of(data) if self.chunk_out else data
        if self.pending_head is not None:
            data = self.pending_head + data
            self.pending_head = None
            self.head_sent = True
        self.bytes_out += len(data)
        self.client.write(data)

    def response_complete(self, keep_upstream: bool) -> None:
        if not self.final_head:
            return  # the end of an interim (1xx) response
        tail = b"0\r\n\r\n" if self.chunk_out else b""
        if self.pending_head is not None:
            tail = self.pending_head + tail
            self.pending_head = None
            self.head_sent = True
        if tail:
            self.bytes_out += len(tail)
            self.client.write(tail)
        self.upstream_keep = keep_upstream and self.request.complete and not self.until_close
        self.release()
        self.finish(self.keep_client)

    # --- failures ---------------------------------------------------------------------

    def upstream_lost(self, connection: UpstreamConnection, exc: Exception | None) -> None:
        if self.switching:
            self.release(close=True)
            self.client.close()
            self.finish(False)
            return
        if self.final_head and self.until_close and exc is None:
            self.response_complete(False)  # a close-delimited body ends with a clean close
            return
        request = self.request
        if (not connection.received and self.reused and not self.retried and self.replay is not None
                and request.method in IDEMPOTENT and (request.complete or request.body is None)):
            self.retry_fresh()
            return
        if self.final_head:
            self.upstream_failed("upstream closed the connection mid-response", 502)
            return
        self.gateway_error(self.endpoint, RESET)
        if not self.try_again(RESET, RESET):
            self.upstream_failed("upstream closed the connection before responding", self.failure_status())

    def retry_fresh(self) -> None:
        """A pooled connection died before answering: send the same request once more, fresh.
        It is a race every proxy has with idle timeouts, not a failure the retry budget
        counts; but it is a try, so a retry policy's attempts count it."""
        self.retried = True
        self.attempt += 1
        self.retry_log += "stale-connection,"
        self.rewind()
        self.open_new(self.endpoint)

    def try_again(self, condition: str, why: str, status: int = 0) -> bool:
        """A try failed before its response began (`condition`: connect-failure, reset or
        status): send the request again after a backoff when the route's policy covers it,
        the method and the body allow it, and the upstream affords it. True when it will (or
        when the route's timeout has passed meanwhile: then the answer is 504)."""
        policy = self.retry_policy
        if policy is None or self.attempt >= policy.attempts or not policy.covers(condition, status):
            return False
        if condition != CONNECT_FAILURE and self.request.method not in IDEMPOTENT and not policy.non_idempotent:
            return False
        if self.replay is None:
            return False
        if self.deadline and monotonic() >= self.deadline:  # the deadline's tick has not come yet
            self.abandon(504, f"request did not complete within the route's {self.timeout:g}s timeout")
            return True
        denied = self.breaker.admit_retry(self.retrying)
        if denied is not None:
            self.retrying = False
            self.retry_log += f"{why} (not retried: {denied}),"
            return False
        self.retrying = True
        self.attempt += 1
        self.retry_log += why + ","
        self.client.worker.count("retries", self.upstream.name, why)
        self.rewind()
        if self.endpoint not in self.tried:
            self.tried += (self.endpoint,)
        asyncio.get_running_loop().call_later(policy.delay(self.attempt - 1), self.connect)
        return True

    def rewind(self) -> None:
        """Take the request back from the try that failed, to send it again."""
        self.release(close=True)
        self.sent_at = 0.0
        request = self.request
        if request.body is None:  # the failed try had the body: send the copy kept
            request.body = list(self.replay or ())
            request.exchange = None
            self.replay, self.replay_size = (), 0

    def upstream_timeout(self) -> None:
        read = self.upstream.timeouts.read
        if self.switching:
            self.error = f"tunnel idle for {read:g}s"
            self.release(close=True)
            self.client.close()
            self.finish(False)
            return
        self.endpoint.failed(monotonic())
        if not self.final_head:
            self.gateway_error(self.endpoint, "timeout")
            if self.try_again(RESET, "timeout"):
                return
        self.upstream_failed(f"upstream {self.endpoint.label} did not answer within {read:g}s", 504)

    def check_deadline(self, now: float) -> None:
        """The route's own timeouts (Gateway API `timeouts.request` / `backendRequest`)."""
        if self.deadline and now >= self.deadline:
            self.abandon(504, f"request did not complete within the route's {self.timeout:g}s timeout")
        elif self.try_deadline and now >= self.try_deadline and self.conn is not None and not self.final_head:
            self.gateway_error(self.endpoint, "timeout")
            if self.try_again(RESET, "timeout"):
                return
            self.abandon(504, f"upstream {self.endpoint.label} did not answer within the route's "
                              f"{self.backend_timeout:g}s backend timeout")

    def upstream_failed(self, cause: str, status: int) -> None:
        self.abandon(status, cause)

    def gateway_error(self, endpoint: Endpoint, kind: str) -> None:
        """A try met a connect failure, a reset or a timeout: outlier detection counts it."""
        detector = endpoint.detector
        if detector is not None:
            detector.observe_error(endpoint, kind, monotonic())

    def abandon(self, status: int, cause: str) -> None:
        """Stop the upstream side; answer `status` if the response has not begun, else cut it."""
        self.error = cause
        self.release(close=True)
        if self.done:
            return
        if self.head_sent:
            self.client.abort()
            self.finish(False)
        else:
            self.pending_head = None
            self.respond(error_response(status, cause, self.request.request_id), close=not self.request.complete)

    def upstream_paused(self, paused: bool) -> None:
        """The upstream's write buffer filled (or drained): its send timeout runs while it is
        full; its read timeout starts once the whole request went out."""
        self.upstream_full = paused
        self.client.block_upstream_full(paused)
        connection = self.conn
        if connection is None:
            return
        timeouts = self.upstream.timeouts
        if paused:
            connection.deadline = monotonic() + timeouts.send
        elif self.sent_at and not self.final_head:
            connection.deadline = monotonic() + timeouts.read
        else:
            connection.deadline = 0.0

    def client_gone(self) -> None:
        """The client closed its connection before the exchange ended."""
        if self.done:
            return
        self.error = self.error or "client closed the connection"
        if not self.head_sent:
            self.status = 499
        self.release(close=True)
        self.finish(False)

    # --- the end ----------------------------------------------------------------------

    def release(self, close: bool = False) -> None:
        connection = self.conn
        if connection is None:
            return
        self.conn = None
        endpoint = self.endpoint
        endpoint.active -= 1
        self.client.worker.busy.discard(connection)
        connection.detach()
        now = monotonic()
        if close or not self.upstream_keep:
            connection.close()
        else:
            endpoint.give_back(connection, now)
        if not close and self.sent_at:
            endpoint.failures = 0  # a success: the count of consecutive failures starts again
            endpoint.observe_latency(now - self.sent_at, now)

    def finish(self, keep_alive: bool) -> None:
        if self.done:
            return
        self.done = True
        request = self.request
        request.exchange = None
        if self.breaker is not None:
            self.breaker.leave(self.retrying)
        if request.cleanups:
            for cleanup in request.cleanups:
                cleanup()
        if self.timeout or self.backend_timeout:
            self.client.worker.timed.discard(self)
        self.client.worker.observe(self)
        self.client.exchange_finished(self, keep_alive)


"""The client side of the node: one HTTP/1.1 connection, parsed strictly, answered in order.

llhttp (through httptools) refuses malformed framing; this module adds what it lets through
(transfer codings other than chunked, missing or repeated Host, HTTP/0.9 and 2.0 on this
port, oversized heads) so nothing ambiguous is forwarded. Requests are dispatched only after
a whole `feed_data` succeeded; pipelined ones wait in a queue with reading paused, so memory
stays bounded. Routing and upstream work belong to `exchange.py`.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from ..lang.compile import LocalResponse
from .exchange import Exchange
from .locate import real_client
from .request import Request, normalize_host
from .tls import TlsSession
from .wire import (
    CONNECTION,
    EXPECT,
    FORWARDED_FOR,
    HOST,
    LENGTH,
    REQUEST_ID,
    SPELLINGS,
    TRANSFER,
    UPGRADE,
    connection_tokens,
    error_response,
    header_class,
    serialize_local,
)

if TYPE_CHECKING:
    from .worker import Worker

BLOCK_PIPELINE = 1   # a request is queued behind the one being answered
BLOCK_BODY = 2       # a body is buffering while its upstream connection opens
BLOCK_UPSTREAM = 4   # the upstream is not taking the body as fast as it arrives
BLOCK_WRITE = 8      # the client is not reading its responses: read no more requests from it
BLOCK_UPGRADE = 16   # an upgrade request waits for the upstream's answer
BODY_BUFFER_LIMIT = 256 * 1024
HOST_CACHE_SIZE = 4096  # distinct Host values remembered per worker (cleared when full)

_HOST = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?$")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,200}$")
_METHODS: dict[bytes, str] = {}


class RequestRejected(Exception):
    def __init__(self, status: int, cause: str):
        super().__init__(cause)
        self.status = status
        self.cause = cause


class Rejection:
    """A queued answer to a request the node refused; the connection closes after it."""

    __slots__ = ("status", "cause")

    def __init__(self, status: int, cause: str):
        self.status = status
        self.cause = cause


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "worker", "port", "transport", "parser", "peer_ip", "current", "queue", "active",
        "served", "blocks", "deadline", "write_deadline", "closing", "in_head", "head_raw",
        "dispatching", "write_paused", "rejected", "feeding", "completed", "tunnel", "app_cache", "tls",
        "held", "counted",
    )

    def __init__(self, worker: Worker, port: int, tls: TlsSession | None = None, counted: str | None = None):
        self.worker = worker
        self.port = port
        self.tls = tls
        self.counted = counted  # the address this connection counts against (per-client limits), if any
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer_ip = b""
        self.current: Request | None = None
        self.queue: deque[Request | Rejection] = deque()
        self.active: Exchange | None = None
        self.served = 0
        self.blocks = 0
        self.deadline = 0.0
        self.write_deadline = 0.0
        self.closing = False
        self.in_head = False
        self.head_raw = 0    # bytes received while a head was incomplete; bounds a head that never ends
        self.feeding = 0     # size of the data being parsed now
        self.completed = 0   # requests parsed to their end on this connection
        self.app_cache: tuple | None = None
        self.tunnel: Exchange | None = None  # a switched (WebSocket) connection: bytes pass through
        self.held: bytes | None = None       # bytes after an upgrade request, until the upstream answers
        self.dispatching = False
        self.write_paused = False
        self.rejected = False

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0].encode() if peer else b""
        if self.tls is not None:  # (counted against its address when it was accepted)
            self.tls.ssl_object = transport.get_extra_info("ssl_object")
        else:
            admitted, self.counted = self.worker.client_limits.admit(
                peer[0] if peer else "", self.worker.runtime.limits.connections_per_client, self.port)
            if not admitted:
                self.closing = True
                transport.abort()
                return
        self.worker.connections.add(self)
        self.deadline = monotonic() + self.worker.runtime.limits.client_header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted is not None:
            self.worker.client_limits.release(self.counted)
        self.closing = True
        self.worker.connections.discard(self)
        if self.active is not None:
            self.active.client_gone()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_up(data)
            return
        if self.closing or self.rejected:
            return
        self.feeding = len(data)
        head_in_progress = self.in_head
        served_before = self.completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded(data, upgrade)
        except httptools.HttpParserCallbackError as error:
            rejected = error.__context__
            if not isinstance(rejected, RequestRejected):
                raise
            self.reject(rejected.status, rejected.cause)
        except httptools.HttpParserError as error:
            self.reject(400, f"malformed request: {error}")
        else:
            # Count the packet against an unfinished head when all of it belongs to that head:
            # the head was already under way, or began this packet (no message ended in it).
            if self.in_head and (head_in_progress or self.completed == served_before):
                self.head_raw += len(data)
                if self.head_raw > self.worker.runtime.limits.max_header_size:
                    self.reject(431, "request head larger than the node accepts")
        if self.active is None and self.queue:
            self.dispatch()

    def upgraded(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        request = self.queue[-1] if self.queue else None
        if isinstance(request, Request) and request.method == "CONNECT":
            self.queue.pop()
            self.reject(405, "CONNECT is not supported by this listener")
            return
        rest = data[upgrade.args[0]:] if upgrade.args else b""
        if isinstance(request, Request) and request.upgrade is not None:
            # Hold what follows until the upstream says whether it switches protocols.
            self.held = rest
            self.block(BLOCK_UPGRADE)
            return
        # Any other Upgrade was stripped as hop-by-hop, so the request went on as a plain one;
        # the bytes after it are the next request for a parser that starts afresh.
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def start_tunnel(self, exchange: Exchange) -> None:
        """The upstream switched protocols: from now on bytes pass through both ways."""
        self.tunnel = exchange
        self.deadline = 0.0
        held, self.held = self.held, None
        if held:
            exchange.tunnel_up(held)
        self.unblock(BLOCK_UPGRADE)

    def resume_after_refused_upgrade(self) -> None:
        """The upstream answered an upgrade request normally: parse what came after it."""
        held, self.held = self.held, None
        self.parser = httptools.HttpRequestParser(self)
        self.unblock(BLOCK_UPGRADE)
        if held:
            self.data_received(held)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_deadline = monotonic() + self.worker.runtime.limits.send_timeout
        self.block(BLOCK_WRITE)
        active = self.active
        if active is not None and active.conn is not None:
            active.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = 0.0
        self.unblock(BLOCK_WRITE)
        if self.active is None and self.queue:
            self.dispatch()  # answers held back while the client was not reading
        active = self.active
        if active is not None and active.conn is not None:
            active.conn.resume_reading()

    # --- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        now = monotonic()
        self.current = request = Request(now, self.port)
        if self.tls is not None:
            request.scheme, request.scheme_bytes, request.tls = "https", b"https", self.tls
        self.in_head = True
        self.head_raw = 0
        self.deadline = now + self.worker.runtime.limits.client_header_timeout

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.current.headers.append((name, value))
        else:
            request = self.current
            if request.trailers is None:
                request.trailers = []
            request.trailers.append((name, value))
            self.head_raw += len(name) + len(value) + 4  # the trailer section counts like a head
            if self.head_raw > self.worker.runtime.limits.max_header_size:
                raise RequestRejected(431, "request trailers larger than the node accepts")

    def sort_headers(self, request: Request) -> None:
        """Keep end-to-end headers in order; act on the special ones (one dict hit each)."""
        kept: list[tuple[bytes, bytes]] = []
        append = kept.append
        spelled = SPELLINGS.get
        dropped: list[bytes] | None = None
        for pair in request.headers:
            cls = spelled(pair[0], -1)
            if cls == 0:
                append(pair)
                continue
            if cls < 0:
                cls = header_class(pair[0])
                if not cls:
                    append(pair)
                    continue
            value = pair[1]
            if cls == HOST and request.host_header is None:  # nearly every request: skip the call
                request.host_header = value.rstrip(b" \t")
                continue
            extra = self.special_header(request, cls, value.rstrip(b" \t"))
            if extra:
                dropped = (dropped or []) + extra
        if dropped:
            kept = [h for h in kept if h[0].lower() not in dropped]
        request.headers = kept
        if request.upgrade is not None and not (request.connection_upgrade and request.upgrade.lower() == b"websocket"):
            request.upgrade = None  # only a complete WebSocket upgrade is carried across

    def special_header(self, request: Request, cls: int, value: bytes) -> list[bytes] | None:
        """Act on one header the proxy must understand; returns header names it makes hop-by-hop."""
        if cls == HOST:
            if request.host_header is not None:
                raise RequestRejected(400, "more than one Host header")
            request.host_header = value
        elif cls == TRANSFER:
            if value.lower() != b"chunked":
                raise RequestRejected(400, f"unsupported transfer coding {value.decode('latin-1')!r}; only chunked is accepted")
            request.chunked = True
        elif cls == LENGTH:
            request.content_length = int(value)
        elif cls == EXPECT:
            if value.lower() != b"100-continue":
                raise RequestRejected(417, f"unsupported expectation {value.decode('latin-1')!r}")
            request.expect_continue = True
        elif cls == FORWARDED_FOR:
            previous = request.forwarded_for
            request.forwarded_for = previous + b", " + value if previous else value
        elif cls == REQUEST_ID:
            if _REQUEST_ID.match(value):
                request.request_id = value
        elif cls == UPGRADE:
            request.upgrade = value
        elif cls == CONNECTION:
            tokens = connection_tokens(value)
            if b"upgrade" in tokens:
                request.connection_upgrade = True
            extra = [t for t in tokens if t not in (b"close", b"keep-alive", b"upgrade")]
            return extra or None
        # Other classes (hop-by-hop, X-Forwarded-Proto/-Host) are dropped: the node sets its own.
        return None

    def on_headers_complete(self) -> None:
        request = self.current
        parser = self.parser
        runtime = self.worker.runtime
        limits = runtime.limits
        self.in_head = False
        if self.head_raw + self.feeding > limits.max_header_size:  # only then can the head be too big
            size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
            if size > limits.max_header_size:
                raise RequestRejected(431, f"request head of {size} bytes exceeds {limits.max_header_size}")
        self.sort_headers(request)
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise RequestRejected(505 if version >= "2" else 400, f"HTTP/{version} is not accepted on this port")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS.setdefault(raw_method, raw_method.decode("ascii"))
        request.version = version
        request.method = method
        request.method_bytes = raw_method
        request.keep_alive = parser.should_keep_alive()
        request.client_ip = (real_client(self.peer_ip.decode(), request.forwarded_for, runtime.trusted)
                             if runtime.trusted and request.forwarded_for else self.peer_ip.decode())
        self.resolve_target(request)
        if not request.request_id:
            request.request_id = self.worker.next_request_id()
        max_body = limits.max_body_size
        if max_body and request.content_length > max_body:
            raise RequestRejected(413, f"request body of {request.content_length} bytes exceeds {max_body}")
        if request.chunked or request.content_length > 0:
            self.deadline = monotonic() + limits.client_body_timeout
        else:
            self.deadline = 0.0
        self.queue.append(request)
        if self.active is not None:
            self.block(BLOCK_PIPELINE)

    def resolve_target(self, request: Request) -> None:
        target = request.target
        if target[:1] != b"/":
            if target == b"*" and request.method == "OPTIONS":
                pass
            elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                try:
                    url = httptools.parse_url(target)
                except httptools.HttpParserInvalidURLError:
                    raise RequestRejected(400, "invalid absolute request target") from None
                host = b"[" + url.host + b"]" if b":" in url.host else url.host  # IPv6 literal
                authority = host + (b":%d" % url.port if url.port else b"")
                request.host_header = authority  # absolute-form wins over Host (RFC 9112 §3.2.2)
                target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
                request.target = target
            elif request.method != "CONNECT":
                raise RequestRejected(400, "request target must start with '/'")
        host = request.host_header
        hosts = self.worker.hosts
        hostname = hosts.get(host) if host is not None else None
        if hostname is None:  # a Host not seen yet by this worker: check and normalize it once
            if host is None:
                if request.version == "1.1":
                    raise RequestRejected(400, "HTTP/1.1 request without a Host header")
                request.host_header = host = b""
            elif not _HOST.match(host):
                raise RequestRejected(400, "invalid Host header")
            hostname = normalize_host(host)
            if len(hosts) >= HOST_CACHE_SIZE:
                hosts.clear()
            hosts[host] = hostname
        request.host = hostname
        cut = target.find(b"?")
        if cut < 0:
            request.uri_path = target.decode("latin-1")
        else:
            request.uri_path = target[:cut].decode("latin-1")
            request.query = target[cut + 1:].decode("latin-1")

    def on_body(self, body: bytes) -> None:
        request = self.current
        request.body_size += len(body)
        max_body = self.worker.runtime.limits.max_body_size
        if max_body and request.body_size > max_body:
            raise RequestRejected(413, f"request body exceeds {max_body} bytes")
        self.deadline = monotonic() + self.worker.runtime.limits.client_body_timeout
        exchange = request.exchange
        if exchange is not None:
            exchange.request_body(body)
        elif request.body is not None:
            request.body.append(body)
            if request.body_size > BODY_BUFFER_LIMIT:
                self.block(BLOCK_BODY)

    def on_message_complete(self) -> None:
        self.completed += 1
        request = self.current
        self.current = None
        request.complete = True
        self.deadline = 0.0
        if request.exchange is not None:
            request.exchange.request_complete()

    # --- answering, in order ----------------------------------------------------------

    def dispatch(self) -> None:
        if self.dispatching:
            return
        self.dispatching = True
        try:
            while self.active is None and self.queue and not self.closing and not self.write_paused:
                item = self.queue.popleft()
                if self.queue:
                    self.block(BLOCK_PIPELINE)
                else:
                    self.unblock(BLOCK_PIPELINE)
                if isinstance(item, Rejection):
                    self.write_rejection(item)
                    return
                self.active = Exchange(self, item, self.worker.runtime)
                self.active.start()
        finally:
            self.dispatching = False
        if self.idle and not self.closing:
            self.deadline = monotonic() + self.worker.runtime.limits.keepalive_timeout

    def exchange_finished(self, exchange: Exchange, keep_alive: bool) -> None:
        self.active = None
        self.served += 1
        self.unblock(BLOCK_BODY | BLOCK_UPSTREAM)  # those belonged to the finished exchange
        if not keep_alive or self.tunnel is not None:
            self.close()
            return
        if exchange.request.upgrade is not None:
            self.resume_after_refused_upgrade()
        if self.queue:
            self.dispatch()
        elif self.current is None:
            self.deadline = monotonic() + self.worker.runtime.limits.keepalive_timeout

    def application(self, runtime: object, host: str) -> object:
        """The application for a host on this connection's port, remembered for the next
        request of a keep-alive connection (same runtime, same host)."""
        cached = self.app_cache
        if cached is not None and cached[0] is runtime and cached[1] == host:
            return cached[2]
        app = runtime.lookup(self.port, host)
        self.app_cache = (runtime, host, app)
        return app

    @property
    def idle(self) -> bool:
        """Between requests: nothing being parsed, answered or waiting."""
        return self.current is None and self.active is None and not self.queue

    def may_keep_alive(self, request: Request) -> bool:
        return (request.keep_alive and not self.worker.draining and not self.closing
                and self.served + 1 < self.worker.runtime.limits.keepalive_requests)

    # --- refusing -----------------------------------------------------------------------

    def reject(self, status: int, cause: str) -> None:
        """Answer a bad request after those before it, then close; read nothing more."""
        self.block(BLOCK_PIPELINE)
        self.in_head = False
        current, self.current = self.current, None
        self.rejected = True  # parse nothing more from this client
        if current is not None and self.active is not None and self.active.request is current:
            self.active.abandon(status, cause)
            return
        if current is not None and current in self.queue:
            self.queue.remove(current)
        self.queue.append(Rejection(status, cause))

    def write_rejection(self, rejection: Rejection) -> None:
        response: LocalResponse = error_response(rejection.status, rejection.cause)
        self.write(serialize_local(response, [], False, False, False))
        self.worker.log_rejection(self, rejection)
        self.close()

    # --- flow control, deadlines and the transport --------------------------------------

    def block(self, reason: int) -> None:
        if not self.blocks and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.blocks |= reason

    def unblock(self, reason: int) -> None:
        if self.blocks & reason:
            self.blocks &= ~reason
            if not self.blocks and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def unblock_body(self) -> None:
        self.unblock(BLOCK_BODY)

    def block_upstream_full(self, full: bool) -> None:
        if full:
            self.block(BLOCK_UPSTREAM)
        else:
            self.unblock(BLOCK_UPSTREAM)

    def check_deadline(self, now: float) -> None:
        if self.write_deadline and now >= self.write_deadline:
            self.abort()
            return
        if not self.deadline or now < self.deadline or self.blocks:
            return  # (while the node itself is not reading, the client cannot be late)
        self.deadline = 0.0
        limits = self.worker.runtime.limits
        if self.idle:
            self.close()
        elif self.in_head:
            self.reject(408, f"request headers not received within {limits.client_header_timeout:g}s")
            self.dispatch()
        elif self.current is not None:
            self.reject(408, f"request body stalled for {limits.client_body_timeout:g}s")
            self.dispatch()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

"""A small echo backend: the quickstart's demo upstream and the tests' reference server.

It answers every request with JSON describing what it received (path, host, method,
headers, body size, namespace from $NAMESPACE, pod name), as the Gateway API conformance
echo server does, and understands `?delay=`, `/status/<code>`,
`/retry/...?uuid=&succeedAfter=&responseCode=&delayRetry=` (the first `succeedAfter`
requests of a uuid fail: answered `responseCode` after `delayRetry`, or without
`responseCode` their connection is reset), the `X-Echo-Set-Header` request header and
WebSocket echo at `/ws`. It remembers what it received: `GET /__echo/requests`, asked
directly (no X-Forwarded-For, so never through a proxy), lists it. A test and demo tool,
not a node component.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import re
from collections import deque
from urllib.parse import parse_qs, urlsplit

import httptools

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECEIVED_LIMIT = 10000  # requests remembered for /__echo/requests


def _seconds(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        return 0.0
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


class EchoState:
    """What one echo server keeps across connections: its pod name, retry counts, what it received."""

    def __init__(self, name: str):
        self.name = name
        self.retries: dict[str, int] = {}
        self.received: deque[dict] = deque(maxlen=RECEIVED_LIMIT)


def _frame(opcode_byte: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes([opcode_byte, size])
    elif size < 1 << 16:
        head = bytes([opcode_byte, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([opcode_byte, 127]) + size.to_bytes(8, "big")
    return head + payload


class EchoProtocol(asyncio.Protocol):
    def __init__(self, state: EchoState):
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_size = 0
        self.queue: asyncio.Queue | None = None
        self.websocket_key: str | None = None
        self.frames: bytes | None = None  # WebSocket bytes not yet a whole frame, once upgraded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.frames is not None:
            self.echo_frames(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0]:] if upgrade.args else b""
            if self.websocket_key is not None:
                self.accept_websocket(rest)
            else:
                self.parser = httptools.HttpRequestParser(self)
                if rest:
                    self.data_received(rest)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body_size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and urlsplit(self.url.decode("latin-1")).path == "/ws":
            fields = {name.lower(): value for name, value in self.headers}
            if fields.get("upgrade", "").lower() == "websocket" and "sec-websocket-key" in fields:
                self.websocket_key = fields["sec-websocket-key"]
                return
        request = (self.parser.get_method().decode(), self.url.decode("latin-1"), list(self.headers),
                   self.body_size, self.parser.get_http_version(), self.parser.should_keep_alive())
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.ensure_future(self.answer_in_order())
        self.queue.put_nowait(request)

    async def answer_in_order(self) -> None:
        while True:
            request = await self.queue.get()  # type: ignore[union-attr]
            await self.answer(*request)

    async def answer(self, method: str, url: str, headers: list, body_size: int, version: str,
                     keep_alive: bool) -> None:
        parts = urlsplit(url)
        if parts.path == "/__echo/requests" and not any(n.lower() == "x-forwarded-for" for n, _ in headers):
            self.send(200, json.dumps({"requests": list(self.state.received)}).encode(), b"", method, keep_alive)
            return
        query = parse_qs(parts.query)
        status = 200
        if "delay" in query:
            await asyncio.sleep(_seconds(query["delay"][0]))
        if parts.path.startswith("/status/") and parts.path[8:].isdigit():
            status = int(parts.path[8:])
        if parts.path.startswith("/retry") and "uuid" in query:
            uuid = query["uuid"][0]
            seen = self.state.retries[uuid] = self.state.retries.get(uuid, 0) + 1
            if seen <= int(query.get("succeedAfter", ["0"])[0]):
                if "delayRetry" in query:
                    await asyncio.sleep(_seconds(query["delayRetry"][0]))
                if "responseCode" not in query:  # a connection error: reset, never answered
                    self.transport.abort()
                    return
                status = int(query["responseCode"][0])
        grouped: dict[str, list[str]] = {}
        host = ""
        for name, value in headers:
            grouped.setdefault(name.title() if name.lower() != "host" else "Host", []).append(value)
            if name.lower() == "host":
                host = value
        echo = {"path": url, "host": host, "method": method, "proto": f"HTTP/{version}",
                "headers": grouped, "namespace": os.environ.get("NAMESPACE", "edgeplane"),
                "pod": self.state.name, "body_size": body_size}
        self.state.received.append(echo)
        extra = b""
        for name, value in headers:
            if name.lower() == "x-echo-set-header":
                for pair in value.split(","):
                    key, _, val = pair.partition(":")
                    if key.strip():
                        extra += f"{key.strip()}: {val.strip()}\r\n".encode("latin-1")
        self.send(status, json.dumps(echo).encode(), extra, method, keep_alive)

    def send(self, status: int, body: bytes, extra: bytes, method: str, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, len(body), extra, b"" if keep_alive else b"Connection: close\r\n",
               b"" if method == "HEAD" else body))
        if not keep_alive:
            self.transport.close()

    # --- WebSocket (RFC 6455): frames echoed back as they came, pings answered ------------

    def accept_websocket(self, rest: bytes) -> None:
        digest = hashlib.sha1(self.websocket_key.encode("latin-1") + _WEBSOCKET_GUID).digest()
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: %s\r\n\r\n" % base64.b64encode(digest))
        self.frames = b""
        self.echo_frames(rest)

    def echo_frames(self, data: bytes) -> None:
        buffer = self.frames + data
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            size, start = second & 0x7F, 2
            if size >= 126:
                start = 4 if size == 126 else 10
                if len(buffer) < start:
                    break
                size = int.from_bytes(buffer[2:start], "big")
            mask = buffer[start:start + 4] if second & 0x80 else b""
            end = start + len(mask) + size
            if len(buffer) < end:
                break
            payload = buffer[start + len(mask):end]
            if mask:
                payload = bytes(b ^ m for b, m in zip(payload, itertools.cycle(mask)))
            buffer = buffer[end:]
            opcode = first & 0x0F
            if opcode == 0x8:
                self.transport.write(_frame(0x88, payload[:2]))
                self.transport.close()
                return
            if opcode == 0x9:
                self.transport.write(_frame(0x8A, payload))
            elif opcode in (0x0, 0x1, 0x2):
                self.transport.write(_frame(first & 0x8F, payload))
        self.frames = buffer


async def serve(host: str, port: int, name: str) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    state = EchoState(name)
    return await loop.create_server(lambda: EchoProtocol(state), host, port, reuse_address=True)


async def run(address: str, name: str = "demo-backend") -> None:
    host, _, port = address.rpartition(":")
    server = await serve(host or "127.0.0.1", int(port), name)
    async with server:
        await server.serve_forever()

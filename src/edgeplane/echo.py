"""A small echo backend: the quickstart's demo upstream and the tests' reference server.

It answers every request with JSON describing what it received (path, host, method,
headers, body size), as the Gateway API conformance echo server does, and understands
`?delay=`, `/status/<code>`, `/retry/...?uuid=&succeedAfter=&responseCode=` and the
`X-Echo-Set-Header` request header. It is a test and demo tool, not a node component.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from urllib.parse import parse_qs, urlsplit

import httptools

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def _seconds(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        return 0.0
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


class EchoProtocol(asyncio.Protocol):
    retries: dict[str, int] = {}

    def __init__(self, name: str):
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_size = 0
        self.queue: asyncio.Queue | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
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
        query = parse_qs(parts.query)
        status = 200
        if "delay" in query:
            await asyncio.sleep(_seconds(query["delay"][0]))
        if parts.path.startswith("/status/") and parts.path[8:].isdigit():
            status = int(parts.path[8:])
        if parts.path.startswith("/retry") and "uuid" in query:
            uuid = query["uuid"][0]
            seen = self.retries[uuid] = self.retries.get(uuid, 0) + 1
            if seen <= int(query.get("succeedAfter", ["0"])[0]):
                status = int(query.get("responseCode", ["500"])[0])
        grouped: dict[str, list[str]] = {}
        host = ""
        for name, value in headers:
            grouped.setdefault(name.title() if name.lower() != "host" else "Host", []).append(value)
            if name.lower() == "host":
                host = value
        echo = {"path": url, "host": host, "method": method, "proto": f"HTTP/{version}",
                "headers": grouped, "namespace": os.environ.get("NAMESPACE", "edgeplane"),
                "pod": self.name, "body_size": body_size}
        body = json.dumps(echo).encode()
        extra = b""
        for name, value in headers:
            if name.lower() == "x-echo-set-header":
                for pair in value.split(","):
                    key, _, val = pair.partition(":")
                    if key.strip():
                        extra += f"{key.strip()}: {val.strip()}\r\n".encode("latin-1")
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, len(body), extra, b"" if keep_alive else b"Connection: close\r\n",
               b"" if method == "HEAD" else body))
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, name: str) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoProtocol(name), host, port, reuse_address=True)


async def run(address: str, name: str = "demo-backend") -> None:
    host, _, port = address.rpartition(":")
    server = await serve(host or "127.0.0.1", int(port), name)
    async with server:
        await server.serve_forever()

"""A small HTTP/1.1 client for what providers fetch: JWKS, OIDC discovery and tokens, and
external-authorization checks.

One request per connection (`Connection: close`), bounded in time and size, TLS verified
with the system's CAs for https URLs. It is used only inside suspended rule steps or
background refreshes, never on the loop's synchronous path.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

MAX_BODY = 1024 * 1024


class FetchError(Exception):
    """The fetch failed: no connection, a timeout, a malformed or oversized answer."""


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for n, v in self.headers if n.lower() == lname), None)

    # httptools parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY:
            raise FetchError(f"answer larger than {MAX_BODY} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


_CONTEXT: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.create_default_context()
    return _CONTEXT


async def fetch(url: str, timeout: float, method: str = "GET", headers: list[tuple[str, str]] = (),
                body: bytes = b"", address: tuple[str, int] | None = None) -> Answer:
    """`method url` → the answer; `address` connects there instead of the URL's host."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host, port = address or (parts.hostname or "", parts.port or (443 if secure else 80))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "Accept: application/json", *(f"{k}: {v}" for k, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        return await asyncio.wait_for(_exchange(host, port, secure and _tls(), parts.hostname, head + body), timeout)
    except (OSError, TimeoutError, httptools.HttpParserError, FetchError) as error:
        raise FetchError(f"{method} {url}: {type(error).__name__}: {error}") from None


async def _exchange(host: str, port: int, tls: ssl.SSLContext | bool, server_name: str | None,
                    request: bytes) -> Answer:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls or None,
                                                   server_hostname=server_name if tls else None)
    try:
        writer.write(request)
        answer = Answer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.complete:
            data = await reader.read(65536)
            if not data:  # a body delimited by the close ends here
                break
            parser.feed_data(data)
        answer.status = parser.get_status_code()
        if not answer.complete and answer.status == 0:
            raise FetchError("connection closed before an answer")
        return answer
    finally:
        writer.close()

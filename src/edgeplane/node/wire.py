"""HTTP/1.1 wire facts shared by both sides of the proxy: header classes, status lines, and
the bytes of responses the node writes itself.

Header classification is a dictionary hit on the name as sent, with a lower-casing retry
only for names whose length matches a special header, so ordinary headers cost one lookup.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from ..lang.compile import LocalResponse

# Classes of header the proxy must act on; every other header passes through untouched.
HOP = 1            # hop-by-hop: never forwarded (RFC 9110 §7.6.1)
CONNECTION = 2     # hop-by-hop, and names more hop-by-hop headers
TRANSFER = 3       # Transfer-Encoding
LENGTH = 4         # Content-Length
UPGRADE = 5        # hop-by-hop, but a WebSocket upgrade is carried across explicitly
HOST = 6
EXPECT = 7
FORWARDED_FOR = 8  # X-Forwarded-For: appended to
REPLACED = 9       # X-Forwarded-Proto / -Host / -Client-Cert: the node sets these itself
REQUEST_ID = 10
# Classes 1..UPGRADE are hop-by-hop or framing in both directions; the others matter only
# in requests, so a response header of those classes passes through.

_CLASSES = {
    b"connection": CONNECTION, b"keep-alive": HOP, b"proxy-connection": HOP, b"te": HOP,
    b"trailer": HOP, b"upgrade": UPGRADE, b"transfer-encoding": TRANSFER, b"content-length": LENGTH,
    b"host": HOST, b"expect": EXPECT, b"x-forwarded-for": FORWARDED_FOR,
    b"x-forwarded-proto": REPLACED, b"x-forwarded-host": REPLACED, b"x-request-id": REQUEST_ID,
    b"x-forwarded-client-cert": REPLACED,
}
_BY_SPELLING = dict(_CLASSES)
for _name, _cls in _CLASSES.items():
    _BY_SPELLING[b"-".join(part.capitalize() for part in _name.split(b"-"))] = _cls
    _BY_SPELLING[_name.upper()] = _cls
_BY_SPELLING[b"TE"] = HOP
_BY_SPELLING[b"X-Request-ID"] = REQUEST_ID
_LENGTHS = frozenset(len(name) for name in _CLASSES)

# Every spelling a header is usually sent with → its class (0: passes through untouched), so
# the common case is one dict hit; an unusual spelling falls back to `header_class`.
_ORDINARY = (
    "Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
    "Content-Type", "Content-Encoding", "Cookie", "DNT", "Date", "ETag", "Forwarded", "If-Match",
    "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Last-Modified", "Location",
    "Origin", "Pragma", "Priority", "Range", "Referer", "Server", "Set-Cookie", "User-Agent", "Vary",
    "Via", "X-Requested-With", "Upgrade-Insecure-Requests", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
    "Sec-Fetch-Site", "Sec-Fetch-User", "Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform",
    "Access-Control-Request-Method", "Access-Control-Request-Headers", "Expires", "Age",
    "Accept-Ranges", "Content-Range", "Content-Language", "Content-Disposition", "Strict-Transport-Security",
    "X-Content-Type-Options", "X-Frame-Options", "Access-Control-Allow-Origin",
)
SPELLINGS: dict[bytes, int] = {}
for _name in _ORDINARY:
    for _spelling in (_name, _name.lower()):
        SPELLINGS[_spelling.encode()] = 0
SPELLINGS.update(_BY_SPELLING)

# A response header is special only for these classes; request-only ones pass through.
RESPONSE_CLASSES = frozenset({HOP, CONNECTION, TRANSFER, LENGTH, UPGRADE})


def header_class(name: bytes) -> int:
    cls = _BY_SPELLING.get(name)
    if cls is None and len(name) in _LENGTHS:
        cls = _CLASSES.get(name.lower(), 0)
    return cls or 0


def _split_tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


# The Connection values nearly every message carries, already split.
_COMMON_CONNECTION = {spelling: _split_tokens(spelling) for spelling in (
    b"keep-alive", b"Keep-Alive", b"close", b"Close", b"Upgrade", b"upgrade", b"keep-alive, Upgrade",
    b"Upgrade, Keep-Alive", b"Keep-Alive, Upgrade")}


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-case options of a Connection header (the common values are pre-split)."""
    tokens = _COMMON_CONNECTION.get(value)
    return tokens if tokens is not None else _split_tokens(value)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def end_to_end_lines(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Header lines of a response without its hop-by-hop and framing headers."""
    parts: list[bytes] = []
    for name, value in headers:
        if header_class(name) not in RESPONSE_CLASSES:
            parts += (name, b": ", value, b"\r\n")
    return parts


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = _STATUS_LINES.get(status)
    if line is not None and (not reason or reason == _REASONS[status]):
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))


def error_response(status: int, cause: str, request_id: bytes = b"") -> LocalResponse:
    """The short plain-text body the node sends for its own errors: what and which request."""
    reason = _REASONS.get(status, b"Error").decode()
    rid = f" (request id {request_id.decode()})" if request_id else ""
    body = f"{status} {reason}: {cause}{rid}\n".encode()
    headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
    if request_id:
        headers.append((b"X-Request-Id", request_id))
    return LocalResponse(status, headers, body)


def apply_header_ops(headers: list[tuple[bytes, bytes]], ops: list) -> list[tuple[bytes, bytes]]:
    """Apply rule response-header ops (set/add/remove) in order."""
    for mode, lname, name, value in ops:
        if mode != "add":
            headers = [h for h in headers if h[0].lower() != lname]
        if mode != "remove":
            headers.append((name, value))
    return headers


def serialize_local(response: LocalResponse, ops: list, head_only: bool, keep_alive: bool,
                    http10: bool) -> bytes:
    headers = response.headers
    if ops:
        headers = apply_header_ops(list(headers), ops)
    parts = [status_line(response.status)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    bodiless = response.status in (204, 304)
    if not bodiless:
        parts.append(b"Content-Length: %d\r\n" % len(response.body))
    parts.append(connection_header(keep_alive, http10))
    parts.append(b"\r\n")
    if not head_only and not bodiless:
        parts.append(response.body)
    return b"".join(parts)


def connection_header(keep_alive: bool, http10: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def request_head(request: Any, upstream: Any, endpoint_label: str, client_ip: bytes,
                 framing: bytes, extra: bytes = b"") -> bytes:
    """The request line and headers sent upstream: the client's end-to-end headers as rules
    left them, Host, the X-Forwarded-* set, the request id, then `extra` and `framing`."""
    parts = [request.method_bytes, b" ", request.target, b" HTTP/1.1\r\nHost: ",
             upstream.host_header or request.host_header or endpoint_label.encode(), b"\r\n"]
    for name, value in request.headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (b"X-Forwarded-For: ", request.forwarded_for + b", " + client_ip if request.forwarded_for
              else client_ip, b"\r\nX-Forwarded-Proto: ", request.scheme_bytes,
              b"\r\nX-Forwarded-Host: ", request.host_header, b"\r\nX-Request-Id: ",
              request.request_id, b"\r\n")
    tls = request.tls
    if tls is not None and tls.identity.header:  # a verified client certificate
        parts += (b"X-Forwarded-Client-Cert: ", tls.identity.header, b"\r\n")
    parts += (extra, framing)
    return b"".join(parts)

"""One parsed client request: raw head fields plus the variables rules read from it.

Everything a rule may ask for (normalized path, query arguments, cookies, header lookups)
is computed lazily and at most once, so a request that only needs its host pays for
nothing else. This module does no I/O and knows nothing of upstreams.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote


def normalize_path(raw: str) -> str:
    """Percent-decode and remove dot segments (RFC 3986 §5.2.4), as rules must see it."""
    decoded = unquote(raw, errors="replace") if "%" in raw else raw
    if "/." not in decoded and "//" not in decoded:
        return decoded or "/"
    out: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    trailing = "/" if decoded.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


class Request:
    __slots__ = (
        "method", "target", "version", "headers", "host", "client_ip", "scheme", "keep_alive",
        "chunked", "content_length", "expect_continue", "request_id", "forwarded_for",
        "body", "body_size", "complete", "exchange", "trailers", "_path", "_args", "_cookies",
        "_lookup", "uri_path", "query", "start", "method_bytes", "scheme_bytes", "host_header", "port", "sni", "variables", "mirrors",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""
        self.client_ip = ""
        self.scheme = "http"
        self.keep_alive = True
        self.chunked = False
        self.content_length = -1  # absent
        self.expect_continue = False
        self.request_id = b""
        self.forwarded_for = b""
        self.body: list[bytes] | None = []
        self.body_size = 0
        self.complete = False
        self.exchange = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self._path: str | None = None
        self._args: dict[str, list[str]] | None = None
        self._cookies: dict[str, str] | None = None
        self._lookup: dict[str, list[str]] | None = None
        self.uri_path = "/"
        self.query = ""
        self.start = 0.0
        self.method_bytes = b""
        self.scheme_bytes = b"http"
        self.host_header: bytes | None = None
        self.port = 0  # the listener's
        self.sni = ""
        self.variables: dict[str, str] | None = None
        self.mirrors: list | None = None

    # --- variables rules read ---------------------------------------------------------

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = normalize_path(self.uri_path)
        return self._path

    @property
    def uri(self) -> str:
        return self.target.decode("latin-1")

    def header(self, lname: str) -> list[str]:
        """All values of a header, by lower-case name."""
        if self._lookup is None:
            lookup: dict[str, list[str]] = {}
            for name, value in self.headers:
                lookup.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            self._lookup = lookup
        return self._lookup.get(lname, [])

    def arg(self, name: str) -> list[str]:
        if self._args is None:
            args: dict[str, list[str]] = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                args.setdefault(key, []).append(value)
            self._args = args
        return self._args.get(name, [])

    def cookie(self, name: str) -> list[str]:
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for line in self.header("cookie"):
                for pair in line.split(";"):
                    key, sep, value = pair.strip().partition("=")
                    if sep:
                        cookies.setdefault(key, value)
            self._cookies = cookies
        value = self._cookies.get(name)
        return [] if value is None else [value]

    # --- changes actions make ---------------------------------------------------------

    def set_target(self, path: str, query: str | None = None) -> None:
        query = self.query if query is None else query
        self.uri_path = path
        self.query = query
        self._path = None
        self._args = None
        self.target = (path + ("?" + query if query else "")).encode("latin-1")

    def set_host(self, value: bytes) -> None:
        self.host_header = value
        self.host = value.decode("latin-1").lower().partition(":")[0]

    def variable(self, name: str) -> list[str]:
        value = self.variables.get(name) if self.variables else None
        return [] if value is None else [value]

    def set_variable(self, name: str, value: str) -> None:
        if self.variables is None:
            self.variables = {}
        self.variables[name] = value

    def add_mirror(self, upstream: object) -> None:
        if self.mirrors is None:
            self.mirrors = []
        self.mirrors.append(upstream)

    def headers_changed(self) -> None:
        self._lookup = None
        self._cookies = None

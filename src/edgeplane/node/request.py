"""One parsed client request: raw head fields plus the variables rules read from it.

Everything a rule may ask for (normalized path, query arguments, cookies, header lookups)
is computed lazily and at most once, so a request that only needs its host pays for
nothing else. This module does no I/O and knows nothing of upstreams.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote


def normalize_path(raw: str) -> str:
    """The path as rules must see it: percent-decoded, dot segments removed (RFC 3986
    §5.2.4), and read the way common backends read it too — a backslash as a slash (IIS)
    and `;parameters` of a dot segment ignored (Tomcat) — so that neither `/a/..\\admin`
    nor `/.;/admin` slips past a rule about `/admin`."""
    decoded = unquote(raw, errors="replace") if "%" in raw else raw
    if "\\" in decoded:
        decoded = decoded.replace("\\", "/")
    if "/." not in decoded and "//" not in decoded:
        return decoded or "/"
    out: list[str] = []
    for segment in decoded.split("/"):
        if segment.startswith(".") and ";" in segment:
            segment = segment.partition(";")[0]
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    trailing = "/" if decoded.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


def normalize_host(raw: bytes) -> str:
    """A Host value as rules and host tables see it: lower case, no port, no trailing dot
    (an IPv6 literal keeps its brackets)."""
    host = raw.decode("latin-1").lower()
    host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return host.rstrip(".")


class Request:
    """Class attributes are the defaults; a request sets only what differs, which keeps the
    per-request cost to a few assignments (this object is made for every request)."""

    method = ""
    method_bytes = b""
    target = b""
    version = "1.1"
    host = ""
    host_header: bytes | None = None
    client_ip = ""
    scheme = "http"
    scheme_bytes = b"http"
    port = 0  # the listener's
    tls = None  # the connection's TlsSession on HTTPS ports
    keep_alive = True
    chunked = False
    content_length = -1  # absent
    expect_continue = False
    request_id = b""
    forwarded_for = b""
    body_size = 0
    complete = False
    exchange = None
    trailers: list[tuple[bytes, bytes]] | None = None
    uri_path = "/"
    query = ""
    variables: dict[str, str] | None = None
    mirrors: list | None = None
    upgrade: bytes | None = None  # "websocket" when the client asked to switch to it
    connection_upgrade = False
    consumer = ""      # who authenticated (consumer name), set by `authenticate`
    tier = ""          # the consumer's tier
    claims: dict | None = None  # the verified token's claims
    providers: tuple = ()  # the auth providers that accepted this request
    cleanups: list | None = None  # called once when the exchange ends, however it ends
    _path: str | None = None
    _args: dict[str, list[str]] | None = None
    _cookies: dict[str, str] | None = None
    _lookup: dict[bytes, list[bytes]] | None = None

    def __init__(self, start: float = 0.0, port: int = 0) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] | None = []
        self.start = start
        self.port = port

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
        """All values of a header, by lower-case name (only the asked-for ones are decoded)."""
        lookup = self._lookup
        if lookup is None:
            lookup = {}
            for name, value in self.headers:
                lookup.setdefault(name.lower(), []).append(value)
            self._lookup = lookup
        values = lookup.get(lname.encode("latin-1"))
        return [value.decode("latin-1") for value in values] if values else []

    def first_header(self, lname: bytes) -> bytes | None:
        """The first value of a header as sent, by lower-case name (no lookup table is made)."""
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None

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
        self.host = normalize_host(value)

    def variable(self, name: str) -> list[str]:
        value = self.variables.get(name) if self.variables else None
        return [] if value is None else [value]

    def set_variable(self, name: str, value: str) -> None:
        if self.variables is None:
            self.variables = {}
        self.variables[name] = value

    def claim(self, name: str) -> list[str]:
        """A claim of the verified token; `a.b` reads nested objects; a list gives each
        string or number in it."""
        value: object = self.claims
        for part in name.split("."):
            if not isinstance(value, dict):
                return []
            value = value.get(part)
        values = value if isinstance(value, list) else [value]
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in values if isinstance(v, (str, int, float))]

    def identify(self, provider: str, consumer: str, tier: str, claims: dict | None = None) -> None:
        """An auth provider accepted the request as `consumer`'s."""
        self.providers += (provider,)
        self.consumer, self.tier = consumer, tier
        if claims is not None:
            self.claims = claims

    def on_end(self, cleanup: object) -> None:
        if self.cleanups is None:
            self.cleanups = []
        self.cleanups.append(cleanup)

    def remove_header(self, lname: bytes) -> None:
        self.headers = [h for h in self.headers if h[0].lower() != lname]
        self.headers_changed()

    def take_header(self, lname: bytes) -> bytes | None:
        """The first value of a header as sent; every line of it is removed."""
        headers = self.headers
        for index, (name, value) in enumerate(headers):
            if name.lower() == lname:
                self.headers = headers[:index] + [h for h in headers[index + 1:] if h[0].lower() != lname]
                self.headers_changed()
                return value
        return None

    def add_mirror(self, upstream: object) -> None:
        if self.mirrors is None:
            self.mirrors = []
        self.mirrors.append(upstream)

    def headers_changed(self) -> None:
        self._lookup = None
        self._cookies = None

"""Authentication providers as rule steps: what they share and which one a provider is.

Each provider kind compiles its config once per version into a step that reads the
credential, checks it (from a cache when it can, suspending the chain only to fetch keys,
run a slow hash or ask a service) and either marks the request as its consumer's — the
rule variables consumer, consumer-tier and claim — or answers 401/403 with a
`WWW-Authenticate` that says why in general terms, never which part of a credential failed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from ...lang.compile import CompileContext, LocalResponse, Step
from ...model.config import AuthProvider, Config

TEXT = (b"Content-Type", b"text/plain; charset=utf-8")
UNAUTHORIZED = b"401 Unauthorized: this route needs valid credentials\n"


def refuse(challenge: str, status: int = 401, body: bytes = UNAUTHORIZED) -> LocalResponse:
    """A 401 (or 403) carrying `WWW-Authenticate: <challenge>`."""
    return LocalResponse(status, [(b"WWW-Authenticate", challenge.encode("latin-1")), TEXT], body)


def quoted(text: str) -> str:
    """A quoted-string for an auth parameter (RFC 9110 §5.6.4)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Credential:
    """Reads a credential from `header:NAME`, `query:NAME` or `cookie:NAME`, and removes it."""

    def __init__(self, source: str, scheme: str | None = None):
        self.kind, _, self.name = source.partition(":")
        self.lname = self.name.lower()
        self.raw_lname = self.lname.encode("latin-1")
        # The Authorization header carries a scheme before the credential.
        self.scheme = (scheme or "bearer").lower() + " " if self.lname == "authorization" else None

    def read(self, request: Any) -> str | None:
        sent = self.sent(request)
        return None if sent is None else self.token(sent)

    def sent(self, request: Any, take: bool = False) -> bytes | str | None:
        """The credential as the client sent it: a header's whole value (bytes, its scheme
        included), a query argument's or a cookie's (str). `take` removes a header credential
        from the request as it is read."""
        if self.kind == "header":
            return request.take_header(self.raw_lname) if take else request.first_header(self.raw_lname)
        values = request.arg(self.name) if self.kind == "query" else request.cookie(self.name)
        return values[0] if values and values[0] else None

    def token(self, sent: bytes | str) -> str | None:
        """The credential in what `sent` returned: a header's value without its scheme."""
        if sent.__class__ is str:
            return sent
        value = sent.decode("latin-1").strip()
        if self.scheme is None:
            return value or None
        if value[:len(self.scheme)].lower() != self.scheme:
            return None
        return value[len(self.scheme):].strip() or None

    def strip(self, request: Any) -> None:
        """Remove the credential so the upstream never sees it."""
        if self.kind == "header":
            request.remove_header(self.raw_lname)
        elif self.kind == "query":
            kept = [(k, v) for k, v in parse_qsl(request.query, keep_blank_values=True) if k != self.name]
            request.set_target(request.uri_path, urlencode(kept))
        else:
            remove_cookie(request, self.name)


def remove_cookie(request: Any, name: str) -> None:
    kept = []
    for line in request.header("cookie"):
        pairs = [p for p in line.split(";") if p.strip().partition("=")[0] != name]
        if any(p.strip() for p in pairs):
            kept.append(";".join(pairs).strip())
    request.remove_header(b"cookie")
    for line in kept:
        request.headers.append((b"Cookie", line.encode("latin-1")))


class ClaimHeaders:
    """claims → request headers (set, replacing what the client sent). `values` prepares a
    verified token's lines once; `set` puts them on each request that carries it."""

    def __init__(self, mapping: dict[str, str]):
        self.pairs = [(claim, header.encode("latin-1"), header.lower().encode("latin-1"))
                      for claim, header in mapping.items()]

    def values(self, claims: dict) -> list[tuple[bytes, bytes, bytes | None]]:
        """(lower-case name, name, value or None: the claim is absent or cannot be a header value)."""
        lines = []
        for claim, header, lname in self.pairs:
            value = claims.get(claim)
            text = str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
            if text is not None and ("\r" in text or "\n" in text or "\x00" in text):
                text = None
            lines.append((lname, header, None if text is None else text.encode("utf-8")))
        return lines

    @staticmethod
    def set(request: Any, lines: list[tuple[bytes, bytes, bytes | None]]) -> None:
        for lname, header, value in lines:
            request.remove_header(lname)
            if value is not None:
                request.headers.append((header, value))
        request.headers_changed()

    def __call__(self, request: Any, claims: dict) -> None:
        self.set(request, self.values(claims))


def compile_provider(provider: AuthProvider, config: Config, context: CompileContext, state: Any,
                     upstreams: dict[str, Any]) -> Step:
    kind = provider.kind
    if kind == "jwt":
        from .jwt import compile_jwt
        return compile_jwt(provider.name, provider.jwt, state)
    if kind == "api_key":
        from .credentials import compile_api_key
        return compile_api_key(provider.name, provider.api_key, config.consumers)
    if kind == "basic":
        from .credentials import compile_basic
        return compile_basic(provider.name, provider.basic, config.consumers, state)
    if kind == "oidc":
        from .oidc import compile_oidc
        return compile_oidc(provider.name, provider.oidc, state)
    from .extauthz import compile_ext_authz
    return compile_ext_authz(provider.name, provider.ext_authz, context, state, upstreams)

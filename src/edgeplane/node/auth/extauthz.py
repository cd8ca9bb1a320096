"""External authorization: a subrequest to an authorization service decides.

The service (a server of one of the config's upstreams) gets `GET <path>` with the
request's `X-Forwarded-Method`, `-Uri`, `-Host`, `-For` and the headers the provider names.
A 2xx answer allows the request and may add headers to it; a 5xx, a timeout or no answer
is an error, settled by `on_error`; any other answer denies, and the client gets its status
with its `WWW-Authenticate`, `Location` and body. Decisions (not errors) are cached for
`cache_ttl` by the variables `cache_key` names.
"""

from __future__ import annotations

import time
from time import monotonic
from typing import Any

from ...lang.compile import CompileContext, LocalResponse, Step, Suspend, variables_key
from ...model.config import ExtAuthzProvider
from . import TEXT
from .http import FetchError, fetch

CACHED = 10_000  # decisions remembered per provider and worker
PASSED_BACK = ("www-authenticate", "location", "content-type")
UNAVAILABLE = LocalResponse(503, [(b"Retry-After", b"1"), TEXT],
                            b"503 Service Unavailable: the authorization service did not answer\n")


def compile_ext_authz(name: str, config: ExtAuthzProvider, context: CompileContext, state: Any,
                      upstreams: dict[str, Any]) -> Step:
    upstream = upstreams[config.upstream]
    asked = [header.lower() for header in config.headers]
    added = [(header.encode("latin-1"), header.lower()) for header in config.upstream_headers]
    key_of = variables_key(config.cache_key, context) if config.cache_ttl else None
    decisions: dict[str, tuple[float, Any]] = {}
    ttl, on_error = config.cache_ttl, config.on_error

    def apply(request: Any, decision: Any) -> Any:
        """A decision is a LocalResponse (deny) or the headers to add upstream (allow)."""
        if isinstance(decision, LocalResponse):
            return decision
        for lname, value in decision:
            request.remove_header(lname.lower())
            request.headers.append((lname, value))
        request.identify(name, request.consumer, request.tier)
        return None

    def failed() -> Any:
        return None if on_error == "allow" else UNAVAILABLE

    async def ask(request: Any, key: str | None) -> Any:
        endpoint = upstream.balancer.pick(request, monotonic(), ())
        if endpoint is None:
            return failed()
        headers = [("X-Forwarded-Method", request.method), ("X-Forwarded-Uri", request.uri),
                   ("X-Forwarded-Host", request.host), ("X-Forwarded-For", request.client_ip)]
        headers += [(lname, value) for lname in asked for value in request.header(lname)]
        authority = upstream.host_header.decode("latin-1") if upstream.host_header else endpoint.label
        try:
            answer = await fetch(f"http://{authority}{config.path}", config.timeout, headers=headers,
                                 address=(endpoint.address, endpoint.port))
        except FetchError:
            return failed()
        if answer.status >= 500:
            return failed()
        if 200 <= answer.status < 300:
            decision: Any = [(header, value.encode("latin-1")) for header, lname in added
                             if (value := answer.header(lname)) is not None and _clean(value)]
        else:
            passed = [(h.encode(), v.encode("latin-1")) for h in PASSED_BACK
                      if (v := answer.header(h)) is not None and _clean(v)]
            decision = LocalResponse(answer.status, passed or [TEXT], answer.body[:65536])
        if key is not None:
            if len(decisions) >= CACHED:
                del decisions[next(iter(decisions))]
            decisions[key] = (time.monotonic() + ttl, decision)
        return apply(request, decision)

    def authorize(request: Any, _ops: list) -> Any:
        key = key_of(request) if key_of is not None else None
        if key is not None:
            cached = decisions.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return apply(request, cached[1])
        return Suspend(ask(request, key))
    return authorize


def _clean(value: str) -> bool:
    return "\r" not in value and "\n" not in value and "\x00" not in value

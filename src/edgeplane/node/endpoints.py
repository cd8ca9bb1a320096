"""Upstream endpoints: one per (upstream, address, port) in a worker, with its idle pool.

An endpoint outlives config versions, so keep-alive connections, passive failure state,
outlier ejections, the active health verdict and latency estimates survive a reload; the
registry retires endpoints no runtime names any more. Three things can take an endpoint
out of rotation and `down_until` (all a balancer reads) combines them: `max_fails`, an
outlier ejection, a failing active health check. Connections themselves live in
`upstream.py`; this module never opens sockets.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from .breaker import Breaker

if TYPE_CHECKING:
    from ..model.config import Pool, Server
    from .upstream import UpstreamConnection


LATENCY_MEMORY = 10.0  # seconds for an unrefreshed latency estimate to fade to 1/e
FOREVER = float("inf")


class Endpoint:
    __slots__ = (
        "key", "upstream", "address", "port", "idle", "active", "failures", "down_until",
        "ewma", "ewma_at", "max_idle", "idle_timeout", "max_requests", "max_fails", "fail_timeout",
        "retired", "connects", "requests", "label", "fail_until", "ejected_until", "unhealthy",
        "detector", "breaker", "consecutive_5xx", "consecutive_gateway", "answered", "errors", "times_ejected",
        "ejection_since", "tls",
    )

    def __init__(self, upstream: str, server: Server, pool: Pool, max_fails: int = 1,
                 tls: tuple | None = None):
        self.key = (upstream, server.address, server.port)
        self.upstream = upstream
        self.address = server.address
        self.port = server.port
        self.label = f"{server.address}:{server.port}"
        self.idle: deque[UpstreamConnection] = deque()
        self.active = 0
        self.failures = 0
        self.down_until = 0.0
        self.fail_until = 0.0       # max_fails
        self.ejected_until = 0.0    # outlier detection (0: not ejected)
        self.unhealthy = False      # the node's active health check fails
        self.detector = None        # the upstream's OutlierDetector, when it has one
        self.breaker: Breaker = None  # the upstream's counters and limits in this worker (set by the registry)
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.answered = 0           # answers and failures in this success-rate interval
        self.errors = 0
        self.times_ejected = 0
        self.ejection_since = 0.0   # when the current ejection began, or the last one ended
        self.ewma = 0.0
        self.ewma_at = 0.0
        self.connects = 0
        self.requests = 0
        self.retired = False
        self.tls = tls
        self.configure(server, pool, max_fails, tls)

    def configure(self, server: Server, pool: Pool, max_fails: int, tls: tuple | None = None) -> None:
        """`max_fails`: the server's own, or its upstream's default when it has none."""
        if tls != self.tls:  # (client context, server name): pooled connections spoke the old way
            self.tls = tls
            while self.idle:
                self.idle.pop().close()
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        self.max_requests = pool.max_requests
        self.max_fails = server.max_fails if server.max_fails is not None else max_fails
        self.fail_timeout = server.fail_timeout

    # --- passive health ---------------------------------------------------------------

    def available(self, now: float) -> bool:
        return self.down_until <= now

    def refresh(self) -> None:
        """Combine what can take the endpoint out of rotation into the one deadline balancers read."""
        self.down_until = FOREVER if self.unhealthy else max(self.fail_until, self.ejected_until)

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.max_fails and self.failures >= self.max_fails:
            self.fail_until = now + self.fail_timeout
            self.failures = 0
            self.refresh()

    def observe_latency(self, seconds: float, now: float) -> None:
        # A fixed smoothing factor: recent responses weigh ~10x more than ones 20 ago.
        self.ewma = seconds if not self.ewma else self.ewma * 0.9 + seconds * 0.1
        self.ewma_at = now

    def latency(self, now: float) -> float:
        """The latency estimate, fading while no response is seen, so that a server slow
        once is tried again after a while instead of being shunned for ever."""
        if not self.ewma:
            return 0.0
        return self.ewma * math.exp((self.ewma_at - now) / LATENCY_MEMORY)

    # --- pool -------------------------------------------------------------------------

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            connection = idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None

    def give_back(self, connection: UpstreamConnection, now: float) -> None:
        if (self.retired or len(self.idle) >= self.max_idle
                or connection.served >= self.max_requests or not connection.reusable()):
            connection.close()
            return
        connection.idle_since = now
        self.idle.append(connection)

    def sweep(self, now: float) -> None:
        idle = self.idle
        while idle and (now - idle[0].idle_since >= self.idle_timeout or not idle[0].reusable()):
            idle.popleft().close()

    def retire(self) -> None:
        self.retired = True
        while self.idle:
            self.idle.pop().close()

    def status(self, now: float) -> dict:
        return {
            "address": self.label, "state": "up" if self.available(now) else "down",
            "down_for": round(max(0.0, self.fail_until - now), 3),
            "health_check": "failing" if self.unhealthy else None,
            "ejected_for": round(max(0.0, self.ejected_until - now), 3), "times_ejected": self.times_ejected,
            "active": self.active, "idle": len(self.idle), "connects": self.connects,
            "requests": self.requests, "ewma_ms": round(self.ewma * 1000, 3),
        }


class EndpointRegistry:
    """All endpoints of a worker, reused across runtimes by (upstream, address, port), each
    upstream's breaker (by name), and the node's active health verdict on the endpoints
    (from the master, applied to each)."""

    def __init__(self, reporter: Any = None) -> None:
        self.reporter = reporter  # told of transitions and counted events (the worker)
        self.endpoints: dict[tuple[str, str, int], Endpoint] = {}
        self.breakers: dict[str, Breaker] = {}
        self.failing: dict[tuple[str, str, int], str] = {}  # servers the active checks fail, and why
        self.health_sequence = -1

    def get(self, upstream: str, server: Server, pool: Pool, max_fails: int = 1,
            tls: tuple | None = None) -> Endpoint:
        """`tls`: (client SSLContext, server name) for an upstream spoken to over TLS."""
        key = (upstream, server.address, server.port)
        endpoint = self.endpoints.get(key)
        if endpoint is None or endpoint.retired:
            endpoint = self.endpoints[key] = Endpoint(upstream, server, pool, max_fails, tls)
            if key in self.failing:
                endpoint.unhealthy = True
                endpoint.refresh()
        else:
            endpoint.configure(server, pool, max_fails, tls)
        endpoint.breaker = self.breaker(upstream)
        return endpoint

    def breaker(self, upstream: str) -> Breaker:
        breaker = self.breakers.get(upstream)
        if breaker is None:
            breaker = self.breakers[upstream] = Breaker(upstream, self.reporter)
        return breaker

    def apply_health(self, message: dict) -> bool:
        """Take the master's list of failing servers, unless an older one arrives late."""
        if message["sequence"] <= self.health_sequence:
            return False
        self.health_sequence = message["sequence"]
        self.failing = {(upstream, address, port): cause for upstream, address, port, cause in message["failing"]}
        for key, endpoint in self.endpoints.items():
            unhealthy = key in self.failing
            if endpoint.unhealthy != unhealthy:
                endpoint.unhealthy = unhealthy
                endpoint.refresh()
        return True

    def retain(self, keys: set[tuple[str, str, int]]) -> None:
        for key in [k for k in self.endpoints if k not in keys]:
            self.endpoints.pop(key).retire()
        names = {key[0] for key in keys}
        for name in [n for n in self.breakers if n not in names]:
            del self.breakers[name]

    def sweep(self, now: float) -> None:
        for endpoint in self.endpoints.values():
            endpoint.sweep(now)

"""Upstream endpoints: one per (upstream, address, port) in a worker, with its idle pool.

An endpoint outlives config versions, so keep-alive connections, passive failure state and
latency estimates survive a reload; the registry retires endpoints no runtime names any
more. Connections themselves live in `upstream.py`; this module never opens sockets.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.config import Pool, Server
    from .upstream import UpstreamConnection


LATENCY_MEMORY = 10.0  # seconds for an unrefreshed latency estimate to fade to 1/e


class Endpoint:
    __slots__ = (
        "key", "upstream", "address", "port", "idle", "active", "failures", "down_until",
        "ewma", "ewma_at", "max_idle", "idle_timeout", "max_requests", "max_fails", "fail_timeout",
        "retired", "connects", "requests", "label",
    )

    def __init__(self, upstream: str, server: Server, pool: Pool):
        self.key = (upstream, server.address, server.port)
        self.upstream = upstream
        self.address = server.address
        self.port = server.port
        self.label = f"{server.address}:{server.port}"
        self.idle: deque[UpstreamConnection] = deque()
        self.active = 0
        self.failures = 0
        self.down_until = 0.0
        self.ewma = 0.0
        self.ewma_at = 0.0
        self.connects = 0
        self.requests = 0
        self.retired = False
        self.configure(server, pool)

    def configure(self, server: Server, pool: Pool) -> None:
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        self.max_requests = pool.max_requests
        self.max_fails = server.max_fails
        self.fail_timeout = server.fail_timeout

    # --- passive health ---------------------------------------------------------------

    def available(self, now: float) -> bool:
        return self.down_until <= now

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.max_fails and self.failures >= self.max_fails:
            self.down_until = now + self.fail_timeout
            self.failures = 0

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
            "down_for": round(max(0.0, self.down_until - now), 3), "active": self.active,
            "idle": len(self.idle), "connects": self.connects, "requests": self.requests,
            "ewma_ms": round(self.ewma * 1000, 3),
        }


class EndpointRegistry:
    """All endpoints of a worker, reused across runtimes by (upstream, address, port)."""

    def __init__(self) -> None:
        self.endpoints: dict[tuple[str, str, int], Endpoint] = {}

    def get(self, upstream: str, server: Server, pool: Pool) -> Endpoint:
        key = (upstream, server.address, server.port)
        endpoint = self.endpoints.get(key)
        if endpoint is None or endpoint.retired:
            endpoint = self.endpoints[key] = Endpoint(upstream, server, pool)
        else:
            endpoint.configure(server, pool)
        return endpoint

    def retain(self, keys: set[tuple[str, str, int]]) -> None:
        for key in [k for k in self.endpoints if k not in keys]:
            self.endpoints.pop(key).retire()

    def sweep(self, now: float) -> None:
        for endpoint in self.endpoints.values():
            endpoint.sweep(now)

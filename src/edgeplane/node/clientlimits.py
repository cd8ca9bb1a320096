"""Limits per client address: open connections, and new TLS handshakes per second.

Counted per worker (the node-wide shared counters of `shared.py` are not on main yet): with
N workers a client may hold up to N times the limits, since the kernel spreads its
connections over the workers. A connection over the limit is closed before anything is
read from it; a handshake over the limit is closed once its ClientHello arrived, before
any cryptography. Both are counted; nothing here parses requests.
"""

from __future__ import annotations

import time

SWEEP_EVERY = 10.0  # seconds between two clean-ups of idle handshake buckets


class ClientLimits:
    __slots__ = ("open", "buckets", "refused_connections", "refused_handshakes", "swept")

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.buckets: dict[str, list[float]] = {}  # address → [tokens, last refill]
        self.refused_connections = 0
        self.refused_handshakes = 0
        self.swept = time.monotonic()

    def admit(self, address: str, limit: int) -> bool:
        """One more open connection from `address`, unless it holds `limit` already (0: no limit)."""
        count = self.open.get(address, 0)
        if limit and count >= limit:
            self.refused_connections += 1
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)

    def handshake(self, address: str, rate: float) -> bool:
        """A token bucket per address: `rate` handshakes per second, bursts of up to `rate` (at least 1)."""
        if not rate:
            return True
        now = time.monotonic()
        burst = max(rate, 1.0)
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = [burst, now]
        else:
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if now - self.swept > SWEEP_EVERY:
            self.sweep(now, rate, burst)
        if bucket[0] < 1.0:
            self.refused_handshakes += 1
            return False
        bucket[0] -= 1.0
        return True

    def sweep(self, now: float, rate: float, burst: float) -> None:
        """Forget addresses whose bucket has refilled: they are as good as new."""
        self.swept = now
        for address in [a for a, (tokens, last) in self.buckets.items() if tokens + (now - last) * rate >= burst]:
            del self.buckets[address]

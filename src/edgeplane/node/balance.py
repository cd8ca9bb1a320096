"""Load-balancing algorithms: which endpoint of an upstream serves the next request.

Each balancer is built once per config version from weighted endpoints and answers
`pick(request, now, exclude)`. Backups are tried, with the same algorithm, only when no
primary is available. Balancers read endpoint state; they never change it.
"""

from __future__ import annotations

import bisect
import random
from abc import ABC, abstractmethod
from typing import Any

from ..lang.keys import key_getter, stable_hash
from .endpoints import Endpoint

Weighted = list[tuple[Endpoint, int]]


class Balancer(ABC):
    def __init__(self, primaries: Weighted, backups: Weighted):
        self.tiers = [tier for tier in (primaries, backups) if tier]

    def pick(self, request: Any, now: float, exclude: tuple = ()) -> Endpoint | None:
        for tier in self.tiers:
            chosen = self.choose(tier, request, now, exclude)
            if chosen is not None:
                return chosen
        return None

    @abstractmethod
    def choose(self, tier: Weighted, request: Any, now: float, exclude: tuple) -> Endpoint | None:
        """The endpoint of this tier for the request, or None when none is available."""


class SmoothRoundRobin(Balancer):
    """Smooth weighted round robin: weights 5,1,1 give a a b a c a a, never a burst."""

    def __init__(self, primaries: Weighted, backups: Weighted):
        super().__init__(primaries, backups)
        self.current = {id(tier): [0] * len(tier) for tier in self.tiers}

    def choose(self, tier: Weighted, request: Any, now: float, exclude: tuple) -> Endpoint | None:
        if len(tier) == 1:
            endpoint = tier[0][0]
            return endpoint if endpoint.down_until <= now and endpoint not in exclude else None
        current = self.current[id(tier)]
        total, best = 0, -1
        for index, (endpoint, weight) in enumerate(tier):
            if endpoint.down_until > now or endpoint in exclude:
                continue
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            return None
        current[best] -= total
        return tier[best][0]


class LeastConnections(Balancer):
    """Fewest active requests per unit of weight; ties go round robin."""

    def __init__(self, primaries: Weighted, backups: Weighted):
        super().__init__(primaries, backups)
        self.turn = 0

    def choose(self, tier: Weighted, request: Any, now: float, exclude: tuple) -> Endpoint | None:
        self.turn += 1
        count = len(tier)
        best, best_load = None, 0.0
        for offset in range(count):
            endpoint, weight = tier[(self.turn + offset) % count]
            if endpoint.down_until > now or endpoint in exclude:
                continue
            load = endpoint.active / weight
            if best is None or load < best_load:
                best, best_load = endpoint, load
        return best


class ConsistentHash(Balancer):
    """A hash ring with 320 points per unit of weight: adding one of N endpoints moves ~1/N keys."""

    POINTS = 320

    def __init__(self, primaries: Weighted, backups: Weighted, key: str):
        super().__init__(primaries, backups)
        self.key = key_getter(key)
        self.rings = {id(tier): self._ring(tier) for tier in self.tiers}

    def _ring(self, tier: Weighted) -> tuple[list[int], list[Endpoint]]:
        points = []
        for endpoint, weight in tier:
            for replica in range(self.POINTS * weight):
                points.append((stable_hash(f"{endpoint.label}-{replica}".encode()), endpoint))
        points.sort(key=lambda point: point[0])
        return [p[0] for p in points], [p[1] for p in points]

    def choose(self, tier: Weighted, request: Any, now: float, exclude: tuple) -> Endpoint | None:
        if not any(e.down_until <= now and e not in exclude for e, _ in tier):
            return None
        hashes, owners = self.rings[id(tier)]
        start = bisect.bisect(hashes, stable_hash(self.key(request)))
        size = len(owners)
        for step in range(size):
            endpoint = owners[(start + step) % size]
            if endpoint.down_until <= now and endpoint not in exclude:
                return endpoint
        return None


class PeakEwma(Balancer):
    """Power of two choices on latency: of two random endpoints, the lower ewma x (active+1)."""

    def __init__(self, primaries: Weighted, backups: Weighted):
        super().__init__(primaries, backups)
        self.random = random.Random()

    def choose(self, tier: Weighted, request: Any, now: float, exclude: tuple) -> Endpoint | None:
        candidates = [(e, w) for e, w in tier if e.down_until <= now and e not in exclude]
        if len(candidates) <= 1:
            return candidates[0][0] if candidates else None
        (a, wa), (b, wb) = self.random.sample(candidates, 2)
        cost_a = (a.latency(now) or 1e-3) * (a.active + 1) / wa
        cost_b = (b.latency(now) or 1e-3) * (b.active + 1) / wb
        return a if cost_a <= cost_b else b


def make_balancer(algorithm: str, primaries: Weighted, backups: Weighted, hash_key: str | None) -> Balancer:
    if algorithm == "round-robin":
        return SmoothRoundRobin(primaries, backups)
    if algorithm == "least-conn":
        return LeastConnections(primaries, backups)
    if algorithm == "hash":
        return ConsistentHash(primaries, backups, hash_key or "client-ip")
    if algorithm == "ewma":
        return PeakEwma(primaries, backups)
    raise ValueError(f"unknown balancing algorithm {algorithm!r}")

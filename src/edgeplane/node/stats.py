"""Each upstream's recent traffic as the node measured it: requests, failures, durations.

A worker records every request routed to an upstream into the current slot of a sliding
window (six slots of ten seconds); a slot holds counts only — requests, failures (a status
of 500 or more, the node's own 502/503/504 included), and a histogram of durations in
buckets 20 % apart — so slots, workers and nodes merge by adding. `summary` turns merged
counts into what a canary decision needs: success rate and p50/p99 duration. Recording is
a bisect and two increments; nothing here does I/O.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable

SLOT = 10.0   # seconds per slot
SLOTS = 6     # the window: the current slot and the five before it
BOUNDS = tuple(round(0.0001 * 1.2 ** n, 7) for n in range(74))  # 0.1 ms .. ~70 s, 20 % apart
# A series: the failures, then the count of each bucket (the last one past every bound);
# the requests are the sum of the buckets.


def empty_series() -> list[int]:
    return [0] * (len(BOUNDS) + 2)


class TrafficWindow:
    def __init__(self, now: float) -> None:
        self.current: dict[str, list[int]] = {}
        self.started = now
        self.past: deque[tuple[float, dict[str, list[int]]]] = deque(maxlen=SLOTS - 1)
        self.retired: dict[str, list[int]] = {}  # every slot that left `current`, added up

    def record(self, upstream: str, failed: bool, seconds: float,
               _bucket: Callable[..., int] = bisect.bisect_left, _bounds: tuple = BOUNDS) -> None:
        """(The defaults are the module's names as locals: this runs for every request.)"""
        series = self.current.get(upstream)
        if series is None:
            series = self.current[upstream] = empty_series()
        if failed:
            series[0] += 1
        series[1 + _bucket(_bounds, seconds)] += 1

    def rotate(self, now: float) -> None:
        if now - self.started >= SLOT:
            self.past.append((self.started, self.current))
            add(self.retired, self.current)
            self.current, self.started = {}, now

    def totals(self) -> dict[str, list[int]]:
        """Counts per upstream since the worker started (what traffic reports difference)."""
        return add(add({}, self.retired), self.current)

    def snapshot(self, now: float) -> dict:
        """Counts per upstream over the whole window, and the seconds it covers."""
        merged: dict[str, list[int]] = {}
        for _, slot in (*self.past, (self.started, self.current)):
            add(merged, slot)
        oldest = self.past[0][0] if self.past else self.started
        return {"window_s": round(now - oldest, 1), "upstreams": merged}


def add(into: dict[str, list[int]], counts: dict[str, list[int]]) -> dict[str, list[int]]:
    for upstream, series in counts.items():
        total = into.setdefault(upstream, empty_series())
        for index, value in enumerate(series):
            total[index] += value
    return into


def quantile(series: list[int], fraction: float) -> float | None:
    """The upper bound (seconds) of the bucket the `fraction` quantile falls in."""
    histogram = series[1:]
    rank = fraction * sum(histogram)
    if not rank:
        return None
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return BOUNDS[index] if index < len(BOUNDS) else float("inf")
    return None


def summary(series: list[int]) -> dict:
    """What a canary decision reads: requests, success rate, p50 and p99 in milliseconds,
    and the non-empty buckets (upper bound in ms → count), which merge across nodes."""
    requests, failures = sum(series[1:]), series[0]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3) if value != float("inf") else None

    return {"requests": requests, "failures": failures,
            "success_rate": round(1 - failures / requests, 6) if requests else None,
            "p50_ms": ms(quantile(series, 0.5)), "p99_ms": ms(quantile(series, 0.99)),
            "buckets_ms": buckets_ms(series)}


def buckets_ms(series: list[int]) -> dict[str, int]:
    """The non-empty buckets of a series, upper bound in ms (or +Inf) → count."""
    return {str(round(BOUNDS[i] * 1000, 4)) if i < len(BOUNDS) else "+Inf": n for i, n in enumerate(series[1:]) if n}

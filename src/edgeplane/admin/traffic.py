"""Traffic figures the nodes report: each upstream's requests, failures and a histogram of
durations over the seconds since the node's previous report, stored as they arrive and
merged over a window (a canary's step) across the nodes of a partition.

A histogram is counts per bucket keyed by the bucket's upper bound in milliseconds
(buckets 20 % apart, as nodes measure them), so reports merge by adding, and a quantile of
the merge is the bound of the bucket it falls in: never under-stated, at most 20 % over.
Time is the admin's clock at arrival, so node clocks do not matter. Nothing here decides.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Connection, func, select

from . import schema

KEEP = 600.0  # seconds of reports kept at least (and longer while a window needs them)


@dataclass
class Series:
    """One upstream's traffic: counts, and the duration histogram (bound in ms → count)."""

    requests: int = 0
    failures: int = 0
    buckets_ms: dict[str, int] = field(default_factory=dict)

    def add(self, report: dict) -> None:
        self.requests += report["requests"]
        self.failures += report["failures"]
        for bound, count in report["buckets_ms"].items():
            self.buckets_ms[bound] = self.buckets_ms.get(bound, 0) + count

    def quantile_ms(self, fraction: float) -> float | None:
        """The upper bound of the bucket the `fraction` quantile falls in (inf past the last)."""
        total = sum(self.buckets_ms.values())
        if not total:
            return None
        rank, seen = fraction * total, 0
        for bound, count in sorted(self.buckets_ms.items(), key=lambda item: bound_ms(item[0])):
            seen += count
            if seen >= rank:
                return bound_ms(bound)
        return math.inf

    def summary(self) -> dict:
        p99 = self.quantile_ms(0.99)
        return {"requests": self.requests, "failures": self.failures,
                "success_rate": round(1 - self.failures / self.requests, 6) if self.requests else None,
                "p50_ms": _finite(self.quantile_ms(0.5)), "p99_ms": _finite(p99),
                "p99_beyond_last_bucket": p99 == math.inf}


def bound_ms(key: str) -> float:
    return math.inf if key == "+Inf" else float(key)


def _finite(value: float | None) -> float | None:
    return None if value is None or value == math.inf else value


@dataclass
class Window:
    """What the nodes of a partition reported between two moments."""

    start: float
    end: float
    upstreams: dict[str, Series]
    nodes: dict[str, dict]  # node name → reports, last report time, requests per upstream

    def series(self, upstream: str) -> Series:
        return self.upstreams.get(upstream, Series())


class TrafficReports:
    def record(self, connection: Connection, node: str, partition: str, seconds: float, upstreams: dict,
               at: float | None = None) -> None:
        connection.execute(schema.traffic_reports.insert().values(
            node=node, partition=partition, at=at or time.time(), seconds=seconds,
            upstreams=orjson.dumps(upstreams).decode()))

    def window(self, connection: Connection, partition: str, start: float, end: float) -> Window:
        """Reports of `partition` whose middle falls in [start, end]: a report that straddles
        the start of a step counts only when most of it is in the step."""
        table = schema.traffic_reports
        rows = connection.execute(select(table).where(table.c.partition == partition, table.c.at >= start,
                                                      table.c.at <= end).order_by(table.c.at)).all()
        upstreams: dict[str, Series] = {}
        nodes: dict[str, dict] = {}
        for row in rows:
            if row.at - row.seconds / 2 < start:
                continue
            seen = nodes.setdefault(row.node, {"reports": 0, "last_report": None, "requests": {}})
            seen["reports"] += 1
            seen["last_report"] = row.at
            for name, report in orjson.loads(row.upstreams).items():
                upstreams.setdefault(name, Series()).add(report)
                seen["requests"][name] = seen["requests"].get(name, 0) + report["requests"]
        return Window(start, end, upstreams, nodes)

    def last_reports(self, connection: Connection, partition: str) -> dict[str, float]:
        """Each node's latest report in the partition (of those still kept)."""
        table = schema.traffic_reports
        rows = connection.execute(select(table.c.node, func.max(table.c.at)).where(table.c.partition == partition)
                                  .group_by(table.c.node)).all()
        return {node: at for node, at in rows}

    def prune(self, connection: Connection, before: float) -> int:
        table = schema.traffic_reports
        return connection.execute(table.delete().where(table.c.at < before)).rowcount

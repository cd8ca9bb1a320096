"""Traffic reports from nodes to the admin: a node reports what its workers counted since
its last report (a restarted worker from zero, a silent one later), and the admin merges
reports by adding and reads quantiles from the merged buckets."""

from __future__ import annotations

from edgeplane.admin.traffic import Series
from edgeplane.node.stats import BOUNDS, buckets_ms, empty_series
from edgeplane.node.traffic import TrafficReporter


def series(requests: int, failures: int, seconds: float) -> list[int]:
    """A worker's counts (stats.py): the failures, then the requests by duration bucket."""
    counts = empty_series()
    counts[0] = failures
    counts[1 + next(i for i, bound in enumerate(BOUNDS) if bound >= seconds)] = requests
    return counts


def requests_failures(counts: list[int]) -> list[int]:
    return [sum(counts[1:]), counts[0]]


def test_a_report_is_what_each_worker_counted_since_the_last_one_taken():
    reporter = TrafficReporter("http://admin", None, None)
    first, reported = reporter.difference([{"worker": 0, "pid": 10, "upstreams": {"api": series(5, 1, 0.01)}},
                                           {"worker": 1, "pid": 11, "upstreams": {"api": series(3, 0, 0.01)}}])
    assert requests_failures(first["api"]) == [8, 1]
    reporter.reported = reported
    later, reported = reporter.difference([{"worker": 0, "pid": 10, "upstreams": {"api": series(9, 1, 0.01)}},
                                           {"worker": 1, "pid": 99, "upstreams": {"api": series(2, 2, 0.01)}}])
    assert requests_failures(later["api"]) == [4 + 2, 0 + 2], "worker 1 restarted (new pid): all it counted is new"
    reporter.reported = reported
    silent, kept = reporter.difference([{"worker": 1, "pid": 99, "upstreams": {"api": series(2, 2, 0.01)}}])
    assert requests_failures(silent["api"]) == [0, 0] and kept[0] == reported[0], \
        "a worker that did not answer keeps its baseline"


def test_reports_merge_by_adding_and_quantiles_come_from_the_merged_buckets():
    fast, slow = series(990, 0, 0.010), series(10, 10, 0.300)
    merged = Series()
    for counts in (fast, slow):
        merged.add({"requests": sum(counts[1:]), "failures": counts[0], "buckets_ms": buckets_ms(counts)})
    figures = merged.summary()
    assert (figures["requests"], figures["failures"], figures["success_rate"]) == (1000, 10, 0.99)
    assert 10 <= figures["p50_ms"] <= 12 and 300 <= merged.quantile_ms(0.995) <= 360
    assert figures["p99_ms"] <= 12, "the 99th of 1000 is still among the fast ones"

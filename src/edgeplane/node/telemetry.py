"""Per-worker telemetry: request counters, upstream latency histograms, the access log.

Recording costs a dict increment and a tuple append on the request path; formatting and
writing happen later, in batches, off the loop's critical path. When the access log falls
behind, records are dropped and counted rather than traffic slowed. Events that are not
requests (an endpoint ejected, a breaker opening) are counted by family in `count` and
written to the access log as `event` lines. Merging workers and rendering Prometheus text
is done by the master from `snapshot()`.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import sys
import time
from typing import IO

import orjson

ENCODE_SLICE = 256  # records encoded between two turns of the event loop
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Counted events: family → (metric, help, label names). Workers and the master count with
# `Metrics.count(family, *labels)`; the master sums and renders them.
COUNTERS = {
    "mirror_requests": ("edgeplane_mirror_requests_total", "Mirrored copies, by shadow upstream and result.",
                        ("upstream", "result")),
    "transitions": ("edgeplane_upstream_transitions_total",
                    "Endpoint state changes, by who made them (source) and the state entered.",
                    ("upstream", "endpoint", "source", "state")),
    "outlier_overflow": ("edgeplane_outlier_ejections_overflow_total",
                         "Ejections refused because max_ejection_percent of the servers were out.", ("upstream",)),
    "circuit_breaker_rejected": ("edgeplane_circuit_breaker_rejected_total",
                                 "Requests failed fast because a circuit_breaker limit was reached.",
                                 ("upstream", "limit")),
    "retries": ("edgeplane_retries_total", "Retries sent, by the condition of the try that failed.",
                ("upstream", "condition")),
    "retries_denied": ("edgeplane_retries_denied_total",
                       "Retries not sent because max_retries or the retry_budget was reached.", ("upstream", "limit")),
    "rate_limited": ("edgeplane_rate_limited_total",
                     "Requests a rate limit refused or delayed (shaping), or decided without Redis, by policy.",
                     ("policy", "outcome")),
    "auth_refused": ("edgeplane_auth_refused_total", "Requests an auth provider answered 401 or 403.", ("provider",)),
    "client_connections_refused": ("edgeplane_client_connections_refused_total",
                                   "Connections closed at once: their address held connections_per_client.",
                                   ("port",)),
    "tls_handshakes_refused": ("edgeplane_tls_handshakes_refused_total",
                               "TLS handshakes refused: their address exceeded tls_handshakes_per_client.", ("port",)),
}


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list] = {}   # upstream → [bucket counts..., sum, count]
        self.counters: dict[str, dict[tuple, int]] = {family: {} for family in COUNTERS}
        self.handshake_failures = 0

    def handshake_failed(self) -> None:
        self.handshake_failures += 1

    def record(self, application: str, status: int, upstream: str | None, seconds: float) -> None:
        key = (application, STATUS_CLASSES[min(max(status // 100, 1), 5) - 1])
        self.requests[key] = self.requests.get(key, 0) + 1
        if upstream is not None:
            series = self.latency.get(upstream)
            if series is None:
                series = self.latency[upstream] = [0] * (len(BUCKETS) + 1) + [0.0, 0]
            series[bisect.bisect_left(BUCKETS, seconds)] += 1
            series[-2] += seconds
            series[-1] += 1

    def count(self, family: str, *labels: str) -> None:
        counts = self.counters[family]
        counts[labels] = counts.get(labels, 0) + 1

    def snapshot(self) -> dict:
        return {
            "requests": [[app, cls, n] for (app, cls), n in self.requests.items()],
            "latency": {name: list(series) for name, series in self.latency.items()},
            "tls_handshake_failures": self.handshake_failures,
            "counters": {family: [[*labels, n] for labels, n in counts.items()]
                         for family, counts in self.counters.items()},
        }


def merge(snapshots: list[dict]) -> dict:
    requests: dict[tuple[str, str], int] = {}
    latency: dict[str, list] = {}
    counters: dict[str, dict[tuple, int]] = {family: {} for family in COUNTERS}
    for snap in snapshots:
        for app, cls, n in snap["requests"]:
            requests[(app, cls)] = requests.get((app, cls), 0) + n
        for family, rows in snap.get("counters", {}).items():
            into = counters.setdefault(family, {})
            for *labels, n in rows:
                into[tuple(labels)] = into.get(tuple(labels), 0) + n
        for name, series in snap["latency"].items():
            into = latency.setdefault(name, [0] * len(series))
            for i, value in enumerate(series):
                into[i] += value
    return {"requests": requests, "latency": latency, "counters": counters,
            "tls_handshake_failures": sum(snap.get("tls_handshake_failures", 0) for snap in snapshots)}


def render_prometheus(merged: dict, gauges: dict[str, float], versions: dict[int, str], dropped: int,
                      labeled: list[tuple[str, str, list[tuple[dict, float]]]] = ()) -> str:
    """`labeled`: gauges with labels, as (metric, help, [(labels, value)])."""
    lines = ["# HELP edgeplane_requests_total Requests answered, by application and status class.",
             "# TYPE edgeplane_requests_total counter"]
    for (app, cls), n in sorted(merged["requests"].items()):
        lines.append(f'edgeplane_requests_total{{application="{_label(app)}",status_class="{cls}"}} {n}')
    lines += ["# HELP edgeplane_upstream_response_seconds Time from request sent to response end.",
              "# TYPE edgeplane_upstream_response_seconds histogram"]
    for name, series in sorted(merged["latency"].items()):
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), series[: len(BUCKETS) + 1]):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'edgeplane_upstream_response_seconds_bucket{{upstream="{_label(name)}",le="{le}"}} {cumulative}')
        lines.append(f'edgeplane_upstream_response_seconds_sum{{upstream="{_label(name)}"}} {series[-2]}')
        lines.append(f'edgeplane_upstream_response_seconds_count{{upstream="{_label(name)}"}} {series[-1]}')
    for family, (metric, help_text, names) in COUNTERS.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        for labels, n in sorted(merged["counters"].get(family, {}).items()):
            lines.append(f"{metric}{{{_labels(dict(zip(names, labels)))}}} {n}")
    for metric, help_text, rows in labeled:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{{{_labels(labels)}}} {value}" for labels, value in rows]
    lines += ["# HELP edgeplane_tls_handshake_failures_total TLS handshakes that failed or timed out.",
              "# TYPE edgeplane_tls_handshake_failures_total counter",
              f"edgeplane_tls_handshake_failures_total {merged.get('tls_handshake_failures', 0)}"]
    for name, value in gauges.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# TYPE edgeplane_{name} {kind}", f"edgeplane_{name} {value}"]
    lines += ["# HELP edgeplane_config_info Config version each worker serves.",
              "# TYPE edgeplane_config_info gauge"]
    for index, version in sorted(versions.items()):
        lines.append(f'edgeplane_config_info{{worker="{index}",version="{version}"}} 1')
    lines += ["# HELP edgeplane_access_log_dropped_total Access-log records dropped under back-pressure.",
              "# TYPE edgeplane_access_log_dropped_total counter", f"edgeplane_access_log_dropped_total {dropped}"]
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{name}="{_label(str(value))}"' for name, value in labels.items())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class AccessLog:
    """Keeps raw records, then a few times a second turns a batch into JSON lines on the
    loop (outside any request) and writes them from a thread, one write per batch: the
    thread does only the system call, which leaves the interpreter lock to the loop."""

    def __init__(self, target: str | None, worker: int | None = 0, max_pending: int = 50_000):
        self.target = target
        self.worker = worker
        self.pending: list[tuple] = []
        self.max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self.writing = False
        self.stream: IO[bytes] | None = None
        if target == "-":
            self.stream = sys.stdout.buffer
        elif target:
            self.fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    def append(self, record: tuple | dict) -> None:
        """A request's raw fields (a tuple), or an event line already made (a dict with `event`)."""
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
        else:
            self.pending.append(record)

    async def flush(self) -> None:
        if not self.pending or self.writing:
            return
        batch, self.pending = self.pending, []
        self.writing = True
        try:
            chunks = []
            for first in range(0, len(batch), ENCODE_SLICE):
                chunks.append(self.encode(batch[first:first + ENCODE_SLICE]))
                await asyncio.sleep(0)  # let requests run between slices: telemetry never stalls them
            await asyncio.get_running_loop().run_in_executor(None, self._write, b"".join(chunks), len(batch))
        finally:
            self.writing = False

    def encode(self, batch: list[tuple]) -> bytes:
        wall = time.time() - time.monotonic()  # monotonic → wall clock, once per batch
        worker, dumps, newline = self.worker, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        lines = []
        append = lines.append
        for record in batch:
            if type(record) is dict:
                append(dumps(record, option=newline))
                continue
            (start, end, request_id, client, method, host, target, status, bytes_in, bytes_out, app, rule,
             upstream, upstream_addr, upstream_status, connected_at, sent_at, error, version, tls, attempts, retried,
             breaker_limit, consumer) = record
            tls_version = ja4 = identity = fingerprint = None
            if tls is not None:
                tls_version, ja4, verified = tls.version, tls.ja4, tls.identity
                if verified is not None:
                    identity, fingerprint = verified.primary or None, verified.fingerprint or None
            # Times to the microsecond: int() and a division, which round() takes ten times as long for.
            append(dumps({
                "time": int((wall + start) * 1e6 + 0.5) / 1e6, "request_id": request_id.decode("latin-1") or None,
                "client": client, "method": method or None, "host": host,
                "uri": target.decode("latin-1") if target is not None else None, "status": status,
                "bytes_in": bytes_in, "bytes_out": bytes_out, "application": app, "rule": rule,
                "upstream": upstream, "upstream_addr": upstream_addr, "upstream_status": upstream_status or None,
                "duration_ms": int((end - start) * 1e6 + 0.5) / 1e3,
                "connect_ms": int((connected_at - start) * 1e6 + 0.5) / 1e3 if connected_at else None,
                "upstream_ms": int((end - sent_at) * 1e6 + 0.5) / 1e3 if sent_at else None,
                "error": error or None, "worker": worker, "config_version": version, "tls_version": tls_version,
                "ja4": ja4, "tls_client_identity": identity, "tls_client_fingerprint": fingerprint,
                "attempts": attempts, "retry": retried.rstrip(",") or None, "circuit_breaker": breaker_limit or None,
                "consumer": consumer or None}, option=newline))
        return b"".join(lines)

    def _write(self, data: bytes, records: int) -> None:
        if self.stream is not None:
            self.stream.write(data)
            self.stream.flush()
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        self.written += records

    def flush_now(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            self._write(self.encode(batch), len(batch))

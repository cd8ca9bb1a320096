"""The node's traffic reports to its admin, sent by the master: each upstream's requests,
failures and duration histogram since the previous report, all workers together, on the
cadence the admin answers with (often while a canary runs in the partition, rarely else)
and at once when the node has applied a release.

Workers count since they started (`stats.TrafficWindow.totals`); the master keeps what
each one had when the last report was taken, so a report is the difference (a restarted
worker, a new pid, counts from zero). A report the admin did not take is not lost: the
next one covers its time too. Nothing here serves traffic or decides anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from .stats import add, buckets_ms, empty_series
from .sync import Identity, _message
from .worker import log

FIRST_REPORT = 2.0  # seconds before the first report; then the admin says


class TrafficReporter:
    def __init__(self, admin: str, identity: Identity, ask_workers: Callable[[], Awaitable[list[dict]]]):
        self.admin = admin.rstrip("/")
        self.identity = identity
        self.ask_workers = ask_workers  # each worker's {"worker", "pid", "upstreams": totals}
        self.reported: dict[int, tuple[int, dict[str, list[int]]]] = {}  # worker → (pid, totals reported)
        self.since = time.monotonic()
        self.interval = FIRST_REPORT
        self.last_error = ""
        self.woken = asyncio.Event()

    def wake(self) -> None:
        """Report now: the node applied a release (a canary's step closes a window here, and
        the admin's answer says how often to report under it)."""
        self.woken.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, connect=5)) as client:
            while True:
                try:
                    await asyncio.wait_for(self.woken.wait(), self.interval)
                except TimeoutError:
                    pass
                self.woken.clear()
                try:
                    await self.report(client)
                except (httpx.HTTPError, OSError, ValueError, KeyError) as error:
                    text = f"{type(error).__name__}: {error}"
                    if text != self.last_error:
                        log("traffic_report_failed", admin=self.admin, error=text)
                    self.last_error = text

    async def report(self, client: httpx.AsyncClient) -> None:
        identity = self.identity.load()
        if identity is None:  # not joined yet
            return
        answers = await self.ask_workers()
        upstreams, reported = self.difference(answers)
        now = time.monotonic()
        body = {"seconds": round(now - self.since, 3), "upstreams": {
            name: {"requests": sum(series[1:]), "failures": series[0], "buckets_ms": buckets_ms(series)}
            for name, series in upstreams.items() if any(series)}}
        response = await client.post(f"{self.admin}/api/v1/nodes/traffic", json=body,
                                     headers={"Authorization": f"Bearer {identity['secret']}"})
        if response.status_code != 200:
            raise ValueError(f"the admin refused the traffic report: {_message(response)}")
        self.reported, self.since, self.last_error = reported, now, ""
        self.interval = float(response.json()["next_in"])

    def difference(self, answers: list[dict]) -> tuple[dict[str, list[int]], dict]:
        """Counts since the last report taken, and what each worker will have reported."""
        upstreams: dict[str, list[int]] = {}
        reported = dict(self.reported)  # a worker that did not answer keeps its baseline
        for answer in answers:
            pid, before = self.reported.get(answer["worker"], (None, {}))
            for name, series in answer["upstreams"].items():
                previous = before.get(name, empty_series()) if pid == answer["pid"] else empty_series()
                add(upstreams, {name: [now - then for now, then in zip(series, previous)]})
            reported[answer["worker"]] = (answer["pid"], answer["upstreams"])
        return upstreams, reported

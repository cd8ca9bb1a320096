"""Outlier detection: passive health from real traffic, Envoy's model, in each worker.

Every try of an exchange reports what it met: an answer's status (`observe_status`) or a
gateway error (`observe_error`: connect failure, reset, timeout). Too many 5xx or gateway
errors in a row eject the server at once; success rates are judged every `interval` by
`sweep`, which also readmits servers whose ejection ended. An ejection lasts
base × (times ejected), at most the maximum, and is refused when it would take more than
`max_ejection_percent` of the servers out, or the last server still available. This module
decides; endpoints hold the state (so it survives reloads); nothing here touches sockets.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.config import OutlierDetection
    from .endpoints import Endpoint

GATEWAY_STATUSES = frozenset({502, 503, 504})
SOURCE = "outlier_detection"


def ejection_allowance(servers: int, percent: float) -> int:
    """How many of `servers` may be ejected at once: `percent` of them rounded down, at
    least one of several (as Envoy ejects at least one), never all unless percent is 100."""
    allowed = math.floor(servers * percent / 100)
    if percent > 0 and servers > 1:
        allowed = max(allowed, 1)
    return allowed if percent >= 100 else min(allowed, servers - 1)


class OutlierDetector:
    """One upstream's detection, built with each runtime over the endpoints it balances."""

    __slots__ = ("upstream", "endpoints", "config", "reporter", "allowance", "rated", "next_judgement")

    def __init__(self, upstream: str, endpoints: list[Endpoint], config: OutlierDetection, reporter: Any):
        self.upstream = upstream
        self.endpoints = endpoints
        self.config = config
        self.reporter = reporter
        self.allowance = ejection_allowance(len(endpoints), config.max_ejection_percent)
        self.rated = config.success_rate is not None
        self.next_judgement = 0.0
        for endpoint in endpoints:
            endpoint.detector = self

    # --- what each try met (on the request path: a few counter updates) ---------------

    def observe_status(self, endpoint: Endpoint, status: int, now: float) -> None:
        if self.rated:
            endpoint.answered += 1
        if status < 500:
            endpoint.consecutive_5xx = endpoint.consecutive_gateway = 0
            return
        if self.rated:
            endpoint.errors += 1
        endpoint.consecutive_5xx += 1
        if status in GATEWAY_STATUSES:
            endpoint.consecutive_gateway += 1
        else:
            endpoint.consecutive_gateway = 0
        self.check(endpoint, now, f"{status} answered")

    def observe_error(self, endpoint: Endpoint, kind: str, now: float) -> None:
        """A gateway error (connect-failure, reset, timeout): it counts as a 5xx too."""
        if self.rated:
            endpoint.answered += 1
            endpoint.errors += 1
        endpoint.consecutive_5xx += 1
        endpoint.consecutive_gateway += 1
        self.check(endpoint, now, kind)

    def check(self, endpoint: Endpoint, now: float, last: str) -> None:
        config = self.config
        if config.consecutive_gateway_errors and endpoint.consecutive_gateway >= config.consecutive_gateway_errors:
            self.eject(endpoint, now, f"{endpoint.consecutive_gateway} consecutive gateway errors (last: {last})")
        elif config.consecutive_5xx and endpoint.consecutive_5xx >= config.consecutive_5xx:
            self.eject(endpoint, now, f"{endpoint.consecutive_5xx} consecutive 5xx (last: {last})")

    # --- ejecting and readmitting -----------------------------------------------------

    def eject(self, endpoint: Endpoint, now: float, why: str) -> None:
        endpoint.consecutive_5xx = endpoint.consecutive_gateway = 0
        if endpoint.ejected_until > now:
            return
        ejected = sum(1 for e in self.endpoints if e.ejected_until > now)
        others_up = any(e.down_until <= now for e in self.endpoints if e is not endpoint)
        if ejected >= self.allowance or not others_up:
            self.reporter.count("outlier_overflow", self.upstream)
            return
        config = self.config
        endpoint.times_ejected += 1
        seconds = min(config.base_ejection_time * endpoint.times_ejected, config.max_ejection_time)
        endpoint.ejection_since = now
        endpoint.ejected_until = now + seconds
        endpoint.refresh()
        self.reporter.transition(self.upstream, endpoint.label, SOURCE, "ejected",
                                 f"{why}; ejected for {seconds:g}s (ejection {endpoint.times_ejected})")

    def sweep(self, now: float) -> None:
        """Readmit servers whose ejection ended; every `interval`, judge success rates and
        let a server that stayed in for an interval earn back one step of ejection time."""
        for endpoint in self.endpoints:
            if endpoint.ejected_until and endpoint.ejected_until <= now:
                lasted, endpoint.ejection_since = now - endpoint.ejection_since, now
                endpoint.ejected_until = 0.0
                endpoint.refresh()
                self.reporter.transition(self.upstream, endpoint.label, SOURCE, "returned",
                                         f"ejection ended after {lasted:.1f}s")
        if now < self.next_judgement:
            return
        first = not self.next_judgement
        self.next_judgement = now + self.config.interval
        if first:
            return
        for endpoint in self.endpoints:
            if (endpoint.times_ejected and not endpoint.ejected_until
                    and now - endpoint.ejection_since >= self.config.interval):
                endpoint.times_ejected -= 1
        if self.rated:
            self.judge_success_rates(now)

    def judge_success_rates(self, now: float) -> None:
        rules = self.config.success_rate
        judged = [e for e in self.endpoints if e.answered >= rules.request_volume and not e.ejected_until]
        if len(judged) >= rules.minimum_hosts:
            rates = [1 - e.errors / e.answered for e in judged]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - rules.stdev_factor * stdev
            for endpoint, rate in zip(judged, rates):
                if rate < threshold:
                    self.eject(endpoint, now, f"success rate {rate:.1%} below {threshold:.1%} "
                                              f"(mean {mean:.1%} - {rules.stdev_factor:g} x stdev {stdev:.1%})")
        for endpoint in self.endpoints:
            endpoint.answered = endpoint.errors = 0

"""Circuit breaking and the retry budget: how much one upstream may be asked at once.

A `Breaker` counts, for one upstream in one worker, the requests in flight, those waiting
for a new connection (pending), the open connections and the retries in flight, and
holds the upstream's `circuit_breaker` limits and `retry_budget`. Nothing waits in a
queue here: a request over a limit is refused at once (the exchange answers 503 naming
the limit), a retry over the budget is not sent. A limit is "open" from the first request
it refuses until one fits again; both moments are transitions. Counters outlive config
versions (they count what is in flight); limits come with each. No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.config import CircuitBreaker, RetryBudget

SOURCE = "circuit_breaker"
CONNECTION_LIMITS = ("max_connections", "max_pending_requests")


class Breaker:
    __slots__ = ("upstream", "reporter", "requests", "pending", "connections", "retries", "max_connections",
                 "max_pending_requests", "max_requests", "max_retries", "budget_share", "budget_minimum", "open")

    def __init__(self, upstream: str, reporter: Any):
        self.upstream = upstream
        self.reporter = reporter
        self.requests = self.pending = self.connections = self.retries = 0
        self.open: set[str] = set()
        self.configure(None, None)

    def configure(self, limits: CircuitBreaker | None, budget: RetryBudget | None) -> None:
        self.max_connections = limits.max_connections if limits else None
        self.max_pending_requests = limits.max_pending_requests if limits else None
        self.max_requests = limits.max_requests if limits else None
        self.max_retries = limits.max_retries if limits else None
        self.budget_share = budget.percent / 100 if budget else 1.0
        self.budget_minimum = budget.min_concurrency if budget else 0

    # --- requests (on the request path: a comparison and a counter) -----------------------

    def admit(self) -> str | None:
        """A new request: None when it may go on (it is counted until `leave`), else the limit it hit."""
        limit = self.max_requests
        if limit is not None and self.requests >= limit:
            return self.refuse("max_requests")
        if self.open:
            self.fits("max_requests")
        self.requests += 1
        return None

    def leave(self, retrying: bool) -> None:
        self.requests -= 1
        if retrying:
            self.retries -= 1

    def may_connect(self) -> str | None:
        """A request needs a new connection: None when it may open one, else the limit it hit."""
        limit = self.max_connections
        if limit is not None and self.connections + self.pending >= limit:
            return self.refuse("max_connections")
        limit = self.max_pending_requests
        if limit is not None and self.pending >= limit:
            return self.refuse("max_pending_requests")
        if self.open:
            self.fits(*CONNECTION_LIMITS)
        return None

    def admit_retry(self, retrying: bool) -> str | None:
        """A retry: None when the upstream can afford it (it counts as a retry in flight until
        its try ends or the request does), else `max_retries` or `retry_budget`. `retrying`:
        the request's previous try was a retry, which is over; each retry is judged anew, so
        a request admitted once cannot go on retrying after the load that allowed it left."""
        if retrying:
            self.retries -= 1
        if self.max_retries is not None and self.retries >= self.max_retries:
            denied = "max_retries"
        elif self.retries + 1 > max(self.budget_minimum, self.budget_share * (self.requests - self.retries - 1)):
            denied = "retry_budget"  # once a retry, this request no longer counts among the first tries
        else:
            self.retries += 1
            return None
        self.reporter.count("retries_denied", self.upstream, denied)
        return denied

    # --- open and closed ------------------------------------------------------------------

    def describe(self, limit: str) -> str:
        return f"{limit} ({getattr(self, limit)}) reached"

    def refuse(self, limit: str) -> str:
        self.reporter.count("circuit_breaker_rejected", self.upstream, limit)
        if limit not in self.open:
            self.open.add(limit)
            self.reporter.transition(self.upstream, "", SOURCE, "open", self.describe(limit))
        return limit

    def fits(self, *limits: str) -> None:
        for limit in limits:
            if limit in self.open:
                self.open.discard(limit)
                self.reporter.transition(self.upstream, "", SOURCE, "closed", f"{limit} has room again")

    def status(self) -> dict:
        return {"requests": self.requests, "pending": self.pending, "connections": self.connections,
                "retries": self.retries, "open": sorted(self.open)}

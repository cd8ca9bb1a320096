"""Retry policies: which failed tries a route sends again, and after how long.

A route's `retry` is prepared once per config into a `RetryPolicy`: the conditions it
covers as two flags and a set of statuses, the backoff. The exchange asks `covers` when a
try fails before its response began and, when a retry is allowed (method, body, deadline,
the upstream's budget — see `breaker.py`), waits `delay(n)` before the next try. This
module holds no state of any request and performs no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..model.config import Retry

CONNECT_FAILURE = "connect-failure"
RESET = "reset"  # closed before an answer, or no answer within a try's timeout
GATEWAY_STATUSES = frozenset({502, 503, 504})
SERVER_ERRORS = frozenset(range(500, 600))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    on_connect_failure: bool
    on_reset: bool
    statuses: frozenset[int]
    non_idempotent: bool
    backoff: float
    max_backoff: float
    replay_limit: int

    def covers(self, condition: str, status: int = 0) -> bool:
        """`condition`: connect-failure, reset, or an answer's `status`."""
        if condition == CONNECT_FAILURE:
            return self.on_connect_failure
        if condition == RESET:
            return self.on_reset
        return status in self.statuses

    def delay(self, retry: int) -> float:
        """Exponential backoff with full jitter before the `retry`-th retry (1, 2, ...)."""
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** (retry - 1)))


def retry_policy(retry: Retry) -> RetryPolicy:
    on = set(retry.retry_on)
    broad = bool(on & {"gateway-error", "5xx"})  # both include connect failures and resets
    statuses = set(retry.statuses)
    if "gateway-error" in on:
        statuses |= GATEWAY_STATUSES
    if "5xx" in on:
        statuses |= SERVER_ERRORS
    return RetryPolicy(
        attempts=retry.attempts, on_connect_failure=broad or CONNECT_FAILURE in on, on_reset=broad or RESET in on,
        statuses=frozenset(statuses), non_idempotent=retry.non_idempotent, backoff=retry.backoff,
        max_backoff=retry.max_backoff if retry.max_backoff is not None else 10 * retry.backoff,
        replay_limit=retry.replay_limit)

"""Rate limits as rule steps: token bucket, sliding window and concurrency, per key and tier.

A `rate-limit` action counts the request under its policy's key (any rule variables) in
the policy's scope: this worker, the node (`shared.py`) or the cluster (Redis, one script
per decision, `cluster_limits.py`). Over the limit it answers 429 with `Retry-After`, or
— shaping — delays the request while the delay stays within `max_delay`. Concurrency
slots are given back when the exchange ends, however it ends. Everything but the count is
prepared once per config version; a decision made in memory never suspends the chain.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..lang.compile import CompileContext, LocalResponse, Step, Suspend, variables_key
from ..model.config import RateLimit

if TYPE_CHECKING:
    from .access import AccessState

TOO_MANY = b"429 Too Many Requests: the rate limit of this route is exceeded\n"
TEXT = (b"Content-Type", b"text/plain; charset=utf-8")


@dataclass(frozen=True, slots=True)
class Quota:
    """One tier's numbers, and its `RateLimit-Policy` value (IETF draft: q quota, w window)."""

    limit: int
    rate: float      # tokens per second
    burst: float
    max_debt: float  # tokens a shaped request may borrow
    policy: tuple    # the header op adding its RateLimit-Policy


def quotas(limit: RateLimit) -> tuple[Quota | None, dict[str, Quota | None]]:
    """The default quota and one per tier (None: unlimited)."""
    def quota(amount: int) -> Quota:
        rate = amount / limit.window
        burst = float(limit.burst if limit.burst is not None else amount)
        window = max(1, math.ceil(limit.window))
        policy = b'"%s";q=%d;w=%d' % (limit.name.encode(), amount, window)
        return Quota(amount, rate, burst, limit.max_delay * rate, ("add", b"ratelimit-policy", b"RateLimit-Policy", policy))
    tiers = {name: None if amount == "unlimited" else quota(amount) for name, amount in limit.tiers.items()}
    return quota(limit.limit), tiers


def compile_limit(limit: RateLimit, context: CompileContext, state: AccessState) -> Step:
    key_of = variables_key(limit.key, context) if limit.key else (lambda _request: "")
    default, tiers = quotas(limit)
    tier_of = variables_key([limit.tier], context) if limit.tier else None

    def quota_of(request: Any) -> Quota | None:
        return tiers.get(tier_of(request), default) if tier_of is not None else default
    prefix = f"rl:{limit.name}:".encode()
    if limit.algorithm == "concurrency":
        store = state.memory(limit.scope)
        return _concurrency_step(limit, prefix, key_of, quota_of, store, state.metrics)
    answer = _answer(limit, state.metrics)
    if limit.scope == "cluster":
        return state.cluster().step(limit, prefix, key_of, quota_of, answer)
    count = _counter(limit, state.memory(limit.scope))

    def rate_limit(request: Any, ops: list) -> Any:
        quota = quota_of(request)
        if quota is None:
            return None
        admitted, remaining, wait = count(prefix + key_of(request).encode("utf-8", "surrogateescape"), quota)
        return answer(admitted, remaining, wait, quota, ops)
    return rate_limit


def _counter(limit: RateLimit, store: Any) -> Callable[[bytes, Quota], tuple]:
    """The decision in memory (this worker's or the node's), for one key and quota."""
    if limit.algorithm == "sliding-window":
        window, max_wait = limit.window, limit.max_delay
        return lambda key, quota: store.sliding_window(key, quota.limit, window, monotonic(), max_wait)
    return lambda key, quota: store.token_bucket(key, quota.rate, quota.burst, monotonic(), quota.max_debt)


def _answer(limit: RateLimit, metrics: Any) -> Callable[[bool, int, float, Quota, list], Any]:
    """Turns a decision into the step's outcome: None (go on), a Suspend (shaping) or a 429."""
    headers, window = limit.headers, limit.window
    policy = limit.name
    named = b'"%s";r=' % limit.name.encode()
    bucket = limit.algorithm == "token-bucket"

    def answer(admitted: bool, remaining: int, wait: float, quota: Quota, ops: list) -> Any:
        if headers:
            if admitted:
                reset = (quota.burst - remaining) / quota.rate if bucket else window
            else:
                reset = wait
            ops.append(quota.policy)
            ops.append(("add", b"ratelimit", b"RateLimit", named + b"%d;t=%d" % (remaining, math.ceil(reset))))
        if not admitted:
            metrics.count("rate_limited", policy, "refused")
            return LocalResponse(429, [(b"Retry-After", b"%d" % max(1, math.ceil(wait))), TEXT], TOO_MANY)
        if wait > 0.0:
            metrics.count("rate_limited", policy, "delayed")
            return Suspend(delay(wait))
        return None
    return answer


def delay(seconds: float) -> asyncio.Future:
    """A future done after `seconds`: waiting on it needs no task."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(seconds, _finish, future)
    return future


def _finish(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _concurrency_step(limit: RateLimit, prefix: bytes, key_of: Callable, quota_of: Callable, store: Any,
                      metrics: Any) -> Step:
    refused = LocalResponse(429, [(b"Retry-After", b"1"), TEXT],
                            b"429 Too Many Requests: too many requests of this kind are in progress\n")

    def limit_concurrency(request: Any, _ops: list) -> Any:
        quota = quota_of(request)
        if quota is None:
            return None
        key = prefix + key_of(request).encode("utf-8", "surrogateescape")
        if not store.acquire(key, quota.limit):
            metrics.count("rate_limited", limit.name, "refused")
            return refused
        request.on_end(lambda: store.release(key))
        return None
    return limit_concurrency

"""Cluster-wide rate limits: counters in Redis, one atomic Lua script per decision.

The scripts run the same algorithms as `shared.py` on Redis's own clock (`TIME`), so nodes
need no synchronized clocks; they are sent once and then called by digest (EVALSHA, which
redis-py falls back from to EVAL after a Redis restart). When Redis cannot answer within
`settings.redis.timeout`, the policy's `on_unreachable` decides, and for
`settings.redis.retry` decisions skip Redis altogether; after that the next decision tries
again on a fresh connection. This module never blocks the loop: every call to Redis is
awaited inside a suspended rule step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..lang.compile import LocalResponse, Step, Suspend
from ..model.config import RateLimit, Redis

# KEYS[1]: the counter; ARGV: rate/s, burst, tokens a shaped request may borrow.
TOKEN_BUCKET = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, debt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
if tokens == nil then tokens = burst else tokens = math.min(burst, tokens + (now - tonumber(state[2])) * rate) end
local admitted, wait = 0, 0
if tokens - 1 >= -debt then
  tokens = tokens - 1
  admitted = 1
  wait = math.max(0, -tokens / rate)
else
  wait = (1 - debt - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst + debt) / rate * 1000) + 1000)
return {admitted, math.max(0, math.floor(tokens)), tostring(wait)}
"""

# KEYS[1]: the counter; ARGV: limit, window (s), max wait (s; shaping). The sliding window
# counter of shared.py, `later` counting the shaped requests put in the next window.
SLIDING_WINDOW = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local limit, window, maxwait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local current = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'window', 'previous', 'count', 'later')
local previous, count, later = 0, 0, 0
local stored = tonumber(state[1])
if stored == current then previous, count, later = tonumber(state[2]), tonumber(state[3]), tonumber(state[4]) or 0
elseif stored == current - 1 then previous, count = tonumber(state[3]), tonumber(state[4]) or 0 end
local function save()
  redis.call('HSET', KEYS[1], 'window', current, 'previous', previous, 'count', count, 'later', later)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000) + 1000)
end
local into = now / window - current
local estimate = previous * (1 - into) + count
if estimate + 1 <= limit then
  count = count + 1
  save()
  return {1, math.floor(limit - estimate - 1), '0'}
end
local excess = estimate + 1 - limit
local room = limit - 1 - later
local wait
if previous * (1 - into) >= excess then
  wait = excess / previous * window
  if wait <= maxwait then count = count + 1; save(); return {1, 0, tostring(wait)} end
elseif room >= 0 then
  wait = (1 - into) * window
  if count > room then wait = wait + window * (1 - room / count) end
  if wait <= maxwait then later = later + 1; save(); return {1, 0, tostring(wait)} end
else
  wait = (2 - into) * window
end
save()
return {0, 0, tostring(wait)}
"""

UNAVAILABLE = LocalResponse(503, [(b"Retry-After", b"1"), (b"Content-Type", b"text/plain; charset=utf-8")],
                            b"503 Service Unavailable: the rate limit of this route cannot be checked\n")


class ClusterLimits:
    """One Redis (by URL) for a worker: its client, its scripts, and whether it is down."""

    def __init__(self, settings: Redis, fallback: Any, metrics: Any):
        self.settings = settings
        self.metrics = metrics
        self.fallback = fallback  # the node's counters, for on_unreachable: local
        self.client = aioredis.Redis.from_url(
            settings.url, socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout,
            retry_on_timeout=False, health_check_interval=0)
        self.bucket = self.client.register_script(TOKEN_BUCKET)
        self.window = self.client.register_script(SLIDING_WINDOW)
        self.down_until = 0.0
        self.failures = 0

    def step(self, limit: RateLimit, prefix: bytes, key_of: Callable, quota_of: Callable,
             answer: Callable) -> Step:
        redis_key = self.settings.key_prefix.encode() + prefix
        script, bucket = (self.bucket, True) if limit.algorithm == "token-bucket" else (self.window, False)
        window, policy = limit.window, limit.on_unreachable

        def args(quota: Any) -> list:
            return [quota.rate, quota.burst, quota.max_debt] if bucket else [quota.limit, window, limit.max_delay]

        def unreachable(key: bytes, quota: Any, ops: list) -> Any:
            self.metrics.count("rate_limited", limit.name, f"redis-unreachable-{policy}")
            if policy == "allow":
                return None
            if policy == "deny":
                return UNAVAILABLE
            if bucket:
                decision = self.fallback.token_bucket(key, quota.rate, quota.burst, monotonic(), quota.max_debt)
            else:
                decision = self.fallback.sliding_window(key, quota.limit, window, monotonic(), limit.max_delay)
            return answer(*decision, quota, ops)

        async def ask(key: bytes, quota: Any, ops: list) -> Any:
            try:
                admitted, remaining, wait = await script(keys=[redis_key + key], args=args(quota))
            except (RedisError, OSError, TimeoutError):
                self.failed()
                return unreachable(prefix + key, quota, ops)
            self.failures = 0
            return answer(bool(admitted), int(remaining), float(wait), quota, ops)

        def cluster_rate_limit(request: Any, ops: list) -> Any:
            quota = quota_of(request)
            if quota is None:
                return None
            key = key_of(request).encode("utf-8", "surrogateescape")
            if self.down_until and monotonic() < self.down_until:
                return unreachable(prefix + key, quota, ops)
            return Suspend(ask(key, quota, ops))
        return cluster_rate_limit

    def failed(self) -> None:
        """Skip Redis for a while; the pool reconnects on the next try after that."""
        self.failures += 1
        self.down_until = monotonic() + self.settings.retry

    def close(self) -> None:
        """Replaced by a client with other settings: its connections go once it is done."""
        asyncio.ensure_future(self.client.aclose())

    @property
    def up(self) -> bool:
        return not self.down_until or monotonic() >= self.down_until

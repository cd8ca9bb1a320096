"""Counters for limits: per worker (`LocalMemory`) or shared by the workers of a node (`SharedMemory`).

Both offer the same calls — `token_bucket`, `sliding_window`, `acquire`/`release` — on keys
that are bytes. `SharedMemory` is one file of fixed size in the master's run directory,
mapped by every worker: records sit in buckets of 8 slots (a key's bucket is fixed by its
64-bit hash) and a bucket changes only under an fcntl lock on its own bytes, which the
kernel drops if a worker dies holding it. Decisions are exact — serialized per key, on
the one monotonic clock all processes share — except after an eviction (a full bucket
forgets its least recently used record, so memory stays fixed and a forgotten key starts
afresh: it fails open) and for token buckets large enough to lease: a worker takes their
tokens a few at a time (a lease) and spends them without a lock. This module knows no
HTTP and no config.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
from collections.abc import Callable

from ..lang.keys import stable_hash

WAYS = 8                 # slots per bucket
RECORD = 48              # key (u64), last use (f64), 32 bytes of state
BUCKET = WAYS * RECORD
RATE_SLOTS = 1 << 16     # distinct rate-limit keys a node remembers (3 MiB)
GAUGE_SLOTS = 1 << 14    # distinct concurrency keys in flight at once (768 KiB)
COLUMNS = 16             # gauge counts are kept per worker, in this many columns
HEADER = struct.Struct("<8sIII")  # magic, rate buckets, gauge buckets, workers
MAGIC = b"EPSHM\x00\x02\x00"
LOCAL_KEYS = 100_000     # keys a worker-scope store (and a worker's leases) remembers
# Leases: the workers of a node together hold at most this share of a bucket's burst (or
# of a second's refill, when that is smaller) taken but not yet spent, so what the node
# admits differs from an exact bucket by at most that much. A lease unused for LEASE_TTL
# gives its tokens back the next time its worker sees the key.
LEASE_SHARE = 0.05
LEASE_TTL = 1.0

_KEYS = struct.Struct("<" + "Q40x" * (WAYS - 1) + "Q")  # the keys of a bucket's slots
_USES = struct.Struct("<8x" + "d32x8x" * (WAYS - 1) + "d")  # their last uses
_ENTRY = struct.Struct("<Qd")
_RATE = struct.Struct("<4d")
_RATE_RECORD = struct.Struct("<Qd4d")
_GAUGE = struct.Struct(f"<{COLUMNS}H")
EMPTY = (0.0, 0.0, 0.0, 0.0)

Decision = tuple[bool, int, float]
"""(admitted, what remains of the quota, seconds: the delay before an admitted request goes
on when shaping — else 0 — or, refused, how long until one would be admitted)."""


def key_hash(key: bytes) -> int:
    return stable_hash(key) or 1  # 0 marks a free slot


# --- the algorithms: state (4 floats) in, state and decision out -----------------------


def bucket_step(state: tuple, now: float, rate: float, burst: float, max_debt: float) -> tuple[tuple, Decision]:
    """Token bucket: `burst` tokens, refilled at `rate` per second; a request takes one. With
    `max_debt` (shaping) a request may take a token not yet there and waits for it."""
    tokens, stamp = state[0], state[1]
    tokens = burst if stamp == 0.0 else min(burst, tokens + (now - stamp) * rate)
    if tokens - 1 >= -max_debt:
        tokens -= 1
        return (tokens, now, 0.0, 0.0), (True, max(0, int(tokens)), max(0.0, -tokens / rate))
    return (tokens, now, 0.0, 0.0), (False, 0, (1 - max_debt - tokens) / rate)


def lease_step(state: tuple, now: float, rate: float, burst: float, size: int,
               unused: float) -> tuple[tuple, tuple[Decision, int]]:
    """Token bucket, taking up to `size` tokens at once (at least one, or none: refused) after
    giving back the `unused` ones of the worker's previous lease; also returns how many were
    taken. The decision is the first token's, `remaining` counting the others."""
    tokens, stamp = state[0], state[1]
    tokens = burst if stamp == 0.0 else min(burst, tokens + (now - stamp) * rate + unused)
    if tokens < 1:
        return (tokens, now, 0.0, 0.0), ((False, 0, (1 - tokens) / rate), 0)
    taken = min(size, int(tokens))
    tokens -= taken
    return (tokens, now, 0.0, 0.0), ((True, int(tokens) + taken - 1, 0.0), taken)


def window_step(state: tuple, now: float, limit: float, window: float, max_wait: float = 0.0) -> tuple[tuple, Decision]:
    """Sliding window counter: the previous window's count, weighted by how much of it the
    sliding window still covers, plus the current window's count. With `max_wait` (shaping)
    a request over the limit goes on at the first moment the counter has room for it, if
    that is within `max_wait` — later in this window or in the next one — and is counted in
    the window it goes in (the next window's in the state's fourth number)."""
    current = math.floor(now / window)
    if state[0] == current:
        previous, count, later = state[1], state[2], state[3]
    elif state[0] == current - 1:
        previous, count, later = state[2], state[3], 0.0
    else:
        previous, count, later = 0.0, 0.0, 0.0
    into = now / window - current  # fraction of the current window gone by
    estimate = previous * (1 - into) + count
    if estimate + 1 <= limit:
        return (current, previous, count + 1, later), (True, int(limit - estimate - 1), 0.0)
    excess = estimate + 1 - limit
    room = limit - 1 - later  # what the next window holds besides those already put there
    if previous * (1 - into) >= excess:  # the previous window's share fades enough in this one
        wait = excess / previous * window
        if wait <= max_wait:
            return (current, previous, count + 1, later), (True, 0, wait)
    elif room >= 0:  # next window: this one's count, fading
        wait = (1 - into) * window + (window * (1 - room / count) if count > room else 0.0)
        if wait <= max_wait:
            return (current, previous, count, later + 1), (True, 0, wait)
    else:  # the next window is full already
        wait = (2 - into) * window
    return (current, previous, count, later), (False, 0, wait)


# --- a worker's own counters -------------------------------------------------------------


class LocalMemory:
    """Counters of one worker: the same calls as `SharedMemory`, without locks."""

    def __init__(self, keys: int = LOCAL_KEYS):
        self.keys = keys
        self.rates: dict[bytes, tuple] = {}
        self.gauges: dict[int, int] = {}

    def update(self, key: bytes, step: Callable, *args: float) -> Decision:
        rates = self.rates
        state = rates.pop(key, None)
        if state is None:
            state = (0.0, 0.0, 0.0, 0.0)
            if len(rates) >= self.keys:
                del rates[next(iter(rates))]  # the least recently used: each use moves a key to the end
        rates[key], decision = step(state, *args)
        return decision

    def token_bucket(self, key: bytes, rate: float, burst: float, now: float, max_debt: float = 0.0) -> Decision:
        return self.update(key, bucket_step, now, rate, burst, max_debt)

    def sliding_window(self, key: bytes, limit: float, window: float, now: float, max_wait: float = 0.0) -> Decision:
        return self.update(key, window_step, now, limit, window, max_wait)

    def acquire(self, key: bytes, limit: int) -> bool:
        hashed = key_hash(key)
        count = self.gauges.get(hashed, 0)
        if count >= limit:
            return False
        self.gauges[hashed] = count + 1
        return True

    def release(self, key: bytes) -> None:
        hashed = key_hash(key)
        count = self.gauges.pop(hashed, 0) - 1
        if count > 0:
            self.gauges[hashed] = count


# --- the node's shared counters ----------------------------------------------------------


class SharedMemory:
    """The node's shared counters. The master calls `create(path)` once before starting
    workers; each worker calls `SharedMemory(path, index)` and `forget_worker()` at start.

    For per-address limits (the tls engineer's connection and handshake limits):
        shared.acquire(b"conn:" + address, 100)   # False: over the limit
        shared.release(b"conn:" + address)        # when the connection closes
        shared.token_bucket(b"hs:" + address, rate, burst, time.monotonic())
    Keys share one namespace: prefix them with what they count.
    """

    def __init__(self, path: str, worker: int = 0):
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 0)
        magic, rate_buckets, gauge_buckets, workers = HEADER.unpack_from(self.map, 0)
        if magic != MAGIC:
            raise ValueError(f"{path} is not an edgeplane shared-memory file")
        self.rate_buckets, self.gauge_buckets = rate_buckets, gauge_buckets
        self.gauges_at = HEADER.size + rate_buckets * BUCKET
        self.column = worker % COLUMNS
        self.lease_share = LEASE_SHARE / max(1, workers)  # of a bucket, for one worker's lease
        # key → [tokens left, until, rate, what remains in the bucket (-1: refused until then)]
        self.leases: dict[bytes, list] = {}

    @staticmethod
    def create(path: str, rate_slots: int = RATE_SLOTS, gauge_slots: int = GAUGE_SLOTS, workers: int = 1) -> None:
        """`workers`: how many processes will share the file (they split the lease share)."""
        rate_buckets, gauge_buckets = max(1, rate_slots // WAYS), max(1, gauge_slots // WAYS)
        size = HEADER.size + (rate_buckets + gauge_buckets) * BUCKET
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, HEADER.pack(MAGIC, rate_buckets, gauge_buckets, workers), 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    # --- rates ------------------------------------------------------------------------

    def update(self, key: bytes, step: Callable, *args: float) -> tuple:
        """`step` on the key's record, under its bucket's lock: what the step decided."""
        hashed = key_hash(key)
        start = HEADER.size + hashed % self.rate_buckets * BUCKET
        fcntl.lockf(self.fd, fcntl.LOCK_EX, BUCKET, start)
        try:
            slot, found = self.find(start, hashed, None)
            state, decision = step(_RATE.unpack_from(self.map, slot + 16) if found else EMPTY, *args)
            _RATE_RECORD.pack_into(self.map, slot, hashed, args[0], *state)
            return decision
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, BUCKET, start)

    def token_bucket(self, key: bytes, rate: float, burst: float, now: float, max_debt: float = 0.0) -> Decision:
        lease = self.leases.get(key)
        if lease is not None and now < lease[1] and lease[2] == rate:
            if lease[0] >= 1.0:
                lease[0] -= 1.0
                return True, lease[3] + int(lease[0]), 0.0
            if lease[3] < 0:  # refused until then: no token can come sooner (but one given back)
                return False, 0, lease[1] - now
        if max_debt:  # shaping: each wait is computed exactly, under the lock
            return self.update(key, bucket_step, now, rate, burst, max_debt)
        return self.renew(key, lease, int(min(burst, rate) * self.lease_share), rate, burst, now)

    def renew(self, key: bytes, lease: list | None, size: int, rate: float, burst: float, now: float) -> Decision:
        """A decision under the lock, taking up to `size` tokens: the first for this request,
        the others kept as this worker's lease; a refusal is remembered until a token is due."""
        leases = self.leases
        if lease is not None:
            del leases[key]
        elif len(leases) >= LOCAL_KEYS:
            del leases[next(iter(leases))]  # the oldest: what it held is not given back
        unused = lease[0] if lease is not None and lease[2] == rate else 0.0
        decision, taken = self.update(key, lease_step, now, rate, burst, max(1, size), unused)
        if taken > 1:
            leases[key] = [taken - 1.0, now + LEASE_TTL, rate, decision[1] - taken + 1]
        elif not taken:
            leases[key] = [0.0, now + decision[2], rate, -1]
        return decision

    def sliding_window(self, key: bytes, limit: float, window: float, now: float, max_wait: float = 0.0) -> Decision:
        return self.update(key, window_step, now, limit, window, max_wait)

    def find(self, start: int, hashed: int, busy: Callable[[int], bool] | None) -> tuple[int, bool]:
        """The slot of `hashed` in the bucket at `start` (found), else the slot to take for it:
        a free one, else the least recently used one that is not `busy` (-1: none)."""
        keys = _KEYS.unpack_from(self.map, start)
        if hashed in keys:
            return start + keys.index(hashed) * RECORD, True
        if 0 in keys:
            return start + keys.index(0) * RECORD, False
        uses = _USES.unpack_from(self.map, start)
        candidates = [way for way in range(WAYS) if busy is None or not busy(start + way * RECORD)]
        if not candidates:
            return -1, False
        return start + min(candidates, key=uses.__getitem__) * RECORD, False

    # --- gauges (things in flight) -----------------------------------------------------

    def acquire(self, key: bytes, limit: int) -> bool:
        """Count one more in flight for `key` unless `limit` are already; a full bucket of
        busy keys admits without counting (fails open)."""
        hashed = key_hash(key)
        start = self.gauges_at + hashed % self.gauge_buckets * BUCKET
        fcntl.lockf(self.fd, fcntl.LOCK_EX, BUCKET, start)
        try:
            slot, found = self.find(start, hashed, self.busy)
            if slot < 0:
                return True
            counts = list(_GAUGE.unpack_from(self.map, slot + 16)) if found else [0] * COLUMNS
            if sum(counts) >= limit:
                return False
            counts[self.column] = min(counts[self.column] + 1, 0xFFFF)
            _ENTRY.pack_into(self.map, slot, hashed, 0.0)
            _GAUGE.pack_into(self.map, slot + 16, *counts)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, BUCKET, start)

    def release(self, key: bytes) -> None:
        hashed = key_hash(key)
        start = self.gauges_at + hashed % self.gauge_buckets * BUCKET
        fcntl.lockf(self.fd, fcntl.LOCK_EX, BUCKET, start)
        try:
            slot, found = self.find(start, hashed, self.busy)
            if found:
                counts = list(_GAUGE.unpack_from(self.map, slot + 16))
                if counts[self.column]:
                    counts[self.column] -= 1
                    _GAUGE.pack_into(self.map, slot + 16, *counts)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, BUCKET, start)

    def busy(self, slot: int) -> bool:
        return any(_GAUGE.unpack_from(self.map, slot + 16))

    def forget_worker(self) -> None:
        """Zero this worker's gauge column: what a dead predecessor held is not in flight."""
        offset = 16 + 2 * self.column
        for bucket in range(self.gauge_buckets):
            start = self.gauges_at + bucket * BUCKET
            fcntl.lockf(self.fd, fcntl.LOCK_EX, BUCKET, start)
            try:
                for way in range(WAYS):
                    struct.pack_into("<H", self.map, start + way * RECORD + offset, 0)
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, BUCKET, start)

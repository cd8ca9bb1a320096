"""Limits per client address, for the whole node: open connections, and new TLS handshakes
per second.

Counted in the node's shared counters (`shared.py`: one file every worker maps), so a limit
holds whichever worker the kernel hands a connection to; a worker run alone counts in its
own memory. Counts are exact (serialized per address) unless an address finds no room in
the table, when it fails open (see `shared.py`). Nothing is counted while a limit is 0 (off):
a connection keeps the address it was counted under, so a reload that turns a limit on or
off never releases what it did not take. A connection over the limit is closed before
anything is read from it; a handshake over the limit once its ClientHello arrived, before
any cryptography. Nothing here parses requests.
"""

from __future__ import annotations

from time import monotonic

from .shared import LocalMemory, SharedMemory
from .telemetry import Metrics


class ClientLimits:
    __slots__ = ("memory", "metrics")

    def __init__(self, memory: LocalMemory | SharedMemory, metrics: Metrics):
        self.memory = memory
        self.metrics = metrics

    def admit(self, address: str, limit: int, port: int) -> tuple[bool, str | None]:
        """One more open connection from `address` unless it holds `limit` already: (admitted,
        the address to `release` when it closes, or None when nothing was counted)."""
        if not limit:
            return True, None
        if self.memory.acquire(b"conn:" + address.encode(), limit):
            return True, address
        self.metrics.count("client_connections_refused", str(port))
        return False, None

    def release(self, address: str) -> None:
        self.memory.release(b"conn:" + address.encode())

    def handshake(self, address: str, rate: float, port: int) -> bool:
        """A token bucket per address: `rate` handshakes per second, bursts of up to `rate` (at least 1)."""
        if not rate:
            return True
        if self.memory.token_bucket(b"hs:" + address.encode(), rate, max(rate, 1.0), monotonic())[0]:
            return True
        self.metrics.count("tls_handshakes_refused", str(port))
        return False

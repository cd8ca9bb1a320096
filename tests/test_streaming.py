"""Bodies stream through the node instead of being held: a gibibyte in either direction
arrives intact while the worker's resident memory grows by less than 20 MB, and a client
that stops reading holds the upstream back rather than filling the worker.
"""

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import app_config, free_port

GIB = 1 << 30
MEMORY_BUDGET = 20 * 1000 * 1000  # bytes of worker RSS growth allowed for one transfer
BLOCK = os.urandom(1 << 20)


class WorkerMemory:
    """Peak resident memory of the node's workers while the block runs, over what it was before."""

    def __init__(self, node):
        self.pids = [worker["pid"] for worker in node.status()["workers"]]
        self.baseline = self.peak = 0
        self.running = False
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def resident(self) -> int:
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        return total

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.resident())
            time.sleep(0.02)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> "WorkerMemory":
        self.baseline = self.peak = self.resident()
        self.running = True
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.sampler.join()
        self.peak = max(self.peak, self.resident())
        print(f"worker RSS growth: {self.growth / 1e6:.2f} MB (baseline {self.baseline / 1e6:.1f} MB)")


@pytest.fixture
def proxied(node, backend):
    """A node in front of one streaming backend: (listener port, node, backend)."""
    upstream = backend("stream")
    port = free_port()
    return port, node(app_config([upstream.server()], port)), upstream


def blocks(size: int, digest) -> Iterator[bytes]:
    """`size` bytes in 1 MiB blocks, hashed as they are handed out, never all in memory."""
    left = size
    while left:
        block = BLOCK[:min(left, len(BLOCK))]
        digest.update(block)
        left -= len(block)
        yield block


def upload(port: int, size: int, chunked: bool) -> tuple[dict, str]:
    """PUT `size` bytes to the backend's /upload; its answer and the sha256 of what was sent."""
    digest = hashlib.sha256()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {} if chunked else {"Content-Length": str(size)}
    conn.request("PUT", "/upload", body=blocks(size, digest), headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    return answer, digest.hexdigest()


def test_a_gibibyte_upload_with_content_length_streams_through_in_bounded_memory(proxied):
    port, started, _ = proxied
    with WorkerMemory(started) as memory:
        answer, sent = upload(port, GIB, chunked=False)
    assert answer == {"method": "PUT", "size": GIB, "sha256": sent}
    assert memory.growth < MEMORY_BUDGET


def test_a_gibibyte_chunked_upload_streams_through_in_bounded_memory(proxied):
    port, started, _ = proxied
    with WorkerMemory(started) as memory:
        answer, sent = upload(port, GIB, chunked=True)
    assert answer == {"method": "PUT", "size": GIB, "sha256": sent}
    assert memory.growth < MEMORY_BUDGET


def test_a_gibibyte_download_streams_through_in_bounded_memory(proxied):
    port, started, _ = proxied
    with WorkerMemory(started) as memory:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"/download?size={GIB}")
        response = conn.getresponse()
        received = drain(response)
        conn.close()
    assert response.status == 200
    assert int(response.getheader("Content-Length")) == GIB
    assert received == GIB
    assert memory.growth < MEMORY_BUDGET


def drain(stream) -> int:
    """Read a body to its end, keeping none of it; the number of bytes."""
    buffer = bytearray(1 << 20)
    total = 0
    while count := stream.readinto(buffer):
        total += count
    return total


def test_a_client_that_stops_reading_holds_back_the_upstream_not_the_worker_memory(proxied):
    port, started, upstream = proxied
    with WorkerMemory(started) as memory, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: stream\r\nConnection: close\r\n\r\n" % GIB)
        reader = sock.makefile("rb")
        head = list(iter(reader.readline, b"\r\n"))
        assert head[0].startswith(b"HTTP/1.1 200 ")
        # The client now reads nothing: every buffer on the way fills, then the upstream must stop.
        time.sleep(1.5)
        sent_when_full = upstream.stats()["sent"]
        time.sleep(2.0)
        sent_later = upstream.stats()["sent"]
        paused_growth = memory.peak - memory.baseline
        received = drain(reader)
    assert sent_later == sent_when_full < GIB // 4
    assert paused_growth < MEMORY_BUDGET
    assert received == GIB
    assert memory.growth < MEMORY_BUDGET

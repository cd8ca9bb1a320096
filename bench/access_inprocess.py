"""The access phase in one process: a node worker's whole request path (parse, route,
authenticate, rate-limit, forward, relay, log) driven through fake transports, so the
interpreter's cost per request is measured without the kernel, wrk or the backend.

The same four configurations as `bench/access.py` (plain, plain+log, jwt+limit+log and
jwt+limit+log with the node-scope counters shared through the node's file). Prints µs per
request for each and the difference; `--profile LABEL` prints a cProfile of that one.
Run with `.venv/bin/python bench/access_inprocess.py`.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import uvloop  # noqa: E402
import workload as wl  # noqa: E402
from access import edgeplane_config, token_and_key  # noqa: E402

from edgeplane.node.client import ClientConnection  # noqa: E402
from edgeplane.node.shared import SharedMemory  # noqa: E402
from edgeplane.node.upstream import UpstreamConnection  # noqa: E402
from edgeplane.node.worker import Worker  # noqa: E402

PORT = 8080
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 15:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
            + wl.BACKEND_BODY)


class Transport:
    """Just enough of an asyncio transport: what is written is kept until taken."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the bench's connections are never closed")

    abort = close


def worker_for(label: str, work: str, public_pem: str) -> Worker:
    pem = public_pem if label.startswith("jwt") else None
    log = label != "plain"
    path = os.path.join(work, f"{label}.json")
    wl.write_json(path, edgeplane_config(PORT, 9, pem, log))
    control = None
    if label.endswith("shared"):
        control = os.path.join(work, label, "control.sock")
        os.makedirs(os.path.dirname(control))
        SharedMemory.create(os.path.join(os.path.dirname(control), "shared.bin"))
    worker = Worker(path, "127.0.0.1", 0, "default", os.path.join(work, f"{label}.log") if log else None,
                    control, None)
    runtime, _ = worker.load_runtime()
    worker.runtime = runtime
    return worker


def run(worker: Worker, request: bytes, count: int) -> float:
    """Seconds of CPU per request over `count` requests on one keep-alive connection."""
    client = ClientConnection(worker, PORT)
    client_transport = Transport()
    client.connection_made(client_transport)
    endpoint = worker.runtime.upstreams["backend"].single
    upstream = UpstreamConnection(endpoint)
    upstream_transport = Transport()
    upstream.connection_made(upstream_transport)
    endpoint.give_back(upstream, time.monotonic())
    access_log = worker.access_log
    for _ in range(50):  # warm up: the first token check, caches
        client.data_received(request)
        upstream.data_received(RESPONSE)
    answer = client_transport.take()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(wl.BACKEND_BODY), answer[:300]
    upstream_transport.take()
    access_log.pending.clear()
    gc.collect()
    started = time.process_time()
    for turn in range(count):
        client.data_received(request)
        upstream.data_received(RESPONSE)
        if turn % 256 == 255:  # what the worker does a few times a second, off the request path
            client_transport.written.clear()
            upstream_transport.written.clear()
            if access_log.pending:
                access_log.encode(access_log.pending)
                access_log.pending.clear()
    return (time.process_time() - started) / count


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", help="cProfile this configuration instead")
    parser.add_argument("--sort", default="tottime", help="the profile's order (a pstats key)")
    args = parser.parse_args()
    token, public_pem = token_and_key()
    request = wl.raw_request(wl.SCENARIO_A_HOST, wl.SCENARIO_A_PATH).replace(
        b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    labels = ["plain", "plain+log", "jwt+limit+log", "jwt+limit+log shared"]
    with tempfile.TemporaryDirectory(prefix="access-inprocess-") as work:
        workers = {label: worker_for(label, work, public_pem) for label in labels}
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run, workers[args.profile], request, args.requests)
            pstats.Stats(profile).sort_stats(args.sort).print_stats(40)
            return 0
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for label in labels:
                cost = run(workers[label], request, args.requests)
                best[label] = min(best.get(label, cost), cost)
    plain = best["plain"]
    for label in labels:
        print(f"  {label:22s} {best[label] * 1e6:6.1f} us/request  (+{(best[label] - plain) * 1e6:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))

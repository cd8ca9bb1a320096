"""Control-plane benchmarks: how fast releases reach nodes, and how a node copes at scale.

    python bench/control_plane.py propagation [--clients 20] [--releases 50] [--nodes 0]
    python bench/control_plane.py scale [--apps 10000] [--rules 10]

propagation: an admin (SQLite, its own process) and 20 sync clients, the node's own
`SyncClient` each with its own local store in this process (or --nodes real node
processes, measured by what their workers serve); 50 releases of a one-rule change, each
timed from `release` returning to the moment every client has stored it (and every node's
workers serve it). Prints p50/p99/max.

scale: 10,000 applications of 10 rules (100,000 rules) over 100 upstreams applied and
released; then a fresh node process (1 worker) is started and timed until its worker
serves that release (full sync), then 5 one-rule changes are timed from `release`
returning until the node serves them; the node's memory (RSS of master and worker) is
reported. Everything runs on this machine; nothing is sent anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
TOKEN = "ep_bench-admin-token"

import httpx  # noqa: E402

from edgeplane.sdk import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError, http.client.HTTPException, httpx.HTTPError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def start_admin(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(directory / "admin.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "edgeplane", "admin", "--data-dir", str(directory / "admin"),
                                "--listen", f"127.0.0.1:{port}"], env={**ENV, "EDGEPLANE_BOOTSTRAP_TOKEN": TOKEN},
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: Client(url).http.get("/healthz").status_code == 200, 60, "the admin to start", 0.1)
    return process, url


def start_node(directory: Path, admin: str, token: str, name: str) -> tuple[subprocess.Popen, int]:
    status = free_port()
    log = open(directory / f"{name}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "edgeplane", "node", "--admin", admin, "--token", token,
                                "--data-dir", str(directory / name), "--name", name, "--bind", "127.0.0.1",
                                "--status", f"127.0.0.1:{status}", "--workers", "1", "--access-log", "off"],
                               env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return process, status


def node_status(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def serving(port: int) -> str | None:
    versions = {w["version"] for w in node_status(port)["workers"]}
    return versions.pop() if len(versions) == 1 else None


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# --- propagation -------------------------------------------------------------------------


class Clients:
    """Sync clients of the node, in threads of this process: each stores releases in its own store."""

    def __init__(self, admin: str, token: str, count: int, directory: Path):
        from edgeplane.node.store import LocalStore
        from edgeplane.node.sync import SyncClient
        self.applied: list[dict[int, float]] = [{} for _ in range(count)]
        self.clients = []
        for index in range(count):
            async def apply(version: int, index: int = index) -> int:
                self.applied[index][version] = time.monotonic()
                return version

            async def report() -> dict:
                return {}
            store = LocalStore(directory / f"client{index}.db")
            self.clients.append(SyncClient(admin, token, directory / f"c{index}", f"client{index}", store, apply,
                                           report))
            (directory / f"c{index}").mkdir()
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        import threading
        asyncio.set_event_loop(self.loop)
        self.tasks = [self.loop.create_task(c.run()) for c in self.clients]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def all_have(self, version: int) -> float | None:
        times = [applied.get(version) for applied in self.applied]
        return max(times) if all(t is not None for t in times) else None


def propagation(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="edgeplane-bench-cp-"))
    admin_process, url = start_admin(directory)
    nodes: list[tuple[subprocess.Popen, int]] = []
    try:
        admin = Client(url, TOKEN)
        admin.patch("clusters", "default", {"auto_approve": True})
        port = free_port()
        admin.create("applications", {"name": "bench", "domains": ["*"], "ports": [port],
                                      "rules": [{"actions": [{"respond": {"body": "0"}}]}]})
        first = admin.release()["version"]
        clients = Clients(url, admin.join_token()["token"], args.clients, directory)
        clients.run()
        for index in range(args.nodes):
            nodes.append(start_node(directory, url, admin.join_token()["token"], f"node{index}"))
        wait_for(lambda: clients.all_have(first), 60, "every client to have the first release", 0.05)
        for _, status in nodes:
            wait_for(lambda status=status: serving(status) == str(first), 60, "every node to serve", 0.05)
        print(f"{args.clients} sync clients and {args.nodes} node processes synced; "
              f"{args.releases} releases follow", flush=True)
        delays = []
        for index in range(1, args.releases + 1):
            admin.put_rule("bench", 0, {"actions": [{"respond": {"body": str(index)}}]})
            version = admin.release(note=f"bench {index}")["version"]
            released = time.monotonic()
            wait_for(lambda version=version: clients.all_have(version), 30, f"release {version} everywhere")
            for _, status in nodes:
                wait_for(lambda status=status, version=version: serving(status) == str(version), 30,
                         f"release {version} served")
            done = max([clients.all_have(version) or 0.0, time.monotonic() if nodes else 0.0])
            delays.append(done - released)
            time.sleep(0.05)
        milliseconds = [d * 1000 for d in delays]
        print(f"propagation to {args.clients} clients + {args.nodes} nodes over {args.releases} releases: "
              f"p50 {percentile(milliseconds, 0.5):.0f} ms, p99 {percentile(milliseconds, 0.99):.0f} ms, "
              f"max {max(milliseconds):.0f} ms, mean {statistics.mean(milliseconds):.0f} ms "
              f"(target p99 < 1000 ms: {'met' if percentile(milliseconds, 0.99) < 1000 else 'MISSED'})")
    finally:
        stop(*[n for n, _ in nodes], admin_process)


# --- scale -------------------------------------------------------------------------------


def scale_config(apps: int, rules: int, upstreams: int = 100) -> list[dict]:
    items = [{"kind": "upstreams", "name": f"u{i}",
              "data": {"name": f"u{i}", "servers": [{"address": "127.0.0.1", "port": 20000 + i}]}}
             for i in range(upstreams)]
    for a in range(apps):
        app_rules = [{"conditions": [{"var": "path", "op": "prefix", "values": [f"/svc{r}/"]}],
                      "actions": [{"set-request-header": {"name": "x-route", "value": f"{a}-{r}"}},
                                  {"proxy": {"upstream": f"u{(a + r) % upstreams}"}}]}
                     for r in range(rules)]
        items.append({"kind": "applications", "name": f"app{a}",
                      "data": {"name": f"app{a}", "domains": [f"app{a}.example.com"], "ports": [18080],
                               "rules": app_rules}})
    return items


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scale(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="edgeplane-bench-scale-"))
    admin_process, url = start_admin(directory)
    node = None
    try:
        admin = Client(url, TOKEN, timeout=600)
        admin.patch("clusters", "default", {"auto_approve": True})
        items = scale_config(args.apps, args.rules)
        started = time.monotonic()
        admin.batch(items)
        applied = time.monotonic() - started
        started = time.monotonic()
        version = admin.release(note="scale")["version"]
        released = time.monotonic() - started
        print(f"admin: {args.apps} applications / {args.apps * args.rules} rules applied in {applied:.1f} s, "
              f"released in {released:.1f} s", flush=True)
        token = admin.join_token()["token"]
        started = time.monotonic()
        node, status = start_node(directory, url, token, "fresh")
        wait_for(lambda: serving(status) == str(version), 120, "the fresh node to serve the release", 0.05)
        full = time.monotonic() - started
        log = (directory / "fresh.log").read_text().splitlines()
        stored = next(json.loads(line) for line in log if '"release_applied"' in line)
        print(f"full sync to a fresh node: {full:.1f} s from starting the process to its worker serving "
              f"(target < 10 s: {'met' if full < 10 else 'MISSED'}; the admin's answer was stored "
              f"in {stored['seconds']:.2f} s of it)", flush=True)
        changes = []
        for index in range(5):
            admin.put_rule(f"app{index * 997}", 3, {"conditions": [{"var": "path", "values": [f"/changed{index}"]}],
                                                     "actions": [{"respond": {"body": "changed"}}]})
            version = admin.release(note=f"one rule {index}")["version"]
            started = time.monotonic()
            wait_for(lambda version=version: serving(status) == str(version), 60, "the change to be served")
            changes.append(time.monotonic() - started)
        print("one-rule change, release returned → node serving: "
              + ", ".join(f"{c * 1000:.0f} ms" for c in changes)
              + f" (median {statistics.median(changes) * 1000:.0f} ms; target < 1000 ms: "
              f"{'met' if max(changes) < 1 else 'MISSED'})")
        pids = [w["pid"] for w in node_status(status)["workers"]]
        print(f"node memory for this config: master {rss_mb(node.pid):.0f} MB, worker "
              + ", ".join(f"{rss_mb(pid):.0f} MB" for pid in pids) + " (RSS)")
    finally:
        stop(*([node] if node else []), admin_process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    prop = sub.add_parser("propagation")
    prop.add_argument("--clients", type=int, default=20)
    prop.add_argument("--nodes", type=int, default=0, help="also this many real node processes")
    prop.add_argument("--releases", type=int, default=50)
    prop.set_defaults(run=propagation)
    big = sub.add_parser("scale")
    big.add_argument("--apps", type=int, default=10000)
    big.add_argument("--rules", type=int, default=10)
    big.set_defaults(run=scale)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

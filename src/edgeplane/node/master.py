"""The node's master process: starts and supervises workers, serves the status port.

Workers are separate interpreter processes (not forks of a running loop); each opens the
same ports with SO_REUSEPORT. The master forwards SIGHUP, drains on SIGTERM, restarts a
worker that died, and answers /metrics and /status by asking every worker over its
control socket and merging. It also runs what a node does once rather than once per
worker — TLS ticket keys, the active health checks, ACME orders — from each config it
sees (`apply_config`), and tells the workers the health verdicts and new certificates.
A node joined to an admin also runs the sync client here: it stores each release in the
local store (which replaces the config file) and tells the workers to reload; and it
reports each upstream's traffic to the admin (node/traffic.py). It never touches client
traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ..model.canary import CANARY_KINDS
from ..model.config import Config
from ..model.load import ConfigError, load
from .acme import AcmeManager
from .health import HealthRunner
from .shared import SharedMemory
from .stats import add, summary
from .store import ConfigBuilder, LocalStore
from .telemetry import AccessLog, Metrics, merge, render_prometheus
from .tickets import KEY_FILE, TicketKeyFile
from .worker import HEALTH_FILE, STORE_PREFIX, TRANSITIONS_KEPT, file_signature, log

NODE_WIDE = frozenset({"applications", *CANARY_KINDS})  # kinds the master's node-wide work does without
HOUSEKEEPING = 1.0  # seconds between two looks at the config file and the ticket keys
ACME_RETRY = 30.0   # seconds before a failed ACME order is tried again (check_interval if shorter)


def upstream_stats(workers: list[dict]) -> dict:
    """Each upstream's traffic over the last minute, all workers together (see stats.py)."""
    merged: dict[str, list[int]] = {}
    for w in workers:
        add(merged, w["traffic"]["upstreams"])
    return {"window_s": max((w["traffic"]["window_s"] for w in workers), default=0.0),
            "upstreams": {name: summary(series) for name, series in sorted(merged.items())}}


class Master:
    def __init__(self, config: str | None, workers: int, bind: str, status: str | None, partition: str,
                 access_log: str | None, data_dir: str | None = None, admin: str | None = None,
                 join_token: str | None = None, name: str | None = None):
        self.sync = None
        self.reporter = None  # the traffic reports of a node synced with an admin (node/traffic.py)
        self.builder = ConfigBuilder()
        if admin is not None:
            from .sync import SyncClient  # httpx: only nodes synced with an admin load it
            directory = Path(data_dir or "edgeplane-data")
            directory.mkdir(parents=True, exist_ok=True)
            store = LocalStore(directory / "node.db")
            self.sync = SyncClient(admin, join_token, directory, name, store, self.reload_workers, self.report)
            config = STORE_PREFIX + str(store.path)
        self.config = config
        self.count = workers
        self.bind = bind
        self.status_address = status
        self.partition = partition
        self.access_log = access_log
        self.data_dir = os.path.abspath(data_dir) if data_dir else ""
        self.run_dir = tempfile.mkdtemp(prefix="edgeplane-node-")
        SharedMemory.create(os.path.join(self.run_dir, "shared.bin"), workers=workers)  # counters all workers share
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.started = time.time()
        self.restarts = 0
        self.status_server: asyncio.AbstractServer | None = None  # held: an unreferenced server may be collected
        self.settings = Config().settings
        self.certificates: list = []
        self.acme = AcmeManager(Path(self.data_dir), log) if self.data_dir else None
        self.acme_next = 0.0  # when the next ACME check is due (monotonic); 0: now
        self.acme_running = False
        self.config_signature: tuple = ()
        self.tickets: TicketKeyFile | None = None
        self.health = HealthRunner(self.publish_health, self.record_transition, log)
        self.health_message: dict = {"sequence": 0, "failing": []}
        self.transitions: deque[dict] = deque(maxlen=TRANSITIONS_KEPT)
        self.metrics = Metrics()  # what the master itself counts (health transitions)
        self.events = AccessLog(access_log, None)
        self.tasks: set[asyncio.Future] = set()

    def control_path(self, index: int) -> str:
        return os.path.join(self.run_dir, f"worker-{index}.sock")

    async def start_worker(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeplane.node.worker", self.config, self.bind, str(index),
            self.partition, self.access_log or "", self.control_path(index), self.data_dir,
            stdin=asyncio.subprocess.DEVNULL)
        self.processes[index] = process
        return process

    async def ask(self, index: int, timeout: float = 2.0, line: bytes = b"status\n") -> dict | None:
        """Send a worker one control line (`status`, or `<command> <json>`); its JSON answer."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.control_path(index)), timeout)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(line)
            return json.loads(await asyncio.wait_for(reader.readline(), timeout))
        except (TimeoutError, OSError, ValueError):
            return None
        finally:
            writer.close()

    async def wait_ready(self, index: int, timeout: float = 300.0) -> bool:
        # Generous: a worker loads and compiles the whole config before it answers, and
        # 100,000 applications with a certificate each take 30 s on a busy 2-core machine.
        deadline = time.monotonic() + timeout
        process = self.processes[index]
        while time.monotonic() < deadline:
            if process.returncode is not None:
                return False
            if await self.ask(index, 0.5) is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    async def supervise(self, index: int) -> None:
        """Restart a worker that died; one that keeps dying waits longer each time (up to
        30 s), and a worker that lived a minute starts the count again."""
        delay = 0.5
        while not self.stopping:
            started = time.monotonic()
            code = await self.processes[index].wait()
            if self.stopping:
                return
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            self.restarts += 1
            log("worker_exited", worker=index, code=code, action=f"restarting in {delay:g}s")
            await asyncio.sleep(delay)
            if not self.stopping:
                await self.start_worker(index)
                if await self.wait_ready(index):  # a verdict given while it started must reach it
                    await self.tell_health(index, self.health_message)

    # --- node-wide work: the config as the master sees it, ticket keys, health checks ----

    def read_config(self) -> bool:
        """Re-read the config file (or the local store) when it changed; False when it is
        not valid (the workers keep serving their last good one, and so does the master's
        node-wide work)."""
        store = self.sync.store if self.sync is not None else None
        signature = (store.version,) if store is not None else file_signature(Path(self.config))
        if not signature or signature == (0,):
            return False
        if signature == self.config_signature:
            return True
        self.config_signature = signature
        try:
            config = self.builder.build(store.read(NODE_WIDE)[2], str(store.path)) if store is not None \
                else load(self.config)
        except ConfigError:
            return False
        self.apply_config(config)
        return True

    def apply_config(self, config: Config) -> None:
        """Run what the node runs once from this config: the file watcher calls it, and so
        can any other source of configs."""
        self.settings, self.certificates = config.settings, config.certificates
        self.acme_next = 0.0  # new certificates or settings: look at once
        tickets = self.settings.tls.session_tickets
        if self.tickets is None or self.tickets.settings != tickets:
            previous = self.tickets.keys if self.tickets is not None else []
            self.tickets = TicketKeyFile(Path(self.run_dir) / KEY_FILE, tickets)
            self.tickets.keys = previous
        self.health.apply_config(config)

    async def housekeeping(self) -> None:
        while not self.stopping:
            try:
                self.read_config()
                if self.tickets is not None:
                    self.tickets.refresh()
                self.start_acme_check()
                await self.events.flush()
            except Exception as error:  # node-wide work must outlive any one failure
                log("master_housekeeping_error", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(HOUSEKEEPING)

    def publish_health(self, message: dict) -> None:
        """The failing servers changed: told to every worker, kept for workers yet to start
        (a file that cannot be written stops neither)."""
        self.health_message = message
        for index in range(self.count):
            self.spawn(self.tell_health(index, message))
        path = Path(self.run_dir) / HEALTH_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(message))
        os.replace(temporary, path)

    async def tell_health(self, index: int, message: dict) -> None:
        await self.ask(index, line=b"health " + json.dumps(message).encode() + b"\n")

    def record_transition(self, event: dict) -> None:
        event = {**event, "worker": None}
        self.transitions.append(event)
        self.metrics.count("transitions", event["upstream"], event["endpoint"], event["source"], event["state"])
        if self.events.enabled:
            self.events.append({"event": "transition", **event})
        log("health_transition", **{k: v for k, v in event.items() if k not in ("time", "worker")})

    def spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_acme_check(self) -> None:
        settings = self.settings.acme
        if (self.acme is None or settings is None or self.acme_running or time.monotonic() < self.acme_next
                or not any(c.acme for c in self.certificates)):
            return
        self.acme_running = True
        self.acme_next = time.monotonic() + settings.check_interval
        self.spawn(self.acme_check(settings, list(self.certificates)))

    async def acme_check(self, settings, certificates: list) -> None:
        """Issue or renew what is due (in a thread: the ACME client blocks), then tell every
        worker to pick the new certificates up."""
        try:
            issued, failed = await asyncio.get_running_loop().run_in_executor(
                None, self.acme.check, settings, certificates)
            if failed:
                self.acme_next = min(self.acme_next, time.monotonic() + ACME_RETRY)
            if issued:
                await asyncio.gather(*(self.ask(i, line=b"certificates\n") for i in range(self.count)))
        finally:
            self.acme_running = False

    # --- sync --------------------------------------------------------------------------

    async def reload_workers(self, version: int) -> int:
        """A release was stored: the master's node-wide work takes it, then every worker.
        Returns the release all workers run (the oldest when they differ, 0 when none answered)."""
        self.read_config()
        answers = await asyncio.gather(*(self.ask(i, 120.0, b"reload {}\n") for i in range(self.count)))
        versions = [int(a["version"]) for a in answers if a is not None]
        for answer in answers:
            if answer is not None and not answer["ok"]:
                log("release_rejected", version=version, error=answer["last_error"])
        if self.reporter is not None:
            self.reporter.wake()
        return min(versions) if versions else 0

    async def report(self) -> dict:
        """What the node tells the admin on each poll: kept as sent, read by `edgeplane status`."""
        workers = await self.gather()
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "last_error": next((w["last_error"] for w in workers if w["last_error"]), ""),
            "workers": [{k: w[k] for k in ("worker", "pid", "version", "connections", "reloads")} for w in workers],
            "metrics": [w["metrics"] for w in workers],  # each worker's snapshot: telemetry.merge adds them up
        }

    async def traffic_totals(self) -> list[dict]:
        """Each worker's traffic counts since it started (node/traffic.py reports the difference)."""
        answers = await asyncio.gather(*(self.ask(i, line=b"traffic\n") for i in range(self.count)))
        return [a for a in answers if a is not None]

    def sync_ended(self, task: asyncio.Task) -> None:
        """The sync client only ends by an error it cannot go on from (the node cannot join)."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        print(error if isinstance(error, SystemExit) else f"edgeplane node: sync failed: {error!r}", file=sys.stderr)
        asyncio.ensure_future(self.stop())

    # --- status port -------------------------------------------------------------------

    async def gather(self) -> list[dict]:
        answers = await asyncio.gather(*(self.ask(i) for i in range(self.count)))
        return [a for a in answers if a is not None]

    async def status_body(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            return 200, b"text/plain", b"ok\n"
        if path not in ("/metrics", "/status"):
            return 404, b"text/plain", b"not found: try /metrics or /status\n"
        workers = await self.gather()
        if path == "/metrics":
            merged = merge([w["metrics"] for w in workers] + [self.metrics.snapshot()])
            gauges = {"active_connections": sum(w["connections"] for w in workers),
                      "workers": len(workers), "worker_restarts_total": self.restarts}
            text = render_prometheus(merged, gauges, {w["worker"]: w["version"] for w in workers},
                                     sum(w["access_log_dropped"] for w in workers), self.resilience_gauges(workers))
            return 200, b"text/plain; version=0.0.4", text.encode()
        versions = sorted({w["version"] for w in workers})
        transitions = sorted([*self.transitions, *(t for w in workers for t in w["transitions"])],
                             key=lambda event: event["time"])
        body = {
            "config_version": versions[0] if len(versions) == 1 else versions,
            "config_file": self.config, "uptime_s": round(time.time() - self.started, 1),
            **({"sync": self.sync.status()} if self.sync is not None else {}),
            "workers": [{k: w[k] for k in ("worker", "pid", "version", "connections", "reloads", "last_error")}
                        for w in workers],
            "upstreams": self.upstream_view(workers),
            "upstreams_by_worker": {w["worker"]: w["upstreams"] for w in workers},
            "circuit_breakers": {w["worker"]: w["circuit_breakers"] for w in workers},
            "health_checks": self.health.status(),
            "upstream_stats": upstream_stats(workers),
            "transitions": transitions[-TRANSITIONS_KEPT:],
            "access_by_worker": {w["worker"]: w["access"] for w in workers},
        }
        return 200, b"application/json", json.dumps(body, indent=2).encode() + b"\n"

    def upstream_view(self, workers: list[dict]) -> dict:
        """The first worker's view of each server, with the node's health verdict and how
        many workers have it ejected (outlier detection is per worker)."""
        if not workers:
            return {}
        checks = self.health.status()
        view = json.loads(json.dumps(workers[0]["upstreams"]))
        for name, endpoints in view.items():
            for endpoint in endpoints:
                verdict = checks.get(name, {}).get(endpoint["address"])
                endpoint["health_check"] = verdict["state"] if verdict else None
                endpoint["ejected_in_workers"] = sum(
                    1 for w in workers for e in w["upstreams"].get(name, ())
                    if e["address"] == endpoint["address"] and e["ejected_for"] > 0)
        return view

    def resilience_gauges(self, workers: list[dict]) -> list:
        healthy = [({"upstream": upstream, "endpoint": address}, int(verdict["state"] == "healthy"))
                   for upstream, servers in self.health.status().items()
                   for address, verdict in servers.items() if verdict["state"] != "unchecked"]
        ejected: dict[tuple[str, str], int] = {}
        opened: dict[tuple[str, str], int] = {}
        for w in workers:
            for upstream, breaker in w["circuit_breakers"].items():
                for limit in breaker["open"]:
                    opened[(upstream, limit)] = opened.get((upstream, limit), 0) + 1
        for w in workers:
            for upstream, endpoints in w["upstreams"].items():
                for e in endpoints:
                    key = (upstream, e["address"])
                    ejected[key] = ejected.get(key, 0) + (e["ejected_for"] > 0)
        return [
            ("edgeplane_health_check_healthy", "1 while the node's active check passes a server, 0 while it fails.",
             healthy),
            ("edgeplane_outlier_ejected", "Workers that have the server ejected by outlier detection.",
             [({"upstream": u, "endpoint": e}, n) for (u, e), n in sorted(ejected.items())]),
            ("edgeplane_circuit_breaker_open", "Workers in which a circuit_breaker limit of the upstream is reached.",
             [({"upstream": u, "limit": limit}, n) for (u, limit), n in sorted(opened.items())]),
        ]

    async def answer_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1").split("?")[0] if len(parts) > 2 else "/"
            status, content_type, body = await self.status_body(path)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (status, b"OK" if status == 200 else b"Not Found", content_type, len(body), body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    async def start_status(self) -> None:
        if self.status_address and self.status_server is None:
            host, _, port = self.status_address.rpartition(":")
            self.status_server = await asyncio.start_server(self.answer_status, host or "127.0.0.1", int(port))

    async def first_release(self, done: asyncio.Event) -> bool:
        """Wait until the local store holds a release (joining, approval, a first release of
        the partition); False when the node is stopped before."""
        if self.sync.stored.is_set():
            return True
        log("node_waiting", admin=self.sync.admin, reason="no release stored yet: joining, approval, "
            "or a first release of the partition")
        stored = asyncio.ensure_future(self.sync.stored.wait())
        stopped = asyncio.ensure_future(done.wait())
        await asyncio.wait([stored, stopped], return_when=asyncio.FIRST_COMPLETED)
        stored.cancel()
        stopped.cancel()
        return self.sync.stored.is_set() and not done.is_set()

    # --- life cycle --------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: the workers reload, and so does what the master runs."""
        self.forward(signal.SIGHUP)
        self.config_signature = ()
        self.read_config()

    def forward(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.health.close()
        log("node_draining", workers=len(self.processes))
        self.forward(signal.SIGTERM)
        try:
            limits = self.settings.limits if self.sync is not None else load(self.config).settings.limits
            grace = limits.drain_timeout + 5
        except ConfigError:
            grace = 35
        waits = [p.wait() for p in self.processes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            self.forward(signal.SIGKILL)

    async def run(self) -> int:
        if self.sync is None:
            try:
                load(self.config)
            except ConfigError as error:
                print(f"edgeplane node: the config is not valid:\n{error}", file=sys.stderr)
                return 2
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        async def shutdown() -> None:
            await self.stop()
            done.set()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(shutdown()))
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        syncing = None
        if self.sync is not None:
            syncing = asyncio.ensure_future(self.sync.run())
            syncing.add_done_callback(self.sync_ended)
            from .traffic import TrafficReporter  # httpx, as the sync client
            self.reporter = TrafficReporter(self.sync.admin, self.sync.identity, self.traffic_totals)
            self.spawn(self.reporter.run())
            await self.start_status()
            if not await self.first_release(done):
                syncing.cancel()
                shutil.rmtree(self.run_dir, ignore_errors=True)
                return 0
        self.read_config()
        self.tickets.refresh()  # before any worker: the first handshakes already share keys
        for index in range(self.count):
            await self.start_worker(index)
        for index in range(self.count):
            if not await self.wait_ready(index):
                code = self.processes[index].returncode
                print(f"edgeplane node: worker {index} failed to start (exit code {code}); "
                      "see the messages above", file=sys.stderr)
                await self.stop()
                shutil.rmtree(self.run_dir, ignore_errors=True)
                return 1
        for index in range(self.count):  # verdicts given while the workers started
            await self.tell_health(index, self.health_message)
        await self.start_status()
        if self.sync is not None:
            self.sync.kick(await self.reload_workers(self.sync.store.version))
        supervisors = [asyncio.ensure_future(self.supervise(i)) for i in range(self.count)]
        housekeeping = asyncio.ensure_future(self.housekeeping())  # ACME needs the workers' ports open
        log("node_ready", workers=self.count, bind=self.bind, status=self.status_address,
            config=self.config, pid=os.getpid())
        await done.wait()
        for task in [*supervisors, housekeeping, *([syncing] if syncing else [])]:
            task.cancel()
        await self.events.flush()
        self.events.flush_now()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        log("node_stopped")
        return 0

"""The node's master process: starts and supervises workers, serves the status port.

Workers are separate interpreter processes (not forks of a running loop); each opens the
same ports with SO_REUSEPORT. The master forwards SIGHUP, drains on SIGTERM, restarts a
worker that died, and answers /metrics and /status by asking every worker over its
control socket and merging. It never touches client traffic.
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
from pathlib import Path

from ..model.config import Config
from ..model.load import ConfigError, load
from .telemetry import merge, render_prometheus
from .tickets import KEY_FILE, TicketKeyFile
from .worker import log

HOUSEKEEPING = 1.0  # seconds between two looks at the config file and the ticket keys


class Master:
    def __init__(self, config: str, workers: int, bind: str, status: str | None, partition: str,
                 access_log: str | None, data_dir: str | None = None):
        self.config = config
        self.count = workers
        self.bind = bind
        self.status_address = status
        self.partition = partition
        self.access_log = access_log
        self.data_dir = os.path.abspath(data_dir) if data_dir else ""
        self.run_dir = tempfile.mkdtemp(prefix="edgeplane-node-")
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.started = time.time()
        self.restarts = 0
        self.status_server: asyncio.AbstractServer | None = None  # held: an unreferenced server may be collected
        self.settings = Config().settings
        self.config_signature: tuple = ()
        self.tickets: TicketKeyFile | None = None

    def control_path(self, index: int) -> str:
        return os.path.join(self.run_dir, f"worker-{index}.sock")

    async def start_worker(self, index: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeplane.node.worker", self.config, self.bind, str(index),
            self.partition, self.access_log or "", self.control_path(index), self.data_dir,
            stdin=asyncio.subprocess.DEVNULL)
        self.processes[index] = process
        return process

    async def ask(self, index: int, timeout: float = 2.0) -> dict | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.control_path(index)), timeout)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(b"status\n")
            return json.loads(await asyncio.wait_for(reader.readline(), timeout))
        except (TimeoutError, OSError, ValueError):
            return None
        finally:
            writer.close()

    async def wait_ready(self, index: int, timeout: float = 30.0) -> bool:
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

    # --- node-wide work: the config as the master sees it, ticket keys -------------------

    def read_config(self) -> bool:
        """Re-read the config file when it changed; False when it is not valid (the workers
        keep serving their last good one, and so does the master's node-wide work)."""
        try:
            st = os.stat(self.config)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return False
        if signature == self.config_signature:
            return True
        self.config_signature = signature
        try:
            self.settings = load(self.config).settings
        except ConfigError:
            return False
        tickets = self.settings.tls.session_tickets
        if self.tickets is None or self.tickets.settings != tickets:
            previous = self.tickets.keys if self.tickets is not None else []
            self.tickets = TicketKeyFile(Path(self.run_dir) / KEY_FILE, tickets)
            self.tickets.keys = previous
        return True

    async def housekeeping(self) -> None:
        while not self.stopping:
            try:
                self.read_config()
                if self.tickets is not None:
                    self.tickets.refresh()
            except Exception as error:  # node-wide work must outlive any one failure
                log("master_housekeeping_error", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(HOUSEKEEPING)

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
            merged = merge([w["metrics"] for w in workers])
            gauges = {"active_connections": sum(w["connections"] for w in workers),
                      "workers": len(workers), "worker_restarts_total": self.restarts}
            text = render_prometheus(merged, gauges, {w["worker"]: w["version"] for w in workers},
                                     sum(w["access_log_dropped"] for w in workers))
            return 200, b"text/plain; version=0.0.4", text.encode()
        versions = sorted({w["version"] for w in workers})
        body = {
            "config_version": versions[0] if len(versions) == 1 else versions,
            "config_file": self.config, "uptime_s": round(time.time() - self.started, 1),
            "workers": [{k: w[k] for k in ("worker", "pid", "version", "connections", "reloads", "last_error")}
                        for w in workers],
            "upstreams": workers[0]["upstreams"] if workers else {},
            "upstreams_by_worker": {w["worker"]: w["upstreams"] for w in workers},
        }
        return 200, b"application/json", json.dumps(body, indent=2).encode() + b"\n"

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

    # --- life cycle --------------------------------------------------------------------

    def forward(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log("node_draining", workers=len(self.processes))
        self.forward(signal.SIGTERM)
        try:
            config = load(self.config)
            grace = config.settings.limits.drain_timeout + 5
        except ConfigError:
            grace = 35
        waits = [p.wait() for p in self.processes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            self.forward(signal.SIGKILL)

    async def run(self) -> int:
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
        loop.add_signal_handler(signal.SIGHUP, lambda: self.forward(signal.SIGHUP))
        self.read_config()
        self.tickets.refresh()  # before any worker: the first handshakes already share keys
        housekeeping = asyncio.ensure_future(self.housekeeping())
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
        if self.status_address:
            host, _, port = self.status_address.rpartition(":")
            self.status_server = await asyncio.start_server(self.answer_status, host or "127.0.0.1", int(port))
        supervisors = [asyncio.ensure_future(self.supervise(i)) for i in range(self.count)]
        log("node_ready", workers=self.count, bind=self.bind, status=self.status_address,
            config=self.config, pid=os.getpid())
        await done.wait()
        for task in [*supervisors, housekeeping]:
            task.cancel()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        log("node_stopped")
        return 0

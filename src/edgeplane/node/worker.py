"""One worker process: listeners, the current runtime, and the housekeeping around them.

A worker loads and compiles its config itself (from a file, or from the node's local
store when the node syncs with an admin), opens its listeners with SO_REUSEPORT, and
swaps to a new runtime when the file or the store changes, SIGHUP arrives or the master
says `reload`, but only after the new config validated, compiled and got every listener
it needs; otherwise it keeps serving the old one. SIGTERM drains: stop accepting, finish
what is in flight, exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import uvloop

from ..collector import collector_paused, settle_collector
from ..model.load import ConfigError, Problem, parse, read
from .access import AccessState
from .client import ClientConnection, Rejection
from .clientlimits import ClientLimits
from .endpoints import EndpointRegistry
from .exchange import Exchange
from .listener import TlsListener
from .openssl import ticket_callback
from .runtime import Runtime, compile_runtime, endpoint_keys
from .shared import LocalMemory, SharedMemory
from .stats import TrafficWindow
from .store import ConfigBuilder, LocalStore
from .telemetry import AccessLog, Metrics
from .tickets import KEY_FILE, TicketKeyRing
from .tls import ContextCache, NameCache, Site

TICK = 0.1  # deadline resolution in seconds
TRANSITIONS_KEPT = 100  # recent endpoint transitions shown in /status
HEALTH_FILE = "health.json"  # the master's latest health verdicts, in its run directory


def log(event: str, **fields: Any) -> None:
    record = {"time": round(time.time(), 3), "event": event, **fields}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


STORE_PREFIX = "store:"  # the config argument of a worker reading the node's local store


def file_signature(path: Path) -> tuple:
    """What tells a changed file apart: inode, modification time, size (empty: no file)."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def open_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Worker:
    def __init__(self, config_path: str, bind: str, index: int, partition: str,
                 access_log: str | None, control_path: str | None, data_dir: str | None = None):
        self.config_path = Path(config_path.removeprefix(STORE_PREFIX))
        self.store = LocalStore(self.config_path) if config_path.startswith(STORE_PREFIX) else None
        self.builder = ConfigBuilder()
        self.data_dir = Path(data_dir) if data_dir else None
        self.bind = bind
        self.index = index
        self.partition = partition
        self.control_path = control_path
        self.registry = EndpointRegistry(reporter=self)
        self.transitions: deque[dict] = deque(maxlen=TRANSITIONS_KEPT)
        self.traffic = TrafficWindow(time.monotonic())
        self.runtime: Runtime = None
        self.connections: set[ClientConnection] = set()
        self.busy: set = set()
        self.timed: set[Exchange] = set()  # exchanges with route timeouts
        self.listeners: dict[int, asyncio.AbstractServer | TlsListener | None] = {}
        self.listener_tls: dict[int, bool] = {}
        self.control: asyncio.AbstractServer | None = None
        self.draining = False
        self.metrics = Metrics()
        self.access_log = AccessLog(access_log, index)
        self.hosts: dict[bytes, str] = {}  # Host header → normalized host name, for every connection
        self.tasks: set[asyncio.Task] = set()
        self.signature: tuple = ()
        self.request_prefix = os.urandom(8).hex().encode()
        self.request_counter = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.last_error = ""
        self.stopped = asyncio.Event()
        self.names = NameCache()  # certificate names, by content, from one compile to the next
        self.tickets = TicketKeyRing(Path(control_path).with_name(KEY_FILE) if control_path else None)
        self.ticket_callback = ticket_callback(self.tickets.lookup)
        self.contexts = ContextCache(None)
        self.failed_sites: set[Site] = set()
        self.shared = self.open_shared()
        self.access = AccessState(self.shared, self.metrics)
        self.client_limits = ClientLimits(self.shared if self.shared is not None else LocalMemory(), self.metrics)

    def open_shared(self) -> SharedMemory | None:
        """The node's shared counters, made by the master in its run directory; this worker's
        share of what is in flight starts from zero (a predecessor's died with it)."""
        if not self.control_path:
            return None
        shared = SharedMemory(str(Path(self.control_path).with_name("shared.bin")), self.index)
        shared.forget_worker()
        return shared

    # --- used by connections and exchanges ---------------------------------------------

    def next_request_id(self) -> bytes:
        self.request_counter += 1
        return b"%s%016x" % (self.request_prefix, self.request_counter)

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def observe(self, exchange: Exchange) -> None:
        now = time.monotonic()
        request = exchange.request
        app = exchange.app.name if exchange.app is not None else "-"
        upstream = exchange.upstream.name if exchange.upstream is not None else None
        upstream_seconds = now - exchange.sent_at if exchange.sent_at else 0.0
        self.metrics.record(app, exchange.status, upstream if exchange.sent_at else None, upstream_seconds)
        if upstream is not None:
            self.traffic.record(upstream, exchange.status >= 500, now - exchange.started)
        if self.access_log.enabled and exchange.runtime.access_log.enabled:
            endpoint = exchange.endpoint
            # Raw values only: formatting waits for the batch (see AccessLog.encode).
            self.access_log.append((
                exchange.started, now, request.request_id, request.client_ip, request.method, request.host,
                request.target, exchange.status, request.body_size + exchange.bytes_in, exchange.bytes_out,
                app, exchange.rule, upstream, endpoint.label if endpoint is not None else None,
                exchange.upstream_status, exchange.connected_at, exchange.sent_at, exchange.error,
                exchange.runtime.version, exchange.client.tls, exchange.attempt, exchange.retry_log,
                exchange.breaker_limit, request.consumer,
            ))

    def transition(self, upstream: str, endpoint: str, source: str, state: str, cause: str) -> None:
        """An endpoint changed state here (ejected, returned, ...): kept for /status, counted,
        and written to the access log as an event line."""
        event = {"time": round(time.time(), 3), "upstream": upstream, "endpoint": endpoint, "source": source,
                 "state": state, "cause": cause, "worker": self.index}
        self.transitions.append(event)
        self.metrics.count("transitions", upstream, endpoint, source, state)
        if self.access_log.enabled and self.runtime.access_log.enabled:
            self.access_log.append({"event": "transition", **event, "config_version": self.runtime.version})

    def count(self, family: str, *labels: str) -> None:
        self.metrics.count(family, *labels)

    def log_rejection(self, client: ClientConnection, rejection: Rejection) -> None:
        self.metrics.record("-", rejection.status, None, 0.0)
        if self.access_log.enabled:
            now = time.monotonic()
            self.access_log.append((
                now, now, b"", client.peer_ip.decode(), None, None, None, rejection.status, 0, 0,
                "-", -1, None, None, 0, 0.0, 0.0, rejection.cause, self.runtime.version, client.tls, 1, "", "", "",
            ))

    # --- configuration -----------------------------------------------------------------

    def file_signature(self) -> tuple:
        if self.store is not None:
            return (self.store.version,)
        return file_signature(self.config_path)

    def load_runtime(self, path: Path | None = None) -> tuple[Runtime, str]:
        """The runtime of the node's config (the local store's release, else a file), with the
        file's text ("" from the store): kept as the last good config once adopted, since
        writing it back costs nothing and dumping a large config does."""
        version, partition, text = None, self.partition, ""
        with collector_paused():
            if self.store is not None and path is None:
                number, partition, rows = self.store.read()
                config = self.builder.build(rows, str(self.config_path))
                version = str(number)
            else:
                text = read(path or self.config_path)
                config = parse(text, str(path or self.config_path))
            try:
                runtime = compile_runtime(config, self.registry, partition, self.data_dir, self.names, self.access,
                                          version, self.runtime)
            except Exception as error:
                # Valid by the model but not compilable here (an unreadable GeoIP or certificate
                # file, ...): whatever the cause, the change is refused and nothing else is hurt.
                raise ConfigError(str(path or self.config_path),
                                  [Problem("", f"cannot compile: {type(error).__name__}: {error}")]) from None
        return runtime, text

    @property
    def last_good_path(self) -> Path | None:
        """Where the last config this worker applied is kept, for a restarted worker whose
        file has since been broken (the master's run directory, shared by the workers), as the
        text it was read from: its suffix says how to parse it."""
        if self.store is not None or not self.control_path:  # the local store only ever holds a whole release
            return None
        return Path(self.control_path).with_name("last-good" + (self.config_path.suffix or ".yaml"))

    def keep_last_good(self, text: str) -> None:
        path = self.last_good_path
        if path is None:
            return
        temporary = path.with_name(f"last-good.{self.index}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)

    def reload(self, reason: str, force: bool = False) -> bool:
        """`force`: swap even when the config did not change (certificate files did)."""
        self.signature = self.file_signature()
        try:
            runtime, text = self.load_runtime()
        except ConfigError as error:
            self.reloads["failed"] += 1
            self.last_error = str(error)
            log("config_rejected", worker=self.index, reason=reason, errors=str(error).splitlines(),
                serving=self.runtime.version if self.runtime else None)
            return False
        if self.runtime is not None and runtime.version == self.runtime.version and not force:
            return True
        try:
            self.reconcile_listeners(runtime)
        except OSError as error:
            self.reloads["failed"] += 1
            self.last_error = f"cannot listen: {error}"
            log("config_rejected", worker=self.index, reason=reason, errors=[self.last_error],
                serving=self.runtime.version if self.runtime else None)
            return False
        self.adopt(runtime, text)
        self.registry.retain(endpoint_keys(runtime))
        self.reloads["ok"] += 1
        self.last_error = ""
        log("config_applied", worker=self.index, reason=reason, version=runtime.version,
            ports=sorted(runtime.ports))
        return True

    def reconcile_listeners(self, runtime: Runtime) -> None:
        """Open every new listener first (a port that turns to or from TLS gets a new one);
        only when all are open close the ones no longer wanted."""
        opened: dict[int, socket.socket] = {}
        try:
            for port in runtime.ports:
                if port not in self.listeners or self.listener_tls[port] != (port in runtime.tls):
                    opened[port] = open_listener(self.bind, port)
        except OSError:
            for sock in opened.values():
                sock.close()
            raise
        for port, sock in opened.items():
            replaced = self.listeners.pop(port, None)
            if replaced is not None:
                replaced.close()
            self.listener_tls[port] = port in runtime.tls
            if port in runtime.tls:
                self.listeners[port] = TlsListener(self, port, sock)
            else:
                self.listeners[port] = None  # reserved; serve() puts the started server here
                self.spawn(self.serve(port, sock))
        for port in [p for p in self.listeners if p not in runtime.ports]:
            server = self.listeners.pop(port)
            if server is not None:
                server.close()

    def adopt(self, runtime: Runtime, text: str) -> None:
        self.runtime = runtime
        tls = runtime.config.settings.tls
        self.contexts.configure(self.ticket_callback if tls.session_tickets.enabled else None, tls.context_cache)
        self.keep_last_good(text)
        settle_collector()

    def tls_failure(self, site: Site, error: Exception) -> None:
        """A certificate that cannot be loaded fails its handshakes; say so once per version of it."""
        if site not in self.failed_sites:
            self.failed_sites.add(site)
            log("tls_certificate_failed", worker=self.index, application=site.application,
                error=f"{type(error).__name__}: {error}")

    async def serve(self, port: int, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientConnection(self, port), sock=sock, backlog=4096)
        if self.listeners.get(port, False) is None and not self.listener_tls.get(port) and not self.draining:
            self.listeners[port] = server
        else:
            server.close()

    # --- housekeeping ------------------------------------------------------------------

    async def housekeeping(self) -> None:
        parent = os.getppid()
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            try:
                self.check_deadlines()  # also while draining: a stalled peer must not hold the drain
                if self.draining:
                    continue
                if ticks % 5 == 0:
                    self.tickets.reload_if_changed()
                    if self.file_signature() != self.signature:
                        self.reload("file changed")
                    now = time.monotonic()
                    self.registry.sweep(now)
                    self.traffic.rotate(now)
                    for upstream in self.runtime.upstreams.values():
                        if upstream.detector is not None:
                            upstream.detector.sweep(now)
                    if os.getppid() != parent:
                        log("master_gone", worker=self.index)
                        self.stop()
                if ticks % 2 == 0:
                    self.spawn(self.access_log.flush())
            except Exception as error:  # housekeeping must outlive any one failure
                log("housekeeping_error", worker=self.index, error=f"{type(error).__name__}: {error}")

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            if connection.deadline or connection.write_deadline:
                connection.check_deadline(now)
        for exchange in list(self.timed):
            exchange.check_deadline(now)
        for upstream in list(self.busy):
            if upstream.deadline and now >= upstream.deadline and upstream.exchange is not None:
                upstream.exchange.upstream_timeout()

    async def control_server(self) -> None:
        if not self.control_path:
            return
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        # Held, not dropped: uvloop closes a unix server once it is garbage-collected.
        self.control = await asyncio.start_unix_server(self.answer_control, path=self.control_path)

    async def answer_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One line `<command> [json]` from the master, one JSON line back."""
        try:
            command, _, payload = (await reader.readline()).strip().partition(b" ")
            if command == b"health":
                answer: dict = {"applied": self.registry.apply_health(json.loads(payload))}
            elif command == b"certificates":  # the master issued or renewed certificates
                answer = {"reloaded": self.reload("certificates changed", force=True)}
            elif command == b"traffic":  # the master's traffic report to the admin (node/traffic.py)
                answer = {"worker": self.index, "pid": os.getpid(), "upstreams": self.traffic.totals()}
            elif command == b"reload":  # the master stored a new release
                current = self.store is not None and str(self.store.version) == self.runtime.version
                answer = {"ok": current or self.reload("release stored"), "version": self.runtime.version,
                          "last_error": self.last_error}
            else:
                answer = self.status()
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    def load_health(self) -> None:
        """A worker (re)started by the master begins with the node's current health verdicts."""
        if not self.control_path:
            return
        try:
            self.registry.apply_health(json.loads(Path(self.control_path).with_name(HEALTH_FILE).read_text()))
        except (OSError, ValueError, KeyError):
            pass  # no check has failed yet (or none is configured)

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "worker": self.index, "pid": os.getpid(), "version": self.runtime.version,
            "connections": len(self.connections), "draining": self.draining,
            "reloads": self.reloads, "last_error": self.last_error,
            "access_log_dropped": self.access_log.dropped, "metrics": self.metrics.snapshot(),
            "transitions": list(self.transitions),
            "circuit_breakers": {name: u.breaker.status() for name, u in self.runtime.upstreams.items()},
            "access": self.access.status(),
            "traffic": self.traffic.snapshot(now),
            "upstreams": {
                name: [e.status(now) for e in self.registry.endpoints.values() if e.upstream == name]
                for name in self.runtime.upstreams
            },
        }

    # --- life cycle --------------------------------------------------------------------

    def stop(self) -> None:
        if self.draining:
            return
        self.draining = True
        for server in self.listeners.values():
            if server is not None:
                server.close()
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        self.stopped.set()

    async def drain(self) -> None:
        deadline = time.monotonic() + self.runtime.limits.drain_timeout
        while self.connections and time.monotonic() < deadline:
            for connection in list(self.connections):
                if connection.idle:
                    connection.close()
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        await self.access_log.flush()
        self.access_log.flush_now()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.load_health()
        try:
            runtime, text = self.load_runtime()
        except ConfigError as error:
            last_good = self.last_good_path
            if last_good is None or not last_good.exists():
                log("config_invalid", worker=self.index, errors=str(error).splitlines())
                return 2
            log("config_invalid", worker=self.index, errors=str(error).splitlines(),
                action="starting from the last good config")
            runtime, text = self.load_runtime(last_good)
        self.signature = self.file_signature()
        try:
            self.reconcile_listeners(runtime)
        except OSError as error:
            log("listen_failed", worker=self.index, error=str(error))
            return 3
        self.tickets.reload_if_changed()
        self.adopt(runtime, text)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload("SIGHUP"))
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        await self.control_server()
        self.spawn(self.housekeeping())
        log("worker_ready", worker=self.index, pid=os.getpid(), version=runtime.version,
            ports=sorted(runtime.ports))
        await self.stopped.wait()
        await self.drain()
        log("worker_stopped", worker=self.index)
        return 0


def main(argv: list[str]) -> int:
    config, bind, index, partition, access_log, control, data_dir = argv
    worker = Worker(config, bind, int(index), partition, access_log or None, control or None, data_dir or None)
    return uvloop.run(worker.run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

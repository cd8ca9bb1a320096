"""Active health checks: probed once per node, by its master, and shared by every worker.

`HealthRunner.apply_config(config)` keeps one prober per server of each upstream that has a
`health_check`: the master's file watcher calls it, and so can any other source of configs.
A prober counts consecutive passes and failures against `rise` and `fall`; the first probe
of a server decides at once (until then it is assumed healthy). On a verdict change the
runner records who, why and when, and hands the set of failing servers to `publish`, which
tells the workers. Probes are tasks bounded by their timeout: nothing here blocks the
master's loop, and nothing here touches client traffic.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from ..model.config import Config, HealthCheck, status_set
from .tls import upstream_context, upstream_server_name

SOURCE = "health_check"
BODY_LIMIT = 64 * 1024  # of a probe's answer, read for the body match
Key = tuple[str, str, int]  # upstream, server address, server port


@dataclass(frozen=True)
class Target:
    """One server's check, everything prepared: the probe's bytes, the statuses that pass,
    and for a TLS upstream the client context and server name its traffic uses."""

    upstream: str
    address: str
    port: int
    check: HealthCheck
    request: bytes
    statuses: frozenset[int]
    body: re.Pattern[bytes] | None
    tls: tuple[ssl.SSLContext, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


def targets(config: Config) -> dict[Key, Target]:
    """A TLS upstream's servers are probed over TLS, verified as its traffic is."""
    found: dict[Key, Target] = {}
    certificates = {c.name: c for c in config.certificates}
    for upstream in config.upstreams:
        check = upstream.health_check
        if check is None:
            continue
        statuses = status_set(check.statuses)
        body = re.compile(check.body.encode()) if check.body is not None else None
        tls = upstream.tls
        context = upstream_context(tls, certificates.get(tls.certificate)) if tls is not None else None
        for server in upstream.servers:
            host = check.host or upstream.host or server.address
            request = (f"{check.method} {check.path} HTTP/1.1\r\nHost: {host}\r\n"
                       "User-Agent: edgeplane-health-check\r\nConnection: close\r\n\r\n").encode("latin-1")
            found[(upstream.name, server.address, server.port)] = Target(
                upstream.name, server.address, server.port, check, request, statuses, body,
                (context, upstream_server_name(upstream, server)) if context is not None else None)
    return found


# --- one probe ---------------------------------------------------------------------------


class _Answer:
    """The parts of a probe's answer a verdict needs: status, the first 64 KiB of body."""

    def __init__(self, head_only: bool):
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.body = bytearray()
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.complete = self.head_only

    def on_body(self, data: bytes) -> None:
        room = BODY_LIMIT - len(self.body)
        if room > 0:
            self.body += data[:room]

    def on_message_complete(self) -> None:
        self.complete = True


async def probe(target: Target) -> str | None:
    """None when the server passes, else why it failed."""
    check = target.check
    try:
        return await asyncio.wait_for(_probe(target, check.port or target.port), check.timeout)
    except TimeoutError:
        return f"no answer within {check.timeout:g}s"
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    except httptools.HttpParserError as error:
        return f"invalid HTTP answer: {error}"


async def _probe(target: Target, port: int) -> str | None:
    context, server_name = target.tls or (None, None)
    reader, writer = await asyncio.open_connection(target.address, port, ssl=context, server_hostname=server_name)
    try:
        if target.check.type == "tcp":
            return None
        writer.write(target.request)
        answer = _Answer(target.check.method == "HEAD")
        while not answer.complete and len(answer.body) < BODY_LIMIT:
            data = await reader.read(65536)
            if not data:
                break
            answer.parser.feed_data(data)
        return verdict(target, answer)
    finally:
        writer.close()


def verdict(target: Target, answer: _Answer) -> str | None:
    if not answer.status:
        return "connection closed before an answer"
    if answer.status not in target.statuses:
        return f"answered {answer.status} to {target.check.method} {target.check.path}"
    if target.body is not None and not target.body.search(answer.body):
        return f"answer to {target.check.path} does not match {target.check.body!r}"
    return None


# --- probers and the runner ----------------------------------------------------------------


class Prober:
    """The verdict on one server and the task that keeps probing it."""

    def __init__(self, target: Target, runner: HealthRunner):
        self.target = target
        self.runner = runner
        self.state = "unchecked"
        self.passes = self.failures = self.checks = 0
        self.cause = ""
        self.since = time.time()
        self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        """Probe until cancelled: an error no probe foresaw fails that probe, and one while
        judging or telling the verdict is reported; neither ends the probing."""
        while True:
            try:
                cause = await probe(self.target)
            except Exception as error:
                cause = f"probe error: {type(error).__name__}: {error}"
            try:
                self.runner.observe(self, cause)
            except Exception as error:
                self.runner.complain("health_check_error", upstream=self.target.upstream,
                                     endpoint=self.target.label, error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(self.target.check.interval)

    def status(self) -> dict:
        return {"state": self.state, "since": round(self.since, 3), "cause": self.cause or None,
                "checks": self.checks, "passes": self.passes, "failures": self.failures}


class HealthRunner:
    def __init__(self, publish: Callable[[dict], Any], record: Callable[[dict], Any], complain: Callable[..., Any]):
        self.publish = publish    # told the failing servers whenever that set changes
        self.record = record      # told every transition
        self.complain = complain  # told an error of the probing itself (event, fields)
        self.probers: dict[Key, Prober] = {}
        self.sequence = 0
        self.untold = False  # the failing servers changed since `publish` last took them

    def apply_config(self, config: Config) -> None:
        """Probe the servers this config checks: new ones start at once, changed checks
        keep their verdict, servers no longer checked are dropped (and no longer failing)."""
        wanted = targets(config)
        dropped_failing = False
        for key in [k for k in self.probers if k not in wanted]:
            prober = self.probers.pop(key)
            prober.task.cancel()
            dropped_failing |= prober.state == "unhealthy"
        for key, target in wanted.items():
            prober = self.probers.get(key)
            if prober is None:
                self.probers[key] = Prober(target, self)
            else:
                prober.target = target  # the next probe uses it; the verdict stays
        if dropped_failing:
            self.untold = True
            self.tell()

    def observe(self, prober: Prober, cause: str | None) -> None:
        """Count one probe's outcome; on a verdict change record it, and tell the workers when
        the failing servers changed (or still are to be told: telling them failed before)."""
        self.judge(prober, cause)
        if self.untold:
            self.tell()

    def tell(self) -> None:
        self.publish(self.message())
        self.untold = False

    def judge(self, prober: Prober, cause: str | None) -> None:
        prober.checks += 1
        if cause is None:
            prober.passes, prober.failures = prober.passes + 1, 0
        else:
            prober.passes, prober.failures, prober.cause = 0, prober.failures + 1, cause
        check, before = prober.target.check, prober.state
        if before == "unchecked":
            after = "healthy" if cause is None else "unhealthy"
        elif before == "healthy" and prober.failures >= check.fall:
            after = "unhealthy"
        elif before == "unhealthy" and prober.passes >= check.rise:
            after = "healthy"
        else:
            return
        prober.state, prober.since = after, time.time()
        if after == "healthy":
            why = "first check passed" if before == "unchecked" else f"{prober.passes} consecutive checks passed"
            prober.cause = ""
        else:
            why = cause if before == "unchecked" else f"{prober.failures} consecutive checks failed (last: {cause})"
        self.untold |= (after == "unhealthy") != (before == "unhealthy")
        target = prober.target
        self.record({"time": round(prober.since, 3), "upstream": target.upstream, "endpoint": target.label,
                     "source": SOURCE, "state": after, "cause": why})

    def message(self) -> dict:
        """What workers apply: every failing server, numbered so a late message loses."""
        self.sequence += 1
        return {"sequence": self.sequence, "failing": [
            [key[0], key[1], key[2], prober.cause] for key, prober in self.probers.items()
            if prober.state == "unhealthy"]}

    def status(self) -> dict:
        out: dict[str, dict] = {}
        for (upstream, _, _), prober in sorted(self.probers.items()):
            out.setdefault(upstream, {})[prober.target.label] = prober.status()
        return out

    def close(self) -> None:
        for prober in self.probers.values():
            prober.task.cancel()
        self.probers.clear()

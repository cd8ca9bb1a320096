"""Processes the benchmark runs (nginx, edgeplane nodes, wrk, idle clients) and what it reads
from them (/proc CPU and RSS, nginx stub_status, the node's /status).

Every pid started is appended to a pid file, so `run.sh` can kill whatever is left even if
this interpreter dies; `Procs.stop_all()` stops everything in reverse order of start.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")
EDGEPLANE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "edgeplane")


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: process exited with code {proc.returncode}")
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException):
            pass
        if time.monotonic() >= deadline:
            raise BenchError(f"{what}: not ready within {timeout:g}s")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- /proc -----------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- process bookkeeping ---------------------------------------------------------------

class Procs:
    def __init__(self, pid_file: str):
        self.pid_file = pid_file
        self.stoppers: list[Callable[[], None]] = []

    def record(self, pid: int) -> None:
        with open(self.pid_file, "a") as handle:
            handle.write(f"{pid}\n")

    def spawn(self, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, **kwargs)
        self.record(proc.pid)
        return proc

    def on_stop(self, stopper: Callable[[], None]) -> None:
        self.stoppers.append(stopper)

    def mark(self) -> int:
        return len(self.stoppers)

    def stop_since(self, mark: int) -> None:
        """Stop what was started after `mark`, newest first."""
        while len(self.stoppers) > mark:
            stopper = self.stoppers.pop()
            try:
                stopper()
            except Exception as error:  # cleanup must go on
                print(f"warning: cleanup: {error}", file=sys.stderr, flush=True)

    def stop_all(self) -> None:
        self.stop_since(0)


def terminate(proc: subprocess.Popen, extra_pids: list[int], grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal a process, wait, then SIGKILL it and any of `extra_pids` still alive."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    deadline = time.monotonic() + 3
    for pid in extra_pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- nginx -----------------------------------------------------------------------------

class Nginx:
    def __init__(self, procs: Procs, binary: str, prefix: str, conf: str, port: int, label: str):
        self.label = label
        self.prefix = prefix
        self.port = port
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        self.conf_path = os.path.join(prefix, "nginx.conf")
        with open(self.conf_path, "w") as handle:
            handle.write(conf)
        self.error_log = os.path.join(prefix, "error.log")
        self.workers: list[int] = []
        self.stderr = None
        test = subprocess.run([binary, "-t", "-q", "-p", prefix, "-e", self.error_log, "-c", self.conf_path],
                              capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise BenchError(f"{label}: nginx rejected its config {self.conf_path}:\n{test.stderr}")
        self.stderr = open(os.path.join(prefix, "stderr.log"), "wb")
        self.proc = procs.spawn([binary, "-p", prefix, "-e", self.error_log, "-c", self.conf_path],
                                stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
        procs.on_stop(self.stop)
        wait_until(lambda: port_open(port), 15, f"{label} on port {port}", self.proc)
        self.workers = wait_until(lambda: children_of(self.proc.pid), 10, f"{label} worker", self.proc)
        for pid in self.workers:
            procs.record(pid)

    @property
    def worker_pid(self) -> int:
        return self.workers[0]

    def stop(self) -> None:
        terminate(self.proc, self.workers, sig=signal.SIGTERM)
        if self.stderr is not None:
            self.stderr.close()


def stub_status(port: int, path: str) -> dict[str, int]:
    status, body = http_get(port, path)
    if status != 200:
        raise BenchError(f"stub_status on port {port} answered {status}")
    numbers = re.search(rb"\s(\d+)\s+(\d+)\s+(\d+)\s", body)
    active = re.search(rb"Active connections:\s*(\d+)", body)
    if not numbers or not active:
        raise BenchError(f"cannot parse stub_status: {body!r}")
    return {"active": int(active.group(1)), "accepts": int(numbers.group(1)), "requests": int(numbers.group(3))}


# --- edgeplane -------------------------------------------------------------------------

def node_env() -> dict[str, str]:
    """The node's environment: BENCH_EDGEPLANE_SRC, when set, replaces the installed sources."""
    env = dict(os.environ)
    source = env.get("BENCH_EDGEPLANE_SRC")
    if source:
        env["PYTHONPATH"] = os.path.abspath(source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Edgeplane:
    def __init__(self, procs: Procs, exe: str, config_path: str, port: int, access_log: str | None,
                 log_path: str, label: str = "edgeplane", ready_within: float = 60.0):
        self.label = label
        self.port = port
        self.status_port = free_port()
        self.worker_pid = 0
        self.log = open(log_path, "wb")
        self.proc = procs.spawn(
            [exe, "node", "--config", config_path, "--workers", "1", "--bind", "127.0.0.1",
             "--status", f"127.0.0.1:{self.status_port}", "--access-log", access_log or "off"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=node_env())
        procs.on_stop(self.stop)
        self.worker_pid = wait_until(lambda: self.status()["workers"][0]["pid"], ready_within,
                                     f"{label} status on port {self.status_port}", self.proc)
        procs.record(self.worker_pid)
        wait_until(lambda: port_open(port), 15, f"{label} on port {port}", self.proc)

    def status(self) -> dict:
        code, body = http_get(self.status_port, "/status")
        if code != 200:
            raise BenchError(f"/status answered {code}")
        return json.loads(body)

    def metrics(self) -> str:
        return http_get(self.status_port, "/metrics")[1].decode()

    def stop(self) -> None:
        terminate(self.proc, [self.worker_pid] if self.worker_pid else [], grace=15)
        self.log.close()


# --- wrk -------------------------------------------------------------------------------

def run_wrk(procs: Procs, script: str, request_file: str, url: str, duration: float, connections: int,
            raw_path: str | None = None, script_args: tuple[str, ...] = ()) -> dict:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", script, url,
            "--", request_file, *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = procs.spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"wrk did not finish within {duration + 30:g}s") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if raw_path:
        with open(raw_path, "w") as handle:
            handle.write(" ".join(args) + "\n" + output)
    line = next((x for x in output.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{output}")
    result = json.loads(line.split(" ", 1)[1])
    result["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


# --- line protocol with a child (idle_clients.py) ----------------------------------------

class LineReader:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.buffer = b""

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no answer from pid {self.proc.pid} within {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"pid {self.proc.pid} closed its output (exit {self.proc.poll()})")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


# --- comparisons of a few proxies under the same load (bench-rules, bench-access) ----------

def comparison_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", "8")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    return parser.parse_args()


def workspace(args: argparse.Namespace, name: str) -> tuple[str, Procs]:
    """The scratch directory (`--workdir`, kept; or a new one, removed once all is stopped:
    access logs of a run reach hundreds of MB) and the pid book of what is started there."""
    if args.workdir:
        return args.workdir, Procs(os.path.join(args.workdir, "pids"))
    work = tempfile.mkdtemp(prefix=f"edgeplane-bench-{name}-")
    procs = Procs(os.path.join(work, "pids"))
    procs.on_stop(lambda: shutil.rmtree(work, ignore_errors=True))  # the first stopper runs last
    return work, procs


def alternate_rounds(procs: Procs, proxies: dict, script: str, request_file: str, duration: float,
                     rounds: int, width: int = 11, connections: int = 50, script_args: tuple[str, ...] = (),
                     observe: Callable[[str, dict], None] | None = None) -> dict[str, tuple[float, ...]]:
    """A 2 s warm-up round, then `rounds` measured rounds, the order of the proxies reversed
    every round; prints each and returns the medians (req/s, CPU us per request, p50 us,
    p99 us) by label; `observe(label, wrk outcome)` sees each measured round. A proxy is
    anything with `port` and `worker_pid`; any error fails the bench."""
    results: dict[str, list[tuple[float, ...]]] = {label: [] for label in proxies}
    for round_number in range(rounds + 1):
        order = list(proxies.items()) if round_number % 2 else list(reversed(proxies.items()))
        for label, proxy in order:
            cpu0 = cpu_seconds(proxy.worker_pid)
            outcome = run_wrk(procs, script, request_file, f"http://127.0.0.1:{proxy.port}/",
                              duration if round_number else 2, connections, script_args=script_args)
            cpu = cpu_seconds(proxy.worker_pid) - cpu0
            errors = sum(outcome[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
            if errors:
                raise SystemExit(f"{label}: {errors} errors in round {round_number}")
            if round_number:  # round 0 warms up
                results[label].append((outcome["rps"], 1e6 * cpu / max(outcome["requests"], 1),
                                       outcome["p50_us"], outcome["p99_us"]))
                if observe is not None:
                    observe(label, outcome)
                print(f"  round {round_number} {label:<{width}} {outcome['rps']:>9.1f} req/s "
                      f"{results[label][-1][1]:>6.1f} us/req  p99 {outcome['p99_us'] / 1000:>7.3f} ms", flush=True)
    medians = {label: tuple(statistics.median(row[i] for row in rows) for i in range(4))
               for label, rows in results.items()}
    for label, (rps, us, _, p99) in medians.items():
        print(f"  median {label:<{width}} {rps:>9.1f} req/s {us:>6.1f} us/req  p99 {p99 / 1000:>7.3f} ms")
    return medians

"""edgeplane vs nginx on one machine: throughput, latency, upstream churn, idle memory.

Run through `make bench` (bench/run.sh), which installs nginx and wrk if missing, raises the
file-descriptor limit and cleans up after this script. Scenarios:

  (a) one route, no access log, one ~500-byte browser-like request;
  (b) 50 applications with host/path rules (10 regex), access log to a file, metrics on;
  (c) 10,000 idle keep-alive client connections: worker RSS per connection.

nginx (1 worker, `return 200` with a 100-byte body) is the backend of both proxies, each of
which gets one worker. Rounds alternate between the proxies under the same wrk load; the
medians are printed, and the last line is `ratios: a=<x> b=<y> idle_kib_per_conn=<z>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback

import workload as wl
from procs import (
    BenchError,
    Edgeplane,
    LineReader,
    Nginx,
    Procs,
    cpu_seconds,
    free_port,
    host_cpu,
    rss_kib,
    run_wrk,
    stub_status,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class BenchTimeout(Exception):
    """The whole run took longer than BENCH_TIMEOUT; not caught per scenario."""


def env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.workdir
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.results = os.path.join(args.results, stamp)
        os.makedirs(self.results, exist_ok=True)
        self.output = open(os.path.join(self.results, "output.txt"), "w")
        self.procs = Procs(os.path.join(self.work, "pids"))
        self.duration = env_number("BENCH_DURATION", 10)
        self.warmup = env_number("BENCH_WARMUP", 2)
        self.rounds = int(env_number("BENCH_ROUNDS", 3))
        self.connections = int(env_number("BENCH_CONNECTIONS", 50))
        self.idle_count = int(env_number("BENCH_IDLE_CONNECTIONS", 10000))
        self.scenarios = os.environ.get("BENCH_SCENARIOS", "abc")
        self.nginx = args.nginx
        self.edgeplane = os.path.join(ROOT, ".venv", "bin", "edgeplane")
        self.python = os.path.join(ROOT, ".venv", "bin", "python")
        self.summary: dict = {"started": stamp, "settings": {
            "duration_s": self.duration, "warmup_s": self.warmup, "rounds": self.rounds,
            "connections": self.connections, "idle_connections": self.idle_count, "wrk_threads": 1}}
        self.backend: Nginx | None = None
        self.backend_port = 0

    # --- output ------------------------------------------------------------------------

    def out(self, line: str = "") -> None:
        print(line, flush=True)
        self.output.write(line + "\n")
        self.output.flush()

    def path(self, name: str) -> str:
        return os.path.join(self.results, name)

    def write_request_files(self) -> None:
        self.single_request = self.path("request-a.http")
        with open(self.single_request, "wb") as handle:
            handle.write(wl.raw_request(wl.SCENARIO_A_HOST, wl.SCENARIO_A_PATH))
        self.mix_requests = self.path("requests-b.txt")
        with open(self.mix_requests, "w") as handle:
            for host, path, _ in wl.mix_targets():
                handle.write(wl.raw_request(host, path).decode("latin-1").replace("\r\n", "\\r\\n") + "\n")

    # --- building blocks -----------------------------------------------------------------

    def start_backend(self) -> None:
        self.backend_port = free_port()
        prefix = os.path.join(self.work, "nginx-backend")
        self.backend = Nginx(self.procs, self.nginx, prefix, wl.nginx_backend(prefix, self.backend_port),
                             self.backend_port, "backend nginx")
        first = self.accepts()
        second = self.accepts()
        if second - first != 1:
            raise BenchError(f"backend stub_status accepts moved by {second - first} between two reads; expected 1")

    def accepts(self) -> int:
        """Connections the backend has accepted so far, this query's own included."""
        return stub_status(self.backend_port, wl.STUB_PATH)["accepts"]

    def opened_since(self, before: int) -> int:
        """Connections opened to the backend since `accepts()` returned `before`, queries excluded."""
        return self.accepts() - before - 1

    def check_proxy(self, label: str, port: int, targets: list[tuple[str, str, str]]) -> None:
        """Send every request of the scenario once and check the answer came from the backend."""
        problems = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            stream = sock.makefile("rb")
            for host, path, rule in targets:
                sock.sendall(wl.raw_request(host, path))
                status_line = stream.readline()
                headers: dict[bytes, bytes] = {}
                while True:
                    line = stream.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"-1"))
                body = stream.read(length) if length >= 0 else b""
                status = int(status_line.split()[1]) if status_line else 0
                where = f"{host}{path}"
                if status != 200 or body != wl.BACKEND_BODY:
                    problems.append(f"{where}: status {status}, body {body[:60]!r}")
                if (headers.get(b"cache-control") == b"public, max-age=3600") != (rule == "static"):
                    problems.append(f"{where}: Cache-Control {headers.get(b'cache-control')!r} for rule {rule}")
                if (headers.get(b"x-rule") == b"regex") != (rule == "regex"):
                    problems.append(f"{where}: X-Rule {headers.get(b'x-rule')!r} for rule {rule}")
        if problems:
            raise BenchError(f"{label} does not answer as expected:\n  " + "\n  ".join(problems[:10]))

    def measure(self, label: str, proxy_pid: int, script: str, request_file: str, port: int, duration: float,
                raw_name: str | None) -> dict:
        backend_pid = self.backend.worker_pid
        accepts0 = self.accepts()
        proxy0, backend0 = cpu_seconds(proxy_pid), cpu_seconds(backend_pid)
        busy0, _ = host_cpu()
        started = time.monotonic()
        result = run_wrk(self.procs, script, request_file, f"http://127.0.0.1:{port}/", duration,
                         self.connections, self.path(raw_name) if raw_name else None)
        wall = time.monotonic() - started
        busy1, _ = host_cpu()
        proxy_cpu = cpu_seconds(proxy_pid) - proxy0
        backend_cpu = cpu_seconds(backend_pid) - backend0
        result.update({
            "proxy": label, "wall_s": round(wall, 3),
            "proxy_cpu_pct": round(100 * proxy_cpu / wall, 1),
            "backend_cpu_pct": round(100 * backend_cpu / wall, 1),
            "wrk_cpu_pct": round(100 * result["wrk_cpu_s"] / wall, 1),
            "other_cpu_pct": round(100 * max(0.0, (busy1 - busy0) - proxy_cpu - backend_cpu - result["wrk_cpu_s"]) / wall, 1),
            "upstream_opened": self.opened_since(accepts0),
            "proxy_cpu_us_per_req": round(1e6 * proxy_cpu / max(result["requests"], 1), 1),
        })
        result["errors"] = sum(result[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
        return result

    def row(self, name: str, r: dict) -> str:
        return (f"  {name:<9} {r['proxy']:<10} {r['rps']:>9.1f} {r['p50_us'] / 1000:>8.2f} {r['p99_us'] / 1000:>8.2f}"
                f" {r['errors']:>6} {r['proxy_cpu_pct']:>7.0f}% {r['backend_cpu_pct']:>8.0f}% {r['wrk_cpu_pct']:>5.0f}%"
                f" {r['other_cpu_pct']:>6.0f}% {r['proxy_cpu_us_per_req']:>7.1f} {r['upstream_opened']:>9}")

    HEADER = ("  round     proxy          req/s  p50 ms   p99 ms errors proxyCPU backendCPU   wrk  other"
              "  us/req  upstream+")

    def compare(self, key: str, proxies: dict[str, tuple[int, int]], script: str, request_file: str) -> dict:
        """Warm up each proxy, then alternate measured rounds; returns the per-proxy rounds and medians."""
        runs: dict[str, list[dict]] = {name: [] for name in proxies}
        opened: dict[str, list[int]] = {name: [] for name in proxies}
        self.out(self.HEADER)
        for name, (pid, port) in proxies.items():
            warm = self.measure(name, pid, script, request_file, port, self.warmup, f"wrk-{key}-warmup-{name}.txt")
            opened[name].append(warm["upstream_opened"])
            self.out(self.row("warmup", warm))
        order = list(proxies)
        for index in range(self.rounds):
            for name in order if index % 2 == 0 else order[::-1]:
                pid, port = proxies[name]
                result = self.measure(name, pid, script, request_file, port, self.duration,
                                      f"wrk-{key}-round{index + 1}-{name}.txt")
                opened[name].append(result["upstream_opened"])
                runs[name].append(result)
                self.out(self.row(str(index + 1), result))
                time.sleep(0.5)
        medians = {}
        for name, results in runs.items():
            medians[name] = {
                "rps": statistics.median(r["rps"] for r in results),
                "p50_ms": statistics.median(r["p50_us"] for r in results) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in results) / 1000,
                "errors": sum(r["errors"] for r in results),
                "cpu_us_per_req": statistics.median(r["proxy_cpu_us_per_req"] for r in results),
                "upstream_opened_runs": opened[name],  # warm-up, then each measured round
                "upstream_opened_total": sum(opened[name]),
            }
        for name, m in medians.items():
            self.out(f"  median    {name:<10} {m['rps']:>9.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['errors']:>6}"
                     f"{'':>35}{m['cpu_us_per_req']:>7.1f}")
        if {"nginx", "edgeplane"} <= set(medians):
            n, e = medians["nginx"]["cpu_us_per_req"], medians["edgeplane"]["cpu_us_per_req"]
            self.out(f"  proxy CPU per request (median): nginx {n:.1f} us, edgeplane {e:.1f} us -> edgeplane needs "
                     f"{e / n:.2f}x the CPU per request (less sensitive to other load than req/s)")
        return {"rounds": runs, "medians": medians}

    # --- scenarios -----------------------------------------------------------------------

    def scenario_a(self) -> dict:
        port_n, port_e = free_port(), free_port()
        prefix = os.path.join(self.work, "nginx-proxy-a")
        targets = [(wl.SCENARIO_A_HOST, wl.SCENARIO_A_PATH, "default")]
        opened0 = self.accepts()
        nginx = Nginx(self.procs, self.nginx, prefix, wl.nginx_simple(prefix, port_n, self.backend_port), port_n,
                      "nginx proxy (a)")
        self.check_proxy("nginx (a)", port_n, targets)
        opened_n = self.opened_since(opened0)
        config = self.path("edgeplane-a.json")
        wl.write_json(config, wl.edgeplane_simple(port_e, self.backend_port))
        opened0 = self.accepts()
        node = Edgeplane(self.procs, self.edgeplane, config, port_e, None, self.path("edgeplane-a.log"))
        self.check_proxy("edgeplane (a)", port_e, targets)
        opened_e = self.opened_since(opened0)
        self.copy(nginx.conf_path, "nginx-proxy-a.conf")
        result = self.compare("a", {"nginx": (nginx.worker_pid, port_n), "edgeplane": (node.worker_pid, port_e)},
                              os.path.join(HERE, "wrk", "single.lua"), self.single_request)
        medians = result["medians"]
        medians["nginx"]["upstream_opened_total"] += opened_n
        medians["edgeplane"]["upstream_opened_total"] += opened_e
        n, e = medians["nginx"], medians["edgeplane"]
        result["rps_ratio"] = e["rps"] / n["rps"]
        result["p99_ratio"] = e["p99_ms"] / n["p99_ms"]
        checked = {"nginx": opened_n, "edgeplane": opened_e}
        for name in ("edgeplane", "nginx"):
            runs = medians[name]["upstream_opened_runs"]
            worst = max(runs)
            medians[name]["upstream_opened_max_per_run"] = worst
            verdict = "within" if worst <= self.connections else "OVER"
            self.out(f"  upstream connections opened by {name:<9}: check request {checked[name]}, warm-up {runs[0]}, rounds "
                     f"{'/'.join(str(x) for x in runs[1:])} -> max per run {worst} vs concurrency {self.connections}: "
                     f"{verdict} target; {medians[name]['upstream_opened_total']} in all")
        aborted = self.edgeplane_metrics(node.metrics())[2]
        result["edgeplane_4xx"] = aborted
        self.out(f"  (reopened in rounds = connections closed when wrk stopped the run before with requests in flight;"
                 f" edgeplane counted {aborted} such client-closed requests, status 499)")
        self.out(f"  (a) edgeplane/nginx: req/s ratio {result['rps_ratio']:.3f} (target >= 0.8), "
                 f"p99 ratio {result['p99_ratio']:.2f} (target <= 1.5)")
        node.stop()
        nginx.stop()
        return result

    def scenario_b(self) -> dict:
        port_n, port_e, status_n = free_port(), free_port(), free_port()
        prefix = os.path.join(self.work, "nginx-proxy-b")
        nginx_log = os.path.join(self.work, "nginx-access-b.log")
        edge_log = os.path.join(self.work, "edgeplane-access-b.log")
        targets = wl.mix_targets()
        nginx = Nginx(self.procs, self.nginx, prefix,
                      wl.nginx_many(prefix, port_n, self.backend_port, status_n, nginx_log), port_n, "nginx proxy (b)")
        config = self.path("edgeplane-b.json")
        wl.write_json(config, wl.edgeplane_many(port_e, self.backend_port))
        node = Edgeplane(self.procs, self.edgeplane, config, port_e, edge_log, self.path("edgeplane-b.log"))
        self.copy(nginx.conf_path, "nginx-proxy-b.conf")
        self.check_proxy("nginx (b)", port_n, targets)
        self.check_proxy("edgeplane (b)", port_e, targets)
        result = self.compare("b", {"nginx": (nginx.worker_pid, port_n), "edgeplane": (node.worker_pid, port_e)},
                              os.path.join(HERE, "wrk", "mix.lua"), self.mix_requests)
        n, e = result["medians"]["nginx"], result["medians"]["edgeplane"]
        result["rps_ratio"] = e["rps"] / n["rps"]
        result["p99_ratio"] = e["p99_ms"] / n["p99_ms"]
        time.sleep(1.5)  # both logs flush at least once a second
        apps, dropped, aborted = self.edgeplane_metrics(node.metrics())
        sent = {name: sum(r["requests"] for r in runs) for name, runs in result["rounds"].items()}
        result["checks"] = {"nginx_log_lines": count_lines(nginx_log), "edgeplane_log_lines": count_lines(edge_log),
                            "edgeplane_apps_with_2xx": apps, "edgeplane_log_dropped": dropped,
                            "edgeplane_4xx": aborted,
                            "nginx_stub_status": stub_status(status_n, "/")}
        checks = result["checks"]
        self.out(f"  access log lines: nginx {checks['nginx_log_lines']}, edgeplane {checks['edgeplane_log_lines']} "
                 f"(measured rounds alone: nginx {sent['nginx']}, edgeplane {sent['edgeplane']} responses; "
                 f"edgeplane dropped {dropped}); /metrics shows 2xx for {apps} of {wl.APPS} applications")
        self.out(f"  upstream connections opened by edgeplane in rounds: "
                 f"{'/'.join(str(x) for x in e['upstream_opened_runs'][1:])}, after {aborted} client-closed requests "
                 f"(status 499: wrk stopping a run with requests in flight closes their upstream connections)")
        self.out(f"  (b) edgeplane/nginx: req/s ratio {result['rps_ratio']:.3f} (target >= 0.6), "
                 f"p99 ratio {result['p99_ratio']:.2f}")
        node.stop()
        nginx.stop()
        for log in (nginx_log, edge_log):
            os.unlink(log)
        return result

    @staticmethod
    def edgeplane_metrics(text: str) -> tuple[int, int, int]:
        """(applications with 2xx answers, access-log records dropped, 4xx answers) from /metrics."""
        apps = set()
        dropped = client_errors = 0
        for line in text.splitlines():
            if line.startswith("edgeplane_requests_total{") and 'status_class="2xx"' in line:
                apps.add(line.split('application="', 1)[1].split('"', 1)[0])
            elif line.startswith("edgeplane_requests_total{") and 'status_class="4xx"' in line:
                client_errors += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("edgeplane_access_log_dropped_total "):
                dropped = int(float(line.split()[1]))
        return len(apps), dropped, client_errors

    def idle(self, label: str, pid: int, port: int, connections_seen) -> dict:
        request = self.single_request
        client = [self.python, os.path.join(HERE, "idle_clients.py"), "--port", str(port), "--request", request]
        warm = subprocess.run(client + ["--count", str(self.connections), "--hold", "0"], capture_output=True,
                              text=True, timeout=60)
        if warm.returncode != 0:
            raise BenchError(f"{label}: warm-up connections failed:\n{warm.stdout}{warm.stderr}")
        time.sleep(1.0)
        before = rss_kib(pid)
        proc = self.procs.spawn(client + ["--count", str(self.idle_count)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            reader = LineReader(proc)
            ready = json.loads(reader.read_line(180).split(" ", 1)[1])
            time.sleep(2.0)
            after = rss_kib(pid)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(2.0)
            idle_cpu = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            seen = connections_seen()
            proc.stdin.write(b"report\n")
            proc.stdin.flush()
            done = json.loads(reader.read_line(60).split(" ", 1)[1])
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        held = ready["open"]
        if held == 0:
            raise BenchError(f"{label}: no idle connection could be opened: {ready}")
        per_conn = (after - before) / held
        result = {"rss_before_kib": before, "rss_after_kib": after, "opened": held, "failed": ready["failed"],
                  "errors": ready["errors"], "open_seconds": ready["seconds"], "still_open": done["still_open"],
                  "server_reports": seen, "kib_per_conn": per_conn, "idle_cpu_pct": round(idle_cpu, 1)}
        self.out(f"  {label:<10} worker RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB with {held} open "
                 f"({ready['failed']} failed, opened in {ready['seconds']}s, {done['still_open']} still open at the "
                 f"end, server counts {seen}): {per_conn:.2f} KiB per connection; worker CPU while idle {idle_cpu:.1f}%")
        return result

    def scenario_c(self) -> dict:
        result = {}
        port_e = free_port()
        config = self.path("edgeplane-c.json")
        wl.write_json(config, wl.edgeplane_simple(port_e, self.backend_port))
        node = Edgeplane(self.procs, self.edgeplane, config, port_e, None, self.path("edgeplane-c.log"))
        result["edgeplane"] = self.idle("edgeplane", node.worker_pid, port_e,
                                        lambda: node.status()["workers"][0]["connections"])
        node.stop()
        try:
            port_n = free_port()
            prefix = os.path.join(self.work, "nginx-proxy-c")
            status_port = free_port()
            conf = wl.nginx_simple(prefix, port_n, self.backend_port).replace(
                "  access_log off;\n", f"  access_log off;\n  server {{ listen 127.0.0.1:{status_port}; "
                                       "location / { stub_status; } }\n", 1)
            nginx = Nginx(self.procs, self.nginx, prefix, conf, port_n, "nginx proxy (c)")
            result["nginx"] = self.idle("nginx", nginx.worker_pid, port_n,
                                        lambda: stub_status(status_port, "/")["active"] - 1)
            nginx.stop()
        except BenchError as error:
            self.out(f"  nginx comparison failed: {error}")
        return result

    def copy(self, source: str, name: str) -> None:
        with open(source, "rb") as src, open(self.path(name), "wb") as dst:
            dst.write(src.read())

    # --- the whole -------------------------------------------------------------------------

    def run(self) -> int:
        self.write_request_files()
        nginx_version = subprocess.run([self.nginx, "-v"], capture_output=True, text=True).stderr.strip()
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        load = open("/proc/loadavg").read().split()[:3]
        request_bytes = len(wl.raw_request(wl.SCENARIO_A_HOST, wl.SCENARIO_A_PATH))
        source = os.environ.get("BENCH_EDGEPLANE_SRC") or os.path.join(ROOT, "src")
        self.summary["edgeplane_source"] = {"path": source, "git": git_state(source)}
        self.summary["environment"] = {
            "cpus": os.cpu_count(), "loadavg_at_start": load, "nginx": nginx_version, "wrk": wrk_version,
            "python": platform.python_version(), "kernel": platform.release(), "request_bytes": request_bytes}
        self.out(f"edgeplane bench: {os.cpu_count()} CPUs, load average {' '.join(load)} at start; "
                 f"{nginx_version}; {wrk_version.split(' Copyright')[0]}; python {platform.python_version()}")
        self.out(f"edgeplane sources: {source} ({self.summary['edgeplane_source']['git']})")
        self.out(f"load: wrk -t1 -c{self.connections} -d{self.duration:g}s per round, {self.rounds} rounds alternating "
                 f"(+{self.warmup:g}s warm-up each); request {request_bytes} bytes, {wl.header_count()} headers; "
                 f"backend: nginx, 1 worker, return 200 with a {len(wl.BACKEND_BODY)}-byte body")
        self.out("columns: req/s and wrk latency percentiles per round; CPU = % of one core used during the round "
                 "by the proxy worker, the backend worker, wrk, and 'other' (everything else on the machine); "
                 "us/req = proxy worker CPU microseconds per request; "
                 "upstream+ = new connections the backend accepted during the round")
        self.start_backend()
        self.summary["backend_port"] = self.backend_port
        scenarios = [("a", "(a) one route, no access log", self.scenario_a),
                     ("b", f"(b) {wl.APPS} applications, {wl.REGEX_APPS} regex rules, access log on, metrics on",
                      self.scenario_b),
                     ("c", f"(c) {self.idle_count} idle keep-alive client connections", self.scenario_c)]
        failed = False
        for key, title, run in scenarios:
            if key not in self.scenarios:
                continue
            self.out()
            self.out(f"== {title}")
            started = time.monotonic()
            mark = self.procs.mark()
            try:
                self.summary[key] = run()
            except BenchError as error:
                failed = True
                self.summary[key] = {"error": str(error)}
                self.out(f"  FAILED: {error}")
            except Exception as error:  # report it, clean up, go on with the next
                failed = True
                self.summary[key] = {"error": repr(error)}
                self.out(f"  FAILED: {traceback.format_exc()}")
            finally:
                self.procs.stop_since(mark)
            self.out(f"  ({time.monotonic() - started:.0f}s)")
        return 1 if failed else 0

    def finish(self) -> None:
        """The closing lines; the very last one is the ratios line `make bench` promises."""
        self.summary["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        ratio_a = self.summary.get("a", {}).get("rps_ratio")
        ratio_b = self.summary.get("b", {}).get("rps_ratio")
        idle_kib = self.summary.get("c", {}).get("edgeplane", {}).get("kib_per_conn")
        with open(self.path("summary.json"), "w") as handle:
            json.dump(self.summary, handle, indent=1, default=str)
        self.out()
        self.out(f"load average at end: {' '.join(self.summary['loadavg_at_end'])}")
        self.out(f"raw results: {os.path.relpath(self.results, ROOT)}/ (summary.json, wrk-*.txt, configs, output.txt)")
        if "p99_ratio" in self.summary.get("a", {}):
            self.out(f"p99 ratio (a): {self.summary['a']['p99_ratio']:.2f} (edgeplane p99 / nginx p99; target <= 1.5)")
        self.out(f"ratios: a={fmt(ratio_a, 3)} b={fmt(ratio_b, 3)} idle_kib_per_conn={fmt(idle_kib, 2)}")


def fmt(value: float | None, digits: int) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def git_state(path: str) -> str:
    """The commit a source tree is at, and whether it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if not head:
        return "not a git checkout"
    return f"commit {head}" + (", with uncommitted changes" if dirty else "")


def count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="scratch directory (nginx prefixes, access logs, pid file)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    args = parser.parse_args()
    bench = Bench(args)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    def on_alarm(_signum: int, _frame: object) -> None:
        raise BenchTimeout(f"the benchmark did not finish within {limit}s")

    limit = int(env_number("BENCH_TIMEOUT", 600))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    code = 1
    try:
        code = bench.run()
    except (BenchError, BenchTimeout) as error:
        bench.out(f"bench failed: {error}")
    except SystemExit as stop:
        bench.out(f"bench interrupted (exit {stop.code}); stopping everything it started")
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.procs.stop_all()
        bench.finish()
    return code


if __name__ == "__main__":
    sys.exit(main())

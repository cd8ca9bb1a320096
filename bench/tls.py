"""TLS handshakes: one node worker against one nginx worker on the same certificate, and what
the number of certificates costs a node.

1. Node vs nginx, one ECDSA P-256 certificate: connections/s and the server worker's CPU per
   connection, TLS 1.3 and 1.2, full and resumed handshakes. `BENCH_TLS_CLIENTS` processes
   of `openssl s_time -www /` (C, so the client is cheap) each open connection after
   connection: a handshake, one GET of a 2-byte answer, close. Resumed connections present
   the session of an untimed first one (a TLS 1.2 ticket, a TLS 1.3 PSK). The GET is what
   makes TLS 1.3 resumable: its tickets arrive after the handshake, and a client that closes
   without reading never has one (`s_time -reuse` alone measures full handshakes). s_time
   marks each connection resumed or not; the bench stops unless every resumed connection
   did resume and no full one did.
2. Certificates: a node with 10 certificates and one with 100,000 (`BENCH_TLS_CERTS`; files,
   one application and name per certificate): first compile and reload compile time, peak
   memory, the worker's memory, and TLS 1.3 handshakes/s and worker CPU with SNI cycling
   (Python clients) over 10 names on both nodes (only the number of certificates differs)
   and over 1,000 names on the large one; a first pass over the names builds their contexts.

Run with `make bench-tls`; the last line is `tls: full_ratio=<x> resumed_ratio=<y>
certs_<n>k_vs_10=<z>` (TLS 1.3 connections/s node/nginx; targets: full >= 0.7, z ~ 1).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from procs import EDGEPLANE, BenchError, Edgeplane, Nginx, Procs, comparison_args, cpu_seconds, free_port, rss_kib, workspace  # noqa: E402, I001

MANY = int(os.environ.get("BENCH_TLS_CERTS", "100000"))
CLIENTS = int(os.environ.get("BENCH_TLS_CLIENTS", "2"))  # client processes at once
SNI_NAMES = 1000  # names the SNI clients cycle over, spread evenly over the certificates
MODES = [("1.3", "new"), ("1.3", "reuse"), ("1.2", "new"), ("1.2", "reuse")]
MODE_NAMES = {"new": "full", "reuse": "resumed"}


# --- certificates ------------------------------------------------------------------------

def make_certificates(directory: str, count: int) -> list[tuple[str, str, str]]:
    """`count` leaf certificates (name, cert file, key file) of one CA, sharing one P-256 key so
    that making 100,000 takes a minute; one key or many costs a server the same per handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = os.path.join(directory, "leaf.key")
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    certs = []
    os.makedirs(os.path.join(directory, "certs"), exist_ok=True)
    for index in range(count):
        name = f"site{index}.bench.test"
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(index + 2)
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        path = os.path.join(directory, "certs", f"{index}.pem")
        with open(path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        certs.append((name, path, key_path))
    return certs


def node_config(port: int, certs: list[tuple[str, str, str]]) -> dict:
    return {
        "settings": {"access_log": {"enabled": False}},
        "certificates": [{"name": f"c{i}", "cert_file": c, "key_file": k} for i, (_, c, k) in enumerate(certs)],
        "applications": [{"name": f"a{i}", "domains": [name], "ports": [], "https_ports": [port],
                          "certificates": [f"c{i}"], "rules": [{"actions": [{"respond": {"body": "ok"}}]}]}
                         for i, (name, _, _) in enumerate(certs)],
    }


def nginx_config(prefix: str, port: int, cert: str, key: str) -> str:
    """One worker, TLS 1.2 and 1.3, session tickets (nginx's default) as the node has them."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl reuseport;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


# --- load -----------------------------------------------------------------------------------

def s_time(procs: Procs, port: int, version: str, mode: str, seconds: float, clients: int) -> tuple[int, float, int]:
    """(connections, wall seconds, connections resumed) of `clients` s_time processes at once.
    The wall clock is ours: s_time's own rounds its run to whole seconds."""
    args = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}", "-www", "/",
            "-time", str(max(1, round(seconds))), f"-tls{version.replace('.', '_')}"]
    started = time.monotonic()
    runs = [procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(clients)]
    connections = resumed = 0
    for run in runs:
        output = run.communicate(timeout=seconds + 60)[0]
        found = re.search(r"^(\d+) connections in [\d.]+s;", output, re.M)
        if run.returncode != 0 or not found:
            raise BenchError(f"s_time failed (exit {run.returncode}): {output[-500:]}")
        connections += int(found.group(1))
        marks = "".join(line for line in output.splitlines() if line and set(line) <= {"r", "*"})
        resumed += marks.count("r")
    return connections, time.monotonic() - started, resumed


def check_resumption(version: str, mode: str, connections: int, resumed: int) -> None:
    expected = connections if mode == "reuse" else 0  # s_time's first connection, the full one, is not timed
    if resumed != expected:
        raise BenchError(f"TLS {version} {MODE_NAMES[mode]}: {resumed} of {connections} connections resumed, "
                         f"expected {expected}: the figure would not measure what it says")


def _sni_client(port: int, names: list[str], seconds: float, start: float, queue) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    while time.time() < start:
        time.sleep(0.001)
    done, deadline = 0, start + (seconds or 3600)
    while time.time() < deadline and (seconds or done < len(names)):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw, server_hostname=names[done % len(names)]):
                done += 1
    queue.put((done, time.time() - start))


def sni_handshakes(port: int, names: list[str], seconds: float, clients: int) -> tuple[int, float]:
    """(handshakes, wall seconds) of `clients` Python clients cycling over `names`; with
    `seconds` 0, each client goes once over its share of the names."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 0.5
    workers = [multiprocessing.Process(target=_sni_client,
                                       args=(port, names[i::clients] or names, seconds, start, queue))
               for i in range(clients)]
    for worker in workers:
        worker.start()
    answers = [queue.get(timeout=(seconds or 600) + 60) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(done for done, _ in answers), max(wall for _, wall in answers)


# --- the measurements -------------------------------------------------------------------

def handshakes_vs_nginx(procs: Procs, args, work: str, cert: tuple[str, str, str]) -> dict:
    node_port, nginx_port = free_port(), free_port()
    path = os.path.join(work, "node-1.json")
    config = node_config(node_port, [cert])
    config["applications"][0]["domains"].append("*")  # s_time's GET has no Host: answered as nginx's default server does
    with open(path, "w") as handle:
        json.dump(config, handle)
    mark = procs.mark()
    servers = {"nginx": Nginx(procs, args.nginx, os.path.join(work, "nginx"),
                              nginx_config(os.path.join(work, "nginx"), nginx_port, cert[1], cert[2]), nginx_port, "nginx"),
               "node": Edgeplane(procs, EDGEPLANE, path, node_port, None, os.path.join(work, "node-1.log"), "node")}
    results: dict = {}
    for version, mode in MODES:
        label = f"tls{version} {MODE_NAMES[mode]}"
        rows: dict[str, list[tuple[float, float]]] = {"nginx": [], "node": []}
        for round_ in range(args.rounds):
            order = list(servers.items()) if round_ % 2 == 0 else list(servers.items())[::-1]
            for name, server in order:
                cpu = cpu_seconds(server.worker_pid)
                connections, wall, resumed = s_time(procs, server.port, version, mode, args.duration, CLIENTS)
                cpu = cpu_seconds(server.worker_pid) - cpu
                check_resumption(version, mode, connections, resumed)
                rows[name].append((connections / wall, 1e6 * cpu / connections))
                print(f"  {label:16} round {round_ + 1} {name:5} {rows[name][-1][0]:8.1f} connections/s "
                      f"{rows[name][-1][1]:6.0f} us CPU each ({resumed} of {connections} resumed)", flush=True)
        medians = {name: (statistics.median(r for r, _ in v), statistics.median(u for _, u in v))
                   for name, v in rows.items()}
        results[label] = {"node": medians["node"], "nginx": medians["nginx"],
                          "ratio": medians["node"][0] / medians["nginx"][0]}
        print(f"{label}: node {medians['node'][0]:.0f}/s ({medians['node'][1]:.0f} us), nginx "
              f"{medians['nginx'][0]:.0f}/s ({medians['nginx'][1]:.0f} us), ratio {results[label]['ratio']:.3f}",
              flush=True)
    procs.stop_since(mark)
    return results


def compile_cost(config: dict, workdir: str) -> dict:
    """Load + compile in a fresh interpreter, as a worker does (the cyclic collector paused):
    first compile, then a reload."""
    path = os.path.join(workdir, "compile.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    script = f"""
import json, resource, time
from edgeplane.model.load import load
from edgeplane.node.endpoints import EndpointRegistry
from edgeplane.node.runtime import compile_runtime
from edgeplane.node.tls import NameCache
from edgeplane.node.worker import collector_paused
with collector_paused():
    t0 = time.perf_counter(); config = load({path!r}); t1 = time.perf_counter()
    names = NameCache(); registry = EndpointRegistry()
    runtime = compile_runtime(config, registry, names=names); t2 = time.perf_counter()
with collector_paused():
    again = compile_runtime(config, registry, names=names); t3 = time.perf_counter()
print(json.dumps({{"load_s": t1 - t0, "compile_s": t2 - t1, "recompile_s": t3 - t2,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(HERE), "src")})
    if output.returncode != 0:
        raise BenchError(output.stderr[-2000:])
    return json.loads(output.stdout)


def certificates_cost(procs: Procs, args, work: str, certs: list[tuple[str, str, str]], count: int) -> dict:
    port = free_port()
    config = node_config(port, certs[:count])
    cost = compile_cost(config, work)
    print(f"{count} certificates: load {cost['load_s']:.2f}s, compile {cost['compile_s']:.2f}s, "
          f"reload compile {cost['recompile_s']:.2f}s, peak RSS {cost['max_rss_mib']:.0f} MiB", flush=True)
    path = os.path.join(work, f"node-{count}.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    mark = procs.mark()
    node = Edgeplane(procs, EDGEPLANE, path, port, None, os.path.join(work, f"node-{count}.log"), f"node-{count}",
                     ready_within=60 + 3 * cost["load_s"] + 3 * cost["compile_s"])
    spread = {size: [name for name, _, _ in certs[:count]][:: count // size][:size]
              for size in (10, SNI_NAMES) if size <= count}
    cpu = cpu_seconds(node.worker_pid)
    done, wall = sni_handshakes(port, spread[max(spread)], 0, CLIENTS)  # every name once: its context is built
    cost["first_use"] = (done / wall, 1e6 * (cpu_seconds(node.worker_pid) - cpu) / done)
    print(f"{count} certificates: first handshake of each of {max(spread)} names {cost['first_use'][0]:.0f}/s, "
          f"{cost['first_use'][1]:.0f} us worker CPU each", flush=True)
    for size, names in spread.items():
        rounds = []
        for _ in range(args.rounds):
            cpu = cpu_seconds(node.worker_pid)
            done, wall = sni_handshakes(port, names, args.duration, CLIENTS)
            rounds.append((done / wall, 1e6 * (cpu_seconds(node.worker_pid) - cpu) / done))
        cost[f"handshakes_{size}_names"] = rate, us = (statistics.median(r for r, _ in rounds),
                                                         statistics.median(u for _, u in rounds))
        print(f"{count} certificates: {rate:.0f} handshakes/s cycling over {size} names, {us:.0f} us worker CPU each",
              flush=True)
    cost["worker_rss_mib"] = rss_kib(node.worker_pid) / 1024
    print(f"{count} certificates: worker RSS {cost['worker_rss_mib']:.0f} MiB", flush=True)
    procs.stop_since(mark)
    return cost


def main() -> int:
    args = comparison_args(__doc__)
    work, procs = workspace(args, "tls")
    try:
        print(f"making {MANY} certificates ...", flush=True)
        started = time.monotonic()
        certs = make_certificates(work, MANY)
        print(f"  made in {time.monotonic() - started:.0f}s", flush=True)
        results: dict = {"handshakes": handshakes_vs_nginx(procs, args, work, certs[0])}
        for count in (10, MANY):
            results[f"certificates_{count}"] = certificates_cost(procs, args, work, certs, count)
        # Ten names on both nodes: what differs is only the number of certificates behind them.
        few, many = results["certificates_10"]["handshakes_10_names"], results[f"certificates_{MANY}"]["handshakes_10_names"]
        results["certs_ratio"] = many[0] / few[0]
        with open(os.path.join(work, "summary.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        handshakes = results["handshakes"]
        print(f"tls: full_ratio={handshakes['tls1.3 full']['ratio']:.3f} "
              f"resumed_ratio={handshakes['tls1.3 resumed']['ratio']:.3f} "
              f"certs_{MANY // 1000}k_vs_10={results['certs_ratio']:.3f} "
              f"(worker CPU per handshake {many[1]:.0f} us vs {few[1]:.0f} us)")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

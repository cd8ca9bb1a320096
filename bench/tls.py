"""TLS handshakes: one node worker against one nginx worker on the same certificate, and what
the number of certificates costs a node.

1. Full and resumed handshakes/s, node vs nginx: `openssl s_time` clients (C, so the
   client is cheap), `BENCH_TLS_CLIENTS` of them at once, TLS 1.3, ECDSA P-256 certificate.
2. Certificates: a node with 10 certificates and one with 100,000 (files; one application
   per certificate, one name each): handshakes/s with SNI cycling over names (Python
   clients), first compile and reload compile time, and the worker's memory.

Run with `make bench-tls`; the last line is
`tls: full_ratio=<x> resumed_ratio=<y> certs_100k_vs_10=<z>` (targets: full >= 0.7, z ~ 1).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from procs import Edgeplane, Nginx, Procs, free_port, rss_kib  # noqa: E402

MANY = int(os.environ.get("BENCH_TLS_CERTS", "100000"))


# --- certificates ------------------------------------------------------------------------

def make_certificates(directory: str, count: int) -> tuple[str, list[tuple[str, str, str]]]:
    """A CA and `count` leaf certificates (name, cert file, key file) sharing one P-256 key, so
    that making 100,000 takes seconds; one key or many costs a server the same per handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = time.time()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    start, end = _dates(now)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
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
            handle.write(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
        certs.append((name, path, key_path))
    return ca_path, certs


def _dates(now: float):
    import datetime
    start = datetime.datetime.fromtimestamp(now - 86400, datetime.UTC)
    return start, start + datetime.timedelta(days=30)


def node_config(port: int, certs: list[tuple[str, str, str]]) -> dict:
    return {
        "settings": {"access_log": {"enabled": False}},
        "certificates": [{"name": f"c{i}", "cert_file": c, "key_file": k} for i, (_, c, k) in enumerate(certs)],
        "applications": [{"name": f"a{i}", "domains": [name], "ports": [], "https_ports": [port],
                          "certificates": [f"c{i}"], "rules": [{"actions": [{"respond": {"body": "ok"}}]}]}
                         for i, (name, _, _) in enumerate(certs)],
    }


def nginx_config(prefix: str, port: int, cert: str, key: str) -> str:
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
        location / {{ return 200 "ok"; }}
    }}
}}
"""


# --- load -----------------------------------------------------------------------------------

def s_time(procs: Procs, port: int, mode: str, seconds: int, clients: int) -> float:
    """Handshakes per second by `clients` openssl s_time processes at once (mode new or reuse)."""
    runs = [procs.spawn(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}", "-time", str(seconds),
                         "-tls1_3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(clients)]
    total = 0.0
    for run in runs:
        output = run.communicate(timeout=seconds + 60)[0]
        found = re.search(r"(\d+) connections in (\d+) real seconds", output)
        if not found:
            raise RuntimeError(f"cannot read s_time's output: {output[-500:]}")
        total += int(found.group(1)) / max(1, int(found.group(2)))
    return total


def _sni_client(port: int, names: list[str], seconds: float, start: float, queue) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    while time.time() < start:
        time.sleep(0.001)
    done, index, deadline = 0, 0, start + seconds
    while time.time() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw, server_hostname=names[index % len(names)]):
                done += 1
        index += 1
    queue.put(done)


def sni_handshakes(port: int, names: list[str], seconds: float, clients: int) -> float:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 0.5
    workers = [multiprocessing.Process(target=_sni_client, args=(port, names[i::clients] or names, seconds, start, queue))
               for i in range(clients)]
    for worker in workers:
        worker.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return total / seconds


# --- the measurements -------------------------------------------------------------------

def compile_cost(config: dict, workdir: str) -> dict:
    """Load + compile in a fresh interpreter, as a worker does: first compile, then a reload."""
    path = os.path.join(workdir, "compile.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    script = f"""
import json, resource, time
from edgeplane.model.load import load
from edgeplane.node.endpoints import EndpointRegistry
from edgeplane.node.runtime import compile_runtime
from edgeplane.node.tls import NameCache
t0 = time.perf_counter(); config = load({path!r}); t1 = time.perf_counter()
names = NameCache(); registry = EndpointRegistry()
runtime = compile_runtime(config, registry, names=names); t2 = time.perf_counter()
again = compile_runtime(config, registry, names=names); t3 = time.perf_counter()
print(json.dumps({{"load_s": t1 - t0, "compile_s": t2 - t1, "recompile_s": t3 - t2,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(HERE), "src")})
    if output.returncode != 0:
        raise RuntimeError(output.stderr[-2000:])
    return json.loads(output.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_DURATION", "8")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--clients", type=int, default=int(os.environ.get("BENCH_TLS_CLIENTS", "2")))
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="edgeplane-bench-tls-")
    procs = Procs(os.path.join(work, "pids"))
    exe = os.path.join(os.path.dirname(HERE), ".venv", "bin", "edgeplane")
    results: dict = {}
    try:
        print(f"making {MANY} certificates ...", flush=True)
        _, certs = make_certificates(work, MANY)
        # 1. node vs nginx, same certificate
        node_port, nginx_port = free_port(), free_port()
        config_path = os.path.join(work, "node-1.json")
        with open(config_path, "w") as handle:
            json.dump(node_config(node_port, certs[:1]), handle)
        Edgeplane(procs, exe, config_path, node_port, None, os.path.join(work, "node-1.log"), "node")
        prefix = os.path.join(work, "nginx")
        Nginx(procs, args.nginx, prefix, nginx_config(prefix, nginx_port, certs[0][1], certs[0][2]), nginx_port, "nginx")
        for mode in ("new", "reuse"):
            figures: dict[str, list[float]] = {"nginx": [], "node": []}
            for round_ in range(args.rounds):
                order = [("nginx", nginx_port), ("node", node_port)]
                for name, port in order if round_ % 2 == 0 else order[::-1]:
                    rate = s_time(procs, port, mode, args.seconds, args.clients)
                    figures[name].append(rate)
                    print(f"  {mode:5} round {round_ + 1} {name:6} {rate:9.1f} handshakes/s", flush=True)
            results[mode] = {k: statistics.median(v) for k, v in figures.items()}
            results[f"{mode}_ratio"] = results[mode]["node"] / results[mode]["nginx"]
            print(f"{'full' if mode == 'new' else 'resumed'} handshakes/s: node {results[mode]['node']:.1f}, "
                  f"nginx {results[mode]['nginx']:.1f}, ratio {results[f'{mode}_ratio']:.3f}", flush=True)
        procs.stop_all()

        # 2. 10 vs 100,000 certificates
        for count in (10, MANY):
            port = free_port()
            config = node_config(port, certs[:count])
            results[f"compile_{count}"] = cost = compile_cost(config, work)
            print(f"{count} certificates: load {cost['load_s']:.2f}s, compile {cost['compile_s']:.2f}s, "
                  f"reload compile {cost['recompile_s']:.2f}s, peak RSS {cost['max_rss_mib']:.0f} MiB", flush=True)
            path = os.path.join(work, f"node-{count}.json")
            with open(path, "w") as handle:
                json.dump(config, handle)
            mark = procs.mark()
            node = Edgeplane(procs, exe, path, port, None, os.path.join(work, f"node-{count}.log"), f"node-{count}")
            names = [name for name, _, _ in certs[:count]][:: max(1, count // 1000)][:1000]
            sni_handshakes(port, names, 2, args.clients)  # warm: every context used once
            rates = [sni_handshakes(port, names, args.seconds, args.clients) for _ in range(args.rounds)]
            results[f"sni_{count}"] = statistics.median(rates)
            results[f"rss_{count}_mib"] = rss_kib(node.worker_pid) / 1024
            print(f"{count} certificates: {results[f'sni_{count}']:.1f} handshakes/s over {len(names)} names "
                  f"(rounds {', '.join(f'{r:.0f}' for r in rates)}), worker RSS {results[f'rss_{count}_mib']:.0f} MiB",
                  flush=True)
            procs.stop_since(mark)
        results["certs_ratio"] = results[f"sni_{MANY}"] / results["sni_10"]
        with open(os.path.join(work, "summary.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"tls: full_ratio={results['new_ratio']:.3f} resumed_ratio={results['reuse_ratio']:.3f} "
              f"certs_{MANY // 1000}k_vs_10={results['certs_ratio']:.3f}")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

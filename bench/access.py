"""The cost of the access phase: requests/s through one node worker with JWT (RS256, key
inline) + a rate limit (node scope, never reached) + the access log, as a ratio to plain
proxying through the same node (and plain proxying with the access log, to tell the log's
share); and nginx plain vs nginx with `limit_req` + access log.

nginx open source has no JWT verification (that needs njs or NGINX Plus), so its second
configuration is the rate limit and the log only. Same backend (nginx), same wrk load,
rounds alternated; the last line is `access: ratio=<x> nginx_limit_ratio=<y>`. Run with
`make bench-access`.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jwt  # noqa: E402
import workload as wl  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from procs import EDGEPLANE, Edgeplane, Nginx, alternate_rounds, comparison_args, free_port, workspace  # noqa: E402

HOST = wl.SCENARIO_A_HOST
PATH = wl.SCENARIO_A_PATH
LIMIT = 1_000_000  # requests per second: counted on every request, never reached


def token_and_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    now = int(time.time())
    token = jwt.encode({"sub": "bench-user", "iss": "https://idp.bench.test", "aud": "bench", "iat": now,
                        "exp": now + 86400}, key, algorithm="RS256", headers={"kid": "bench"})
    return token, public


def edgeplane_config(port: int, backend_port: int, public_pem: str | None, log: bool) -> dict:
    actions = [{"proxy": {"upstream": "backend"}}]
    config = {"settings": {"access_log": {"enabled": log},
                           "limits": {"keepalive_timeout": "300s", "keepalive_requests": 100000}},
              "upstreams": [{"name": "backend", "servers": [{"address": "127.0.0.1", "port": backend_port}],
                             "pool": {"max_idle": 256, "max_requests": 100000, "idle_timeout": "300s"}}],
              "applications": [{"name": "access", "domains": [HOST], "ports": [port],
                                "rules": [{"actions": actions}]}]}
    if public_pem is not None:
        actions[:0] = [{"authenticate": {"provider": "corp"}}, {"rate-limit": {"policy": "per-user"}}]
        config["auth_providers"] = [{"name": "corp", "jwt": {
            "algorithms": ["RS256"], "keys": [{"kid": "bench", "pem": public_pem}],
            "issuer": "https://idp.bench.test", "audiences": ["bench"], "consumer_claim": "sub"}}]
        config["rate_limits"] = [{"name": "per-user", "limit": LIMIT, "key": ["consumer"], "scope": "node"}]
    return config


def nginx_config(prefix: str, port: int, backend_port: int, limited: bool) -> str:
    config = wl.nginx_simple(prefix, port, backend_port)
    if limited:
        config = config.replace("http {\n  access_log off;\n", "http {\n" + wl.NGINX_LOG_FORMAT +
                                f"  access_log {prefix}/access.log bench buffer=64k flush=1s;\n"
                                f"  limit_req_zone $http_authorization zone=per_user:10m rate={LIMIT}r/s;\n")
        config = config.replace("location / { proxy_pass", "location / { limit_req zone=per_user burst=1000 nodelay; "
                                "proxy_pass")
    return config


def main() -> int:
    args = comparison_args(__doc__)
    work, procs = workspace(args, "access")
    try:
        backend_port = free_port()
        prefix = os.path.join(work, "backend")
        Nginx(procs, args.nginx, prefix, wl.nginx_backend(prefix, backend_port), backend_port, "backend nginx")
        token, public_pem = token_and_key()
        request = os.path.join(work, "request.http")
        with open(request, "wb") as handle:
            handle.write(wl.raw_request(HOST, PATH).replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode()))
        proxies: dict = {}
        for label, pem, log in (("plain", None, False), ("plain+log", None, True), ("jwt+limit+log", public_pem, True)):
            port = free_port()
            path = os.path.join(work, f"{label.replace('+', '-')}.json")
            wl.write_json(path, edgeplane_config(port, backend_port, pem, log))
            access_log = os.path.join(work, f"{label.replace('+', '-')}.access.log") if log else None
            proxies[label] = Edgeplane(procs, EDGEPLANE, path, port, access_log, os.path.join(work, f"{label}.log"), label)
        for label, limited in (("nginx plain", False), ("nginx limit+log", True)):
            port = free_port()
            nginx_prefix = os.path.join(work, label.replace(" ", "-").replace("+", "-"))
            proxies[label] = Nginx(procs, args.nginx, nginx_prefix, nginx_config(nginx_prefix, port, backend_port, limited),
                                   port, label)
        print(f"access bench: wrk -t1 -c50 -d{args.duration:g}s x {args.rounds} rounds; one RS256 token "
              f"(2048-bit key inline), rate limit {LIMIT}/s per consumer (node scope)", flush=True)
        medians = alternate_rounds(procs, proxies, os.path.join(HERE, "wrk", "single.lua"), request, args.duration,
                                   args.rounds, width=16)
        plain, logged, full = medians["plain"], medians["plain+log"], medians["jwt+limit+log"]
        nginx_plain, nginx_limit = medians["nginx plain"], medians["nginx limit+log"]
        print(f"  edgeplane CPU per request: +{full[1] - plain[1]:.1f} us for JWT + rate limit + access log, "
              f"of which the access log +{logged[1] - plain[1]:.1f} us")
        print(f"access: ratio={full[0] / plain[0]:.3f} cpu_ratio={plain[1] / full[1]:.3f} "
              f"nginx_limit_ratio={nginx_limit[0] / nginx_plain[0]:.3f} vs_nginx_limit={full[0] / nginx_limit[0]:.3f}")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

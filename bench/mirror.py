"""What a mirror costs the main path: p99 latency of the same paced load through a route
without and with a `mirror` of every request, one edgeplane worker, and nginx's `mirror`
the same way for comparison.

Two nginx backends (the main one and the shadow, each `return 200` with a 100-byte body)
and four proxies started once: edgeplane plain, edgeplane mirroring, nginx plain, nginx
mirroring. wrk sends scenario (a)'s request on `BENCH_MIRROR_CONNECTIONS` (10)
connections, pausing `BENCH_MIRROR_PAUSE_MS` (5) after each answer, so the proxies stay
well below saturation and latency is the proxy's own, not time queued behind a busy CPU.
Rounds alternate the four (see `procs.alternate_rounds`); medians are compared. The
shadow's request count proves the copies were made.

Run with `make bench-mirror`; the last line is
`mirror: edgeplane_p99_ratio=<x> nginx_p99_ratio=<y>` (p99 with the mirror / without;
target for edgeplane: <= 1.05).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workload as wl  # noqa: E402
from procs import (  # noqa: E402
    EDGEPLANE,
    Edgeplane,
    Nginx,
    alternate_rounds,
    comparison_args,
    free_port,
    stub_status,
    workspace,
)

CONNECTIONS = int(os.environ.get("BENCH_MIRROR_CONNECTIONS", "10"))
PAUSE_MS = int(os.environ.get("BENCH_MIRROR_PAUSE_MS", "5"))


def edgeplane_config(port: int, backend_port: int, shadow_port: int | None) -> dict:
    config = wl.edgeplane_simple(port, backend_port)
    if shadow_port is not None:
        config["upstreams"].append(wl._upstream(shadow_port) | {"name": "shadow"})
        config["applications"][0]["rules"][0]["actions"].insert(0, {"mirror": {"upstream": "shadow"}})
    return config


def nginx_config(prefix: str, port: int, backend_port: int, shadow_port: int | None) -> str:
    config = wl.nginx_simple(prefix, port, backend_port)
    if shadow_port is None:
        return config
    shadow = ("  upstream shadow {\n"
              f"    server 127.0.0.1:{shadow_port};\n"
              "    keepalive 64;\n    keepalive_requests 100000;\n    keepalive_timeout 300s;\n  }\n")
    mirrored = ("    location / { mirror /__mirror; proxy_pass http://backend; }\n"
                "    location = /__mirror { internal; proxy_pass http://shadow$request_uri; }\n")
    config = config.replace("  server {\n", shadow + "  server {\n", 1)
    return config.replace("    location / { proxy_pass http://backend; }\n", mirrored)


def main() -> int:
    args = comparison_args(__doc__)
    work, procs = workspace(args, "mirror")
    request = os.path.join(work, "request.http")
    with open(request, "wb") as handle:
        handle.write(wl.raw_request(wl.SCENARIO_A_HOST, wl.SCENARIO_A_PATH))
    try:
        backends = {}
        for name in ("backend", "shadow"):
            port, prefix = free_port(), os.path.join(work, f"nginx-{name}")
            Nginx(procs, args.nginx, prefix, wl.nginx_backend(prefix, port), port, f"{name} nginx")
            backends[name] = port
        proxies: dict = {}
        for label, shadow in (("plain", None), ("mirror", backends["shadow"])):
            port = free_port()
            path = os.path.join(work, f"edgeplane-{label}.json")
            wl.write_json(path, edgeplane_config(port, backends["backend"], shadow))
            proxies[f"edgeplane {label}"] = Edgeplane(procs, EDGEPLANE, path, port, None,
                                                      os.path.join(work, f"edgeplane-{label}.log"), f"edgeplane {label}")
            port, prefix = free_port(), os.path.join(work, f"nginx-{label}")
            proxies[f"nginx {label}"] = Nginx(procs, args.nginx, prefix,
                                              nginx_config(prefix, port, backends["backend"], shadow), port, f"nginx {label}")
        print(f"mirror bench: wrk -t1 -c{CONNECTIONS}, {PAUSE_MS} ms pause after each answer, {args.duration:g}s x "
              f"{args.rounds} rounds; one worker each; every request mirrored by the mirror proxies", flush=True)
        mirrored = {"requests": 0}
        shadow_before = stub_status(backends["shadow"], wl.STUB_PATH)["requests"]

        def count(label: str, outcome: dict) -> None:
            if label.endswith("mirror"):
                mirrored["requests"] += outcome["requests"]
        medians = alternate_rounds(procs, proxies, os.path.join(HERE, "wrk", "paced.lua"), request, args.duration,
                                   args.rounds, width=16, connections=CONNECTIONS, script_args=(str(PAUSE_MS),),
                                   observe=count)
        copies = stub_status(backends["shadow"], wl.STUB_PATH)["requests"] - shadow_before - 1
        print(f"  the shadow received {copies} copies of {mirrored['requests']} measured mirrored requests "
              "(plus the warm-up's)")
        ratios = {proxy: medians[f"{proxy} mirror"][3] / medians[f"{proxy} plain"][3] for proxy in ("edgeplane", "nginx")}
        print(f"mirror: edgeplane_p99_ratio={ratios['edgeplane']:.3f} nginx_p99_ratio={ratios['nginx']:.3f} "
              "(p99 with a mirror of every request / without; target for edgeplane <= 1.05)")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end cost of many rules: requests/s through one node worker with 1,000 rules
(300 of them regexes) as a ratio to the same requests through a one-rule application.

Same backend (nginx), same wrk load and request mix in both configurations, rounds
alternated; prints median requests/s, CPU microseconds per request, and the ratio on the
last line as `rules: e2e_ratio_1000_vs_1=<x>`. Run with `make bench-rules`.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workload as wl  # noqa: E402
from procs import EDGEPLANE, Edgeplane, Nginx, alternate_rounds, comparison_args, free_port, workspace  # noqa: E402

RULES = 1000
REGEX_SHARE = 300
HOST = "rules.bench.test"


def many_rules() -> list[dict]:
    """1,000 rules of the kinds operators write: exact paths, prefixes, header tests, regexes."""
    rules = []
    for index in range(RULES - 1):
        kind = index % 10
        if kind < 3:  # 300 regexes
            condition = {"var": "path", "op": "regex", "values": [rf"^/r{index}/items/[0-9]+$"]}
        elif kind < 6:
            condition = {"var": "path", "op": "prefix", "values": [f"/p{index}/"]}
        elif kind < 8:
            condition = {"var": "path", "op": "eq", "values": [f"/e{index}"]}
        else:
            condition = {"var": "header", "name": "X-Tenant", "op": "eq", "values": [f"t{index}"]}
        rules.append({"name": f"rule-{index}", "conditions": [condition],
                      "actions": [{"set-request-header": {"name": "X-Rule", "value": str(index)}},
                                  {"proxy": {"upstream": "backend"}}]})
    rules.append({"name": "default", "actions": [{"proxy": {"upstream": "backend"}}]})
    return rules


def targets() -> list[str]:
    """Paths that hit rules late in the list, and the default at the very end."""
    return ["/r990/items/42", "/p995/cart", "/e996", "/r900/items/7", "/p903/x", "/catalog/shoes?page=2",
            "/e16", "/r0/items/1"]


def config(port: int, backend_port: int, rules: list[dict]) -> dict:
    return {"settings": {"access_log": {"enabled": False},
                         "limits": {"keepalive_timeout": "300s", "keepalive_requests": 100000}},
            "upstreams": [{"name": "backend", "servers": [{"address": "127.0.0.1", "port": backend_port}],
                           "pool": {"max_idle": 256, "max_requests": 100000, "idle_timeout": "300s"}}],
            "applications": [{"name": "rules", "domains": [HOST], "ports": [port], "rules": rules}]}


def main() -> int:
    args = comparison_args(__doc__)
    work, procs = workspace(args, "rules")
    try:
        backend_port = free_port()
        prefix = os.path.join(work, "backend")
        Nginx(procs, args.nginx, prefix, wl.nginx_backend(prefix, backend_port), backend_port, "backend nginx")
        requests = os.path.join(work, "requests.txt")
        with open(requests, "w") as handle:
            for path in targets():
                handle.write(wl.raw_request(HOST, path).decode("latin-1").replace("\r\n", "\\r\\n") + "\n")
        nodes = {}
        for label, rules in (("1 rule", [{"actions": [{"proxy": {"upstream": "backend"}}]}]),
                             (f"{RULES} rules", many_rules())):
            port = free_port()
            path = os.path.join(work, f"{label.replace(' ', '-')}.json")
            wl.write_json(path, config(port, backend_port, rules))
            nodes[label] = Edgeplane(procs, EDGEPLANE, path, port, None, os.path.join(work, f"{label}.log"), label)
        print(f"rules bench: wrk -t1 -c50 -d{args.duration:g}s x {args.rounds} rounds, {len(targets())} paths, "
              f"{RULES} rules with {REGEX_SHARE} regexes vs 1 rule", flush=True)
        medians = alternate_rounds(procs, nodes, os.path.join(HERE, "wrk", "mix.lua"), requests, args.duration,
                                   args.rounds)
        one, many = medians["1 rule"], medians[f"{RULES} rules"]
        print(f"  CPU per request: +{many[1] - one[1]:.1f} us for {RULES} rules")
        print(f"rules: e2e_ratio_1000_vs_1={many[0] / one[0]:.3f} cpu_ratio_1_vs_1000={one[1] / many[1]:.3f}")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

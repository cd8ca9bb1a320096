"""Match-phase cost of many rules: microseconds per request spent in `route()` alone.

One application of 10, 100 and 1,000 rules (30% regex conditions, the rest path prefixes,
exact paths and header tests), routed three ways: the rule index with the Hyperscan regex
engine, the rule index with the `re` engine, and every rule in turn (the linear baseline).
No network: requests are built beforehand, only `route(request, ops)` is timed. Prints the
median of several runs; the last line is machine-readable. `--profile` adds a cProfile of
the largest indexed run. Run with `.venv/bin/python bench/rules.py` (or `make bench-rules`).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]

import workload as wl  # noqa: E402

from edgeplane.lang import compile as rule_compiler  # noqa: E402
from edgeplane.lang import regexset  # noqa: E402
from edgeplane.model.config import Rule  # noqa: E402
from edgeplane.node.request import Request  # noqa: E402

SIZES = (10, 100, 1000)
REGEX_SHARE = 0.3
TARGET_US = 20.0  # per request at 1,000 rules, from the issue
# Path regexes as operators write them, each with a path it matches; {n} makes them a rule's own.
REGEX_FORMS = [
    (r"^/api/v[0-9]+/r{n}/items/[0-9]+$", "/api/v2/r{n}/items/4711"),
    (r"^/r{n}/(?:users|orders)/[^/]+$", "/r{n}/orders/A-1001"),
    (r"^/r{n}/\w+/\d+$", "/r{n}/invoices/2024"),
    (r"^/media/r{n}/.+\.(?:png|jpe?g|gif|webp)$", "/media/r{n}/2024/cat.jpeg"),
    (r"(?i)^/R{n}/Search", "/r{n}/search?q=shoes"),
    (r"^/r{n}/files/.*\.pdf$", "/r{n}/files/report.pdf"),
    (r"^/blog/r{n}/[0-9]{4}/[0-9]{2}/[a-z0-9-]+/?$", "/blog/r{n}/2024/05/hello-world/"),
    (r"^/r{n}/v[12]/", "/r{n}/v2/cart"),
    (r"^/shop/r{n}/[a-z]+-[0-9]+\.html$", "/shop/r{n}/shoe-42.html"),
]
LOOKAHEAD_FORM = (r"^/r{n}/(?!internal)", "/r{n}/public")  # one regex in 30: evaluated by `re`
UNROUTED = [("/catalog/shoes/4711?color=blue", []), ("/static/js/app.3f9c2b.min.js", []), ("/", [])]

Target = tuple[str, list[tuple[str, str]]]


def application(count: int) -> tuple[list[Rule], list[Target]]:
    """`count` rules in the proportions of the issue (30% regexes, then path prefixes, exact
    paths and header tests; each sets a header and proxies; the last is the default), and
    for each rule but the default a request it takes."""
    rules, examples, regexes = [], [], 0
    for index in range(count - 1):
        kind = index % 10
        if kind < 3:
            regex, path = LOOKAHEAD_FORM if regexes % 30 == 29 else REGEX_FORMS[regexes % len(REGEX_FORMS)]
            regexes += 1
            condition = {"var": "path", "op": "regex", "values": [regex.replace("{n}", str(index))]}
            example = (path.replace("{n}", str(index)), [])
        elif kind < 6:
            condition = {"var": "path", "op": "prefix", "values": [f"/p{index}/"]}
            example = (f"/p{index}/cart?item=7", [])
        elif kind < 8:
            condition = {"var": "path", "op": "eq", "values": [f"/e{index}"]}
            example = (f"/e{index}", [])
        else:
            condition = {"var": "header", "name": "X-Tenant", "op": "eq", "values": [f"t{index}"]}
            example = ("/catalog/shoes/4711?color=blue", [("X-Tenant", f"t{index}")])
        rules.append(Rule(name=f"rule-{index}", conditions=[condition],
                          actions=[{"set-request-header": {"name": "X-Rule", "value": str(index)}},
                                   {"proxy": {"upstream": "backend"}}]))
        examples.append(example)
    rules.append(Rule(name="default", actions=[{"proxy": {"upstream": "backend"}}]))
    return rules, examples


def request_mix(examples: list[Target], seed: int) -> list[Target]:
    """1,000 requests: three in four taken by a rule drawn uniformly, one in four by the default."""
    pick = random.Random(seed)
    return [pick.choice(examples) if pick.random() < 0.75 else pick.choice(UNROUTED) for _ in range(1000)]


def request(target: str, extra: list[tuple[str, str]]) -> Request:
    req = Request()
    req.method, req.host, req.client_ip = "GET", "www.bench.test", "10.1.2.3"
    req.headers = [(name.encode(), value.encode()) for name, value in [("Host", "www.bench.test")] + wl.BROWSER_HEADERS + extra]
    path, _, query = target.partition("?")
    req.set_target(path, query)
    return req


def compiled(rules: list[Rule], way: str) -> tuple[Callable, float]:
    """The route of `rules` built `way`, and how long compiling took (seconds)."""
    engine = regexset.HyperscanSet if way == "indexed, hyperscan" else regexset.RegexSet
    threshold = float("inf") if way == "linear" else 0
    start = time.perf_counter()
    with mock.patch.object(rule_compiler, "regex_set", engine), mock.patch.object(rule_compiler, "INDEX_THRESHOLD", threshold):
        route = rule_compiler.compile_rules(rules, {"backend": "BACKEND"})
    return route, time.perf_counter() - start


def timed(route: Callable, mix: list, count: int) -> float:
    """Microseconds per request over `count` fresh requests (built before the clock starts)."""
    requests = [request(*mix[i % len(mix)]) for i in range(count)]
    ops: list = []
    gc.collect()
    gc.disable()  # as timeit does: a collection of the prepared requests is not the route's cost
    try:
        start = time.perf_counter_ns()
        for req in requests:
            route(req, ops)
            ops.clear()
        return (time.perf_counter_ns() - start) / count / 1000
    finally:
        gc.enable()


def check_same_decisions(routes: dict[str, Callable], mix: list) -> None:
    """Every way must route every request of the mix to the same rule, or its numbers mean nothing."""
    for target in mix:
        labels = {way: route(request(*target), [])[0] for way, route in routes.items()}
        if len(set(labels.values())) != 1:
            raise SystemExit(f"routes disagree on {target}: {labels}")


def regex_stats(rules: list[Rule]) -> str:
    patterns = [(value, c.caseless, 1) for rule in rules for c in rule.conditions if c.op == "regex" for value in c.values]
    if regexset.hyperscan is None:
        return f"{len(patterns)} regexes, hyperscan not installed"
    engine = regexset.HyperscanSet(patterns)
    return (f"{len(patterns)} regexes; hyperscan hits re confirms: {len(engine.narrow.confirmed)} for Latin-1 "
            f"texts, {len(engine.wide.confirmed)} for wider ones; re on every call: {len(engine.narrow.searched)}, "
            f"{len(engine.wide.searched)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000, help="requests per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement; the median is reported")
    parser.add_argument("--profile", action="store_true", help="cProfile the indexed routes at the largest size")
    args = parser.parse_args()
    ways = (["indexed, hyperscan"] if regexset.hyperscan is not None else []) + ["indexed, re", "linear"]
    print(f"match phase: route() only, {args.requests} requests x {args.runs} runs, median us/request", flush=True)
    results: dict[tuple[int, str], float] = {}
    for size in SIZES:
        rules, examples = application(size)
        mix = request_mix(examples, seed=size)
        routes, compile_seconds = {}, {}
        for way in ways:
            routes[way], compile_seconds[way] = compiled(rules, way)
        check_same_decisions(routes, mix)
        print(f"  {size} rules ({regex_stats(rules)})")
        runs: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.runs):  # interleaved, so a slow moment of the machine hits every way
            for way in ways:
                runs[way].append(timed(routes[way], mix, args.requests))
        for way in ways:
            results[size, way] = statistics.median(runs[way])
            print(f"    {way:<20} {results[size, way]:>8.2f} us/req   (compile {compile_seconds[way] * 1000:.0f} ms)",
                  flush=True)
        if args.profile and size == SIZES[-1]:
            for way in ways[:-1]:
                profile(routes[way], mix, args.requests, way)
    best = results[SIZES[-1], ways[0]]
    verdict = "met" if best < TARGET_US else "missed"
    print(f"  target: < {TARGET_US:g} us/request at {SIZES[-1]} rules with {ways[0]}: {verdict}")
    print("rules: " + " ".join(f"{way.replace(', ', '_').replace(' ', '_')}_{size}={results[size, way]:.2f}"
                               for size in SIZES for way in ways))
    return 0


def profile(route: Callable, mix: list, count: int, way: str) -> None:
    requests = [request(*mix[i % len(mix)]) for i in range(count)]
    profiler = cProfile.Profile()
    profiler.enable()
    for req in requests:
        route(req, [])
    profiler.disable()
    print(f"\n  cProfile, {way}, {count} requests:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    sys.exit(main())

"""`edgeplane canary`: automated canaries as the admin runs them.

`list` shows every canary's phase and weight; `status NAME` its run, the current step's
figures (canary and stable, node by node) and its decisions with their reasons; `pause`,
`resume`, `promote` and `abort` are the operator's decisions (each kept with a note). The
canary objects themselves are written like any other (`edgeplane apply`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .cli_control import ago, table
from .sdk import Client

ACTIONS = ("pause", "resume", "promote", "abort")


def cmd_canary(args: argparse.Namespace, admin: Client) -> int:
    if args.action == "list":
        print(table([{**c, "weight": _weight(c["weight"]), "last": ago(c["last_decision"])} for c in admin.canary_runs()],
                    [("CANARY", "name"), ("PARTITION", "partition"), ("PHASE", "phase"), ("WEIGHT", "weight"),
                     ("RUN", "run"), ("FAILED CHECKS", "failed_checks"), ("LAST DECISION", "last")]), end="")
        return 0
    if not args.name:
        print(f"error: `edgeplane canary {args.action}` needs the canary's name")
        return 2
    if args.action == "status":
        status = admin.canary_status(args.name)
        print(json.dumps(status, indent=2) if args.json else status_text(status, args.decisions), end="\n" if
              args.json else "")
        return 0
    operate = {"pause": admin.pause_canary, "resume": admin.resume_canary, "promote": admin.promote_canary,
               "abort": admin.abort_canary}[args.action]
    status = operate(args.name, args.message or "")
    decision = status["decisions"][0]
    print(f"canary {args.name}: {decision['action']} → {status['run']['phase']}, weight {decision['weight_to']} %"
          + (f" (release {decision['release']})" if decision["release"] else ""))
    return 0


def _weight(weight: int | None) -> str:
    return "-" if weight is None else f"{weight} %"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f} %"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


def _duration(value: float | str) -> str:
    """A duration as the spec's JSON has it: seconds, or text such as 250ms."""
    return f"{value:g}s" if isinstance(value, (int, float)) else value


def figures_text(side: dict) -> str:
    return f"{side['upstream']}: {side['requests']} requests, success {_rate(side['success_rate'])}, " \
           f"p50 {_ms(side['p50_ms'])}, p99 {_ms(side['p99_ms'])}"


def status_text(status: dict, shown: int) -> str:
    spec, run = status["spec"], status["run"]
    lines = [f"canary {status['name']} (partition {status['partition']}): "
             + (f"{run['phase']}, run {run['run']}, weight {_weight(status['released_weight'])}" if run
                else "not running: release its partition to start it")]
    if spec:
        p99 = f", p99 ≤ {_duration(spec['max_p99'])}" if spec.get("max_p99") is not None else ""
        lines.append(f"  rule {spec['rule']!r} of application {spec['application']}: {spec['stable']} (stable) → "
                     f"{spec['canary']} (canary)")
        lines.append(f"  steps of {spec.get('step_weight', 10)} % up to {spec.get('max_weight', 50)} %, every "
                     f"{_duration(spec.get('interval', 60))}; success rate ≥ "
                     f"{_rate(spec.get('min_success_rate', 0.99))}{p99}, "
                     f"≥ {spec.get('min_requests', 100)} requests per check; rolled back after "
                     f"{spec.get('max_failed_checks', 2)} failed checks")
    if status["pending_spec_change"]:
        lines.append("  (the draft changes this canary: it takes effect, as a new run, when released)")
    if run:
        driving = f"; next check in {max(run['next_check_at'] - time.time(), 0):.0f}s, driven by admin " \
                  f"{run['leader']}" if run["phase"] == "progressing" else ""
        lines.append(f"  failed checks {run['failed_checks']}{driving}")
    figures = status["figures"]
    if figures:
        lines.append(f"current step, the last {figures['window']['seconds']:.0f}s:")
        lines.append(f"  canary {figures_text(figures['canary'])}")
        lines.append(f"  stable {figures_text(figures['stable'])}")
        lines.append("  nodes: " + (", ".join(_node(n) for n in figures["nodes"]) or "none approved"))
    decisions = status["decisions"][:shown]
    if decisions:
        lines.append("")
        rows = [{**d, "when": ago(d["at"]), "weight": f"{d['weight_from']} → {d['weight_to']} %",
                 "canary": _short(d["figures"].get("canary")), "reason": d["reasons"][0]} for d in decisions]
        lines.append(table(rows, [("WHEN", "when"), ("ACTION", "action"), ("WEIGHT", "weight"), ("RELEASE", "release"),
                                  ("BY", "actor"), ("CANARY REQ/SUCCESS/P99", "canary"), ("REASON", "reason")]).rstrip())
        lines.append(f"latest decision ({decisions[0]['action']}), every reason:")
        lines += [f"  - {reason}" for reason in decisions[0]["reasons"]]
    return "\n".join(lines) + "\n"


def _node(node: dict) -> str:
    age = f", {node['last_report_age_s']}s ago" if node["last_report_age_s"] is not None else ""
    return f"{node['name']} {node['state']} ({node['reports']} reports{age}, release {node['version']})"


def _short(side: dict[str, Any] | None) -> str:
    if not side:
        return "-"
    return f"{side['requests']} / {_rate(side['success_rate'])} / {_ms(side['p99_ms'])}"


def add_command(connected: Any) -> None:
    canary = connected("canary", "automated canaries: list, status NAME, pause/resume/promote/abort NAME", cmd_canary)
    canary.add_argument("action", nargs="?", choices=("list", "status", *ACTIONS), default="list")
    canary.add_argument("name", nargs="?", help="the canary")
    canary.add_argument("-m", "--message", help="a note kept with the operator's decision")
    canary.add_argument("--json", action="store_true", help="status: the whole answer as JSON")
    canary.add_argument("--decisions", type=int, default=10, help="status: how many decisions to show (default 10)")

"""The canary controller: in the admin, it drives each released Canary through its steps.

A canary's run lives in the store (`canary_runs`: phase, weight, failed checks, when the
step's window began), and every decision, automatic or an operator's, is a row of
`canary_decisions` with its reasons and the figures behind them. A step is a release made
by `Releases.release_controlled`: the partition's last release plus the canary's weight,
nothing else. State is in the store, never only in memory, so a restarted admin goes on
where the run was; with several admins on one store one holds the canary's lease (a row
update that succeeds only when the lease is free or its own), and a decision is written,
under the draft lock, only if the run is still at the revision it was judged at.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, func, or_, select

from ..model.config import Canary, CanaryWeight
from ..model.kinds import canonical
from . import schema
from .draft import Conflict, Edit, NotFound
from .nodes import Nodes
from .releases import Releases
from .traffic import Series, TrafficReports, Window

TICK = 0.25  # seconds between two looks at every canary
LEASE = 6.0  # seconds an admin drives a canary without renewing its lease
REPORT_IDLE = 15.0  # seconds between nodes' traffic reports when no canary runs in their partition
REPORT_MIN, REPORT_MAX = 0.5, 5.0  # ... and the bounds while one does (a quarter of its interval)
DECISIONS_SHOWN = 50

RELEASED = ("progressing", "paused", "promoted")  # phases in which the canary's weight is released
# What an operator may do in which phase, and the phase it leads to (anything else is refused).
OPERATOR_ACTIONS: dict[str, dict[str, str]] = {
    "pause": {"progressing": "paused"},
    "resume": {"paused": "progressing", "rolled_back": "progressing", "aborted": "progressing"},
    "promote": {"progressing": "promoted", "paused": "promoted"},
    "abort": {"progressing": "aborted", "paused": "aborted", "promoted": "aborted"},
}


def log(text: str) -> None:
    print(f"edgeplane admin: {text}", file=sys.stderr, flush=True)


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f} %"


# --- the verdict of a check: pure, testable without a store -------------------------------


@dataclass(frozen=True)
class Verdict:
    action: str  # advance, promote, hold, rollback, wait
    weight: int  # the canary's weight after it
    crossed: tuple[str, ...]  # the thresholds the figures crossed
    reasons: tuple[str, ...]


def judge(spec: Canary, weight: int, failed_checks: int, canary: Series) -> Verdict:
    """What a check of the canary's figures over one step decides."""
    figures = canary.summary()
    crossed, reasons = [], []
    if canary.requests < spec.min_requests:
        best = 1 - canary.failures / spec.min_requests  # had every request still missing succeeded
        if best >= spec.min_success_rate:
            return Verdict("wait", weight, (), (
                f"{canary.requests} canary request(s) in the window, min_requests is {spec.min_requests}: "
                "no verdict yet; the window goes on",))
        crossed.append("min_success_rate")
        reasons.append(f"{canary.failures} of {canary.requests} canary answers were 500 or more: even if the "
                       f"next {spec.min_requests - canary.requests} succeeded, the success rate would be "
                       f"{percent(best)}, below min_success_rate {percent(spec.min_success_rate)}")
        return _failed(spec, weight, failed_checks, crossed, reasons)
    rate = figures["success_rate"]
    if rate < spec.min_success_rate:
        crossed.append("min_success_rate")
        reasons.append(f"success rate {percent(rate)} is below min_success_rate {percent(spec.min_success_rate)} "
                       f"({canary.failures} of {canary.requests} canary answers were 500 or more)")
    else:
        reasons.append(f"success rate {percent(rate)} meets min_success_rate {percent(spec.min_success_rate)}")
    if spec.max_p99 is not None:
        p99 = canary.quantile_ms(0.99)
        limit = spec.max_p99 * 1000
        if p99 > limit:
            crossed.append("max_p99")
            shown = "beyond the last bucket" if p99 == float("inf") else f"{p99:g} ms"
            reasons.append(f"p99 {shown} is above max_p99 {limit:g} ms")
        else:
            reasons.append(f"p99 {p99:g} ms is within max_p99 {limit:g} ms")
    if crossed:
        return _failed(spec, weight, failed_checks, crossed, reasons)
    if weight >= spec.max_weight:
        return Verdict("promote", 100, (), (*reasons, (
            f"weight {weight} % had reached max_weight {spec.max_weight} %: promoted, all of the traffic to "
            f"{spec.canary}")))
    after = min(weight + spec.step_weight, spec.max_weight)
    return Verdict("advance", after, (), (*reasons, f"weight {weight} → {after} %"))


def _failed(spec: Canary, weight: int, failed_checks: int, crossed: list[str], reasons: list[str]) -> Verdict:
    failed = failed_checks + 1
    if failed >= spec.max_failed_checks:
        return Verdict("rollback", 0, tuple(crossed), (*reasons, (
            f"failed checks: {failed} of max_failed_checks {spec.max_failed_checks}: rolled back, "
            f"all of the traffic to {spec.stable}")))
    return Verdict("hold", weight, tuple(crossed), (*reasons, (
        f"failed checks: {failed} of max_failed_checks {spec.max_failed_checks}: the weight stays "
        f"{weight} %, a new window starts")))


def thresholds(spec: Canary) -> dict:
    return {"min_success_rate": spec.min_success_rate,
            "max_p99_ms": spec.max_p99 * 1000 if spec.max_p99 is not None else None,
            "min_requests": spec.min_requests, "max_failed_checks": spec.max_failed_checks,
            "step_weight": spec.step_weight, "max_weight": spec.max_weight, "interval_s": spec.interval}


def report_every(spec: Canary) -> float:
    """How often the nodes of a canary's partition report while it runs."""
    return min(max(spec.interval / 4, REPORT_MIN), REPORT_MAX)


# --- what the latest releases say ---------------------------------------------------------


@dataclass(frozen=True)
class Released:
    """A canary as its partition's latest release has it."""

    partition: str
    version: int  # the partition's latest release
    spec: Canary | None
    spec_hash: str | None
    weight: int | None  # None: no weight released (the rule routes as written)


class Canaries:
    def __init__(self, releases: Releases, nodes: Nodes, identity: str | None = None):
        self.releases = releases
        self.nodes = nodes
        self.store = releases.store
        self.traffic = TrafficReports()
        self.me = identity or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.parsed: dict[str, Any] = {}  # blob hash → Canary / CanaryWeight
        self.manifests: dict[str, tuple[int, dict, dict]] = {}  # partition → its latest release's canaries
        self.pruned = 0.0

    # --- reading -----------------------------------------------------------------------

    def released(self, connection: Connection) -> dict[str, Released]:
        table = schema.releases
        latest = connection.execute(select(table.c.partition, func.max(table.c.version))
                                    .group_by(table.c.partition)).all()
        found: dict[str, Released] = {}
        for partition, version in latest:
            specs, weights = self.canaries_in(connection, partition, version)
            for name in {*specs, *weights}:
                spec = self.parsed[specs[name]] if name in specs else None
                weight = self.parsed[weights[name]].weight if name in weights else None
                seen = Released(partition, version, spec, specs.get(name), weight)
                if name not in found or (spec is not None, version) > (found[name].spec is not None,
                                                                        found[name].version):
                    found[name] = seen
        return found

    def canaries_in(self, connection: Connection, partition: str, version: int) -> tuple[dict, dict]:
        """(name → hash of the spec, name → hash of the weight) in a release; releases never
        change, so each partition's latest is read once."""
        cached = self.manifests.get(partition)
        if cached is None or cached[0] != version:
            manifest = orjson.loads(self.releases.get(connection, version).manifest)
            specs, weights = manifest.get("canaries", {}), manifest.get("canary_weights", {})
            self.parse(connection, Canary, list(specs.values()))
            self.parse(connection, CanaryWeight, list(weights.values()))
            cached = self.manifests[partition] = (version, specs, weights)
        return cached[1], cached[2]

    def parse(self, connection: Connection, model: type, hashes: list[str]) -> None:
        missing = [h for h in hashes if h not in self.parsed]
        for digest, data in self.releases.blobs(connection, missing).items():
            self.parsed[digest] = model.model_validate(data)

    def runs(self, connection: Connection) -> dict[str, Any]:
        return {row.name: row for row in connection.execute(select(schema.canary_runs))}

    def released_weight(self, connection: Connection, partition: str, name: str) -> int | None:
        latest = self.releases.latest(connection, partition)
        if latest is None:
            return None
        digest = self.canaries_in(connection, partition, latest.version)[1].get(name)
        return self.parsed[digest].weight if digest is not None else None

    def report_interval(self, partition: str) -> float:
        """How often the partition's nodes report: often while its latest release has a canary
        weight (the release that starts a canary makes its nodes report at once, and they
        learn this from the answer), rarely otherwise."""
        with self.store.reading() as connection:
            latest = self.releases.latest(connection, partition)
            if latest is None:
                return REPORT_IDLE
            specs, weights = self.canaries_in(connection, partition, latest.version)
        return min([report_every(self.parsed[specs[n]]) for n in weights if n in specs], default=REPORT_IDLE)

    # --- the controller ----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception as error:  # a database hiccup must not stop the controller
                log(f"canary controller: {type(error).__name__}: {error}")
            await asyncio.sleep(TICK)

    def tick(self, now: float | None = None) -> None:
        now = now or time.time()
        with self.store.reading() as connection:
            released, runs = self.released(connection), self.runs(connection)
        for name in sorted({*released, *runs}):
            try:
                self.drive(name, released.get(name), runs.get(name), now)
            except Exception as error:  # one canary's trouble must not stop the others
                log(f"canary {name}: {type(error).__name__}: {error}")
        if now - self.pruned > 60:
            self.prune(runs, now)

    def drive(self, name: str, seen: Released | None, run: Any, now: float) -> None:
        spec = seen.spec if seen is not None else None
        if run is None:
            if spec is not None:
                self.start(name, seen, None, now, f"canary {name} was released (release {seen.version})")
            return
        due = self.due(seen, run, now)
        if due is None and run.phase != "progressing":
            return
        if not self.leads(run, now) or due is None:
            return
        if due == "remove":
            self.remove(run, seen, now)
        elif due == "restart":
            self.start(name, seen, run, now, f"the canary's spec changed in release {seen.version}: a new run")
        elif due == "follow":
            self.follow(run, seen, now)
        else:
            self.check(run, seen, now)

    def due(self, seen: Released | None, run: Any, now: float) -> str | None:
        if seen is None or seen.spec is None:
            return "remove"
        if seen.spec_hash != run.spec_hash:
            return "restart"
        if seen.weight != (run.weight if run.phase in RELEASED else None):
            return "follow"
        if run.phase == "progressing" and now >= run.next_check_at:
            return "check"
        return None

    def leads(self, run: Any, now: float) -> bool:
        """Hold (or renew) the canary's lease; False while another admin holds it."""
        if run.leader == self.me and run.lease_until - now > LEASE / 2:
            return True
        if run.leader not in (None, self.me) and run.lease_until >= now:
            return False
        table = schema.canary_runs
        with self.store.transaction() as connection:
            taken = connection.execute(table.update().where(
                table.c.name == run.name,
                or_(table.c.leader == self.me, table.c.leader.is_(None), table.c.lease_until < now),
            ).values(leader=self.me, lease_until=now + LEASE)).rowcount
        if taken and run.leader != self.me:
            log(f"canary {run.name}: driven by this admin ({self.me}) from now on (lease of {run.leader} expired)")
        return bool(taken)

    # --- decisions -----------------------------------------------------------------------

    def start(self, name: str, seen: Released, run: Any, now: float, why: str, actor: str = "controller") -> None:
        spec = seen.spec
        number = (run.run if run is not None else self.last_run(name)) + 1
        values = {"name": name, "partition": seen.partition, "run": number, "spec_hash": seen.spec_hash,
                  "phase": "progressing", "weight": spec.step_weight, "failed_checks": 0, "step_started_at": now,
                  "next_check_at": now + spec.interval, "leader": self.me, "lease_until": now + LEASE}
        reasons = [why, f"run {number} starts: {spec.step_weight} % of rule {spec.rule!r} of application "
                        f"{spec.application!r} to {spec.canary}; first check in {spec.interval:g}s"]
        self.commit(run, values, name, actor, "start" if actor == "controller" else "resume", reasons,
                    {"thresholds": thresholds(spec)}, seen.weight, automatic=actor == "controller")

    def remove(self, run: Any, seen: Released | None, now: float) -> None:
        where = f"release {seen.version}" if seen is not None else "the latest release"
        reasons = [f"canary {run.name} is no longer in {where} of partition {run.partition}: "
                   "its weight leaves the release; the rule routes as written"]
        self.commit(run, None, run.name, "controller", "remove", reasons, {}, seen.weight if seen else None)

    def follow(self, run: Any, seen: Released, now: float) -> None:
        """A release the controller did not make (a rollback, ...) changed the canary's weight:
        the release is the truth; the run takes its weight and stops."""
        with self.store.reading() as connection:
            release = self.releases.get(connection, seen.version)
        phase = "paused" if seen.weight is not None else "aborted"
        by = f"release {release.version} by {release.actor}" + (f" ({release.note})" if release.note else "")
        then = "goes on from the released weight" if seen.weight is not None else "starts a new run"
        reasons = [f"{by} set the canary's weight to {seen.weight if seen.weight is not None else 'none'} "
                   f"(the controller had released {run.weight if run.phase in RELEASED else 'none'}): the run is "
                   f"{phase}; `edgeplane canary resume {run.name}` {then}"]
        values = {"phase": phase, "weight": seen.weight or 0, "step_started_at": now}
        self.commit(run, values, run.name, "controller", "follow", reasons, {}, seen.weight)

    def check(self, run: Any, seen: Released, now: float) -> None:
        spec = seen.spec
        figures, window = self.figures(spec, run, now)
        verdict = judge(spec, run.weight, run.failed_checks, window.series(spec.canary))
        figures["crossed"] = list(verdict.crossed)
        reasons = [*verdict.reasons, *self.node_reasons(figures["nodes"])]
        values: dict[str, Any] = {"next_check_at": now + spec.interval}
        if verdict.action != "wait":
            values.update(step_started_at=now, weight=verdict.weight,
                          failed_checks=run.failed_checks + (1 if verdict.crossed else 0))
        if verdict.action == "rollback":
            values["phase"] = "rolled_back"
        elif verdict.action == "promote":
            values["phase"] = "promoted"
        self.commit(run, values, run.name, "controller", verdict.action, reasons, figures, seen.weight)

    def operate(self, who: str, name: str, action: str, note: str = "") -> dict:
        """An operator's pause, resume, promote or abort."""
        now = time.time()
        with self.store.reading() as connection:
            run = self.runs(connection).get(name)
            seen = self.released(connection).get(name)
        if run is None or seen is None or seen.spec is None:
            raise NotFound(f"canary {name!r} is not running: create it, then release its partition")
        target = OPERATOR_ACTIONS[action].get(run.phase)
        if target is None:
            allowed = ", ".join(OPERATOR_ACTIONS[action])
            raise Conflict(f"cannot {action} canary {name!r}: it is {run.phase}; {action} applies when it is {allowed}")
        reasons = [f"{action} by {who}" + (f": {note}" if note else "")]
        if action == "resume" and run.phase not in RELEASED:
            self.start(name, seen, run, now, reasons[0], actor=who)
            return self.view(name)
        spec = seen.spec
        weight = {"promoted": 100, "aborted": 0}.get(target, run.weight)
        values = {"phase": target, "weight": weight, "step_started_at": now, "next_check_at": now + spec.interval}
        figures, _ = self.figures(spec, run, now)
        reasons.append({"pause": f"the weight stays {weight} %; no checks until resumed",
                        "resume": f"checks go on from {weight} %; next in {spec.interval:g}s",
                        "promote": f"all of the traffic to {spec.canary}",
                        "abort": f"all of the traffic to {spec.stable}; the rule routes as written"}[action])
        if not self.commit(run, values, name, who, action, reasons, figures, seen.weight, automatic=False):
            raise Conflict(f"canary {name!r} changed while {action} was being decided; try again")
        return self.view(name)

    def commit(self, run: Any, values: dict | None, name: str, actor: str, action: str, reasons: list[str],
               figures: dict, released_weight: int | None, automatic: bool = True) -> bool:
        """Write one decision — the run's new values (None: the run ends), the decision row and,
        when the weight changes, a release — in one transaction under the draft lock; only
        if the run and the released weight are still what the decision was taken on."""
        now = time.time()
        table = schema.canary_runs
        partition = values["partition"] if run is None else run.partition
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            current = connection.execute(select(table).where(table.c.name == name)).first()
            if run is None:
                stale = current is not None
            else:
                stale = (current is None or current.revision != run.revision
                         or (automatic and current.leader != self.me))
            if stale or self.released_weight(connection, partition, name) != released_weight:
                return False
            phase = (values or {}).get("phase", run.phase if run is not None else "")
            weight = (values or {}).get("weight", run.weight if run is not None else 0)
            after = weight if values is not None and phase in RELEASED else None
            release = None
            if after != released_weight:
                note = f"canary {name}: {action}, weight {released_weight or 0} → {after or 0} %"
                edit = Edit("canary_weights", name, CanaryWeight(name=name, partitions=[partition], weight=after)
                            if after is not None else None)
                who = f"canary:{name}" if automatic else actor
                release = self.releases.release_controlled(connection, who, partition, note, [edit])["version"]
            if values is None:
                connection.execute(table.delete().where(table.c.name == name))
            elif run is None:
                connection.execute(table.insert().values(**values, release=release, revision=1, updated_at=now))
            else:
                connection.execute(table.update().where(table.c.name == name).values(
                    **values, release=release or run.release, revision=run.revision + 1, updated_at=now))
            connection.execute(schema.canary_decisions.insert().values(
                canary=name, run=(values or {}).get("run", run.run if run is not None else 0), at=now, actor=actor,
                admin=self.me, action=action, phase=phase if values is not None else "removed",
                weight_from=released_weight or 0, weight_to=after or 0, release=release,
                reasons=orjson.dumps(reasons).decode(), figures=orjson.dumps(figures).decode()))
        log(f"canary {name}: {action} by {actor}, weight {released_weight or 0} → {after or 0} %"
            + (f" (release {release})" if release else "") + f": {reasons[0]}")
        if release is not None:
            self.releases.on_release(partition, release)
        return True

    def last_run(self, name: str) -> int:
        with self.store.reading() as connection:
            return connection.execute(select(func.coalesce(func.max(schema.canary_decisions.c.run), 0))
                                      .where(schema.canary_decisions.c.canary == name)).scalar_one()

    # --- figures -------------------------------------------------------------------------

    def figures(self, spec: Canary, run: Any, now: float) -> tuple[dict, Window]:
        """The current step's figures: the canary's and the stable's, and each node's part."""
        with self.store.reading() as connection:
            window = self.traffic.window(connection, run.partition, run.step_started_at, now)
            last = self.traffic.last_reports(connection, run.partition)
        nodes = self.node_view(run, window, last, now)
        return {"window": {"from": run.step_started_at, "to": now, "seconds": round(now - run.step_started_at, 3)},
                "canary": {"upstream": spec.canary, **window.series(spec.canary).summary()},
                "stable": {"upstream": spec.stable, **window.series(spec.stable).summary()},
                "thresholds": thresholds(spec), "failed_checks": run.failed_checks, "weight": run.weight,
                "nodes": nodes}, window

    def node_view(self, run: Any, window: Window, last: dict[str, float], now: float) -> list[dict]:
        stale_after = max(3 * self.report_interval(run.partition), 3.0)
        view = []
        for node in self.nodes.listing():
            if node["partition"] != run.partition or node["state"] != "approved":
                continue
            seen = window.nodes.get(node["name"], {})
            age = now - last[node["name"]] if node["name"] in last else None
            state = ("never" if age is None else "stale" if age > stale_after
                     else "reporting" if seen.get("reports") else "silent")
            view.append({"name": node["name"], "state": state, "reports": seen.get("reports", 0),
                         "requests": seen.get("requests", {}),
                         "last_report_age_s": round(age, 1) if age is not None else None,
                         "version": node["version"],
                         "on_step_release": run.release is not None and node["version"] >= run.release})
        return view

    def node_reasons(self, nodes: list[dict]) -> list[str]:
        reasons = []
        for node in nodes:
            if node["state"] == "never":
                reasons.append(f"node {node['name']} has sent no traffic report: its traffic is not in these figures")
            elif node["state"] == "stale":
                reasons.append(f"node {node['name']} last reported {node['last_report_age_s']}s ago (stale): "
                               "its latest traffic is not in these figures")
            if not node["on_step_release"]:
                reasons.append(f"node {node['name']} runs release {node['version']}, not yet this step's")
        if nodes and all(n["state"] in ("never", "stale") for n in nodes):
            reasons.append("no node of the partition reported in this window")
        return reasons

    def prune(self, runs: dict[str, Any], now: float) -> None:
        starts = [r.step_started_at for r in runs.values() if r.phase in ("progressing", "paused")]
        with self.store.transaction() as connection:
            self.traffic.prune(connection, min([now - 600, *starts]))
        self.pruned = now

    def record_report(self, node: Any, partition: str, seconds: float, upstreams: dict) -> float:
        """A node's traffic report; returns when it should send the next."""
        with self.store.transaction() as connection:
            self.traffic.record(connection, node.name, partition, seconds, upstreams)
        return self.report_interval(partition)

    # --- views ---------------------------------------------------------------------------

    def decisions(self, name: str, limit: int = DECISIONS_SHOWN) -> list[dict]:
        table = schema.canary_decisions
        with self.store.reading() as connection:
            rows = connection.execute(select(table).where(table.c.canary == name)
                                      .order_by(table.c.id.desc()).limit(limit)).all()
        return [{**row._mapping, "reasons": orjson.loads(row.reasons), "figures": orjson.loads(row.figures)}
                for row in rows]

    def partition_of(self, name: str) -> str:
        """The partition of a canary: as released, else as drafted."""
        with self.store.reading() as connection:
            seen = self.released(connection).get(name)
            if seen is not None:
                return seen.partition
            stored = self.releases.draft.load(connection).get(("canaries", name))
        if stored is None:
            raise NotFound(f"no canary named {name!r}")
        return stored.instance.partitions[0]

    def view(self, name: str) -> dict:
        now = time.time()
        with self.store.reading() as connection:
            seen = self.released(connection).get(name)
            run = self.runs(connection).get(name)
            drafted = self.releases.draft.load(connection).get(("canaries", name))
        if seen is None and run is None and drafted is None:
            raise NotFound(f"no canary named {name!r}")
        spec = seen.spec if seen is not None and seen.spec is not None else drafted.instance if drafted else None
        out: dict[str, Any] = {
            "name": name, "partition": spec.partitions[0] if spec else run.partition,
            "spec": orjson.loads(canonical(spec)) if spec is not None else None,
            "released": seen is not None and seen.spec is not None,
            "pending_spec_change": drafted is not None and seen is not None and seen.spec_hash != drafted.hash,
            "released_weight": seen.weight if seen is not None else None,
            "run": None, "figures": None,
        }
        if run is not None:
            out["run"] = {k: run._mapping[k] for k in ("run", "phase", "weight", "failed_checks", "step_started_at",
                                                       "next_check_at", "release", "leader", "lease_until",
                                                       "updated_at")}
            out["run"]["lease_held"] = run.lease_until is not None and run.lease_until > now
            if seen is not None and seen.spec is not None and run.phase in ("progressing", "paused"):
                out["figures"] = self.figures(seen.spec, run, now)[0]
        out["decisions"] = self.decisions(name)
        return out

    def listing(self) -> list[dict]:
        with self.store.reading() as connection:
            released, runs = self.released(connection), self.runs(connection)
            drafted = {n: s.instance for (k, n), s in self.releases.draft.load(connection).items() if k == "canaries"}
            last = dict(connection.execute(select(schema.canary_decisions.c.canary, func.max(schema.canary_decisions.c.at))
                                           .group_by(schema.canary_decisions.c.canary)).all())
        items = []
        for name in sorted({*released, *runs, *drafted}):
            run, seen = runs.get(name), released.get(name)
            items.append({"name": name, "partition": run.partition if run is not None else
                          seen.partition if seen is not None else drafted[name].partitions[0],
                          "phase": run.phase if run is not None else "not released",
                          "weight": seen.weight if seen is not None else None,
                          "failed_checks": run.failed_checks if run is not None else None,
                          "run": run.run if run is not None else None, "last_decision": last.get(name)})
        return items

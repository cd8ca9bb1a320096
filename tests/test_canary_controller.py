"""The canary controller on its own clock: an admin in this process whose controller is
ticked by the test with the time it chooses, fed traffic reports as nodes would send them.

Each step is a release that is the last release plus the canary's weight only; checks
advance, hold, wait, roll back or promote with their reasons and figures; operators pause,
resume, promote and abort; a release the controller did not make stops the run; who may do
what. (End to end with real nodes: test_canary_rollout.py.)
"""

from __future__ import annotations

import os
import time

import pytest

from edgeplane.admin.canary import judge
from edgeplane.admin.traffic import Series
from edgeplane.model.config import Canary

from admin_harness import TOKEN, sdk_on, store_for

SPEC = {"name": "orders", "application": "shop", "rule": "orders", "stable": "orders-v1", "canary": "orders-v2",
        "step_weight": 25, "max_weight": 50, "interval": "10s", "min_success_rate": 0.95, "max_p99": "200ms",
        "min_requests": 20, "max_failed_checks": 2, "match": [{"var": "header", "name": "X-Canary-User", "op": "exists"}]}
BOTH = pytest.mark.parametrize("controlled", ["sqlite", "postgresql"], indirect=True)  # where the store matters


@pytest.fixture
def controlled(request, tmp_path):
    """(Admin, SDK as the bootstrap admin) on SQLite unless parametrized: the app's lifespan
    is not run, so nothing ticks the controller but the test."""
    from fastapi.testclient import TestClient

    from edgeplane.admin.api import create_app
    from edgeplane.admin.service import BOOTSTRAP_TOKEN_ENV, Admin
    store, cleanup = store_for(getattr(request, "param", "sqlite"), tmp_path)
    os.environ[BOOTSTRAP_TOKEN_ENV] = TOKEN
    try:
        service = Admin(store, tmp_path / "admin")
        service.start(announce=lambda _text: None)
    finally:
        del os.environ[BOOTSTRAP_TOKEN_ENV]
    client = TestClient(create_app(service), headers={"Authorization": f"Bearer {TOKEN}"})
    yield service, sdk_on(client)
    service.close()
    cleanup()


def shop(sdk, **spec) -> None:
    for name in ("orders-v1", "orders-v2"):
        sdk.create("upstreams", {"name": name, "servers": [{"address": "127.0.0.1", "port": 9}]})
    sdk.create("applications", {"name": "shop", "domains": ["shop.example"], "rules": [
        {"name": "orders", "actions": [{"proxy": {"upstream": "orders-v1"}}]}]})
    sdk.create("canaries", {**SPEC, **spec})


def started(service, sdk, **spec) -> float:
    """The shop with its canary released, and the controller's first tick (the start): its time."""
    shop(sdk, **spec)
    sdk.release()
    now = time.time()
    service.canaries.tick(now)
    return now


def report(service, at: float, canary: tuple[int, int], stable: tuple[int, int] = (100, 0), node: str = "n1",
           slow: bool = False) -> None:
    bucket = "1000.0" if slow else "12.4"
    upstreams = {"orders-v2": {"requests": canary[0], "failures": canary[1], "buckets_ms": {bucket: canary[0]}},
                 "orders-v1": {"requests": stable[0], "failures": stable[1], "buckets_ms": {"12.4": stable[0]}}}
    with service.store.transaction() as connection:
        service.canaries.traffic.record(connection, node, "default", 1.0, upstreams, at=at)


def weight(sdk, version: int | None = None) -> int | None:
    version = version or sdk.releases(limit=1)[0]["version"]
    weights = sdk.release_snapshot(version)["config"].get("canary_weights", [])
    return weights[0]["weight"] if weights else None


def test_a_check_names_the_threshold_it_crossed_and_rolls_back_after_max_failed_checks():
    spec = Canary.model_validate(SPEC)
    failing = Series(100, 20, {"12.4": 100})
    held = judge(spec, 25, 0, failing)
    assert (held.action, held.weight, held.crossed) == ("hold", 25, ("min_success_rate",))
    assert "success rate 80.00 % is below min_success_rate 95.00 % (20 of 100" in held.reasons[0]
    rolled = judge(spec, 25, 1, failing)
    assert (rolled.action, rolled.weight) == ("rollback", 0) and "rolled back" in rolled.reasons[-1]
    slow = judge(spec, 25, 0, Series(100, 0, {"12.4": 90, "248.8": 10}))
    assert slow.crossed == ("max_p99",) and "p99 248.8 ms is above max_p99 200 ms" in slow.reasons[1]
    assert judge(spec, 25, 0, Series(19, 1, {"12.4": 19})).action == "wait", "19 of 20 could still pass 95 %"
    early = judge(spec, 25, 0, Series(10, 5, {"12.4": 10}))
    assert (early.action, early.crossed) == ("hold", ("min_success_rate",)), "no wait when the verdict is certain"
    assert "even if the next 10 succeeded, the success rate would be 75.00 %" in early.reasons[0]
    assert (judge(spec, 25, 0, Series(100, 1, {"12.4": 100})).action, judge(spec, 50, 0, Series(100, 1, {"12.4": 100})
                                                                          ).weight) == ("advance", 100)


@BOTH
def test_a_step_releases_the_last_release_plus_the_weight_and_pending_changes_stay_pending(controlled):
    service, sdk = controlled
    shop(sdk)
    human = sdk.release(note="canary orders")["version"]
    sdk.create("upstreams", {"name": "pending", "servers": [{"address": "127.0.0.1", "port": 10}]})
    now = time.time()
    service.canaries.tick(now)
    step = sdk.releases(limit=1)[0]
    assert step["version"] == human + 1 and step["actor"] == "canary:orders"
    changes = sdk.diff(old=human, new=step["version"])["changes"]
    assert [(c["op"], c["kind"], c["name"]) for c in changes] == [("create", "canary_weights", "orders")]
    assert weight(sdk) == 25
    assert [c["name"] for c in sdk.pending()["changes"]] == ["pending"]
    assert [(c["kind"], c["name"]) for c in sdk.pending()["diff"]] == [("upstreams", "pending")]
    report(service, now + 5, (40, 0))
    service.canaries.tick(now + 10)
    assert weight(sdk) == 50 and [c["name"] for c in sdk.pending()["changes"]] == ["pending"]
    assert "pending" not in {u["name"] for u in sdk.release_snapshot(sdk.releases(limit=1)[0]["version"])
                             ["config"]["upstreams"]}
    released = sdk.release(note="the human's change")["version"]
    assert weight(sdk, released) == 50 and sdk.pending()["changes"] == []


def test_failed_checks_roll_back_with_the_figures_and_the_threshold_recorded(controlled):
    service, sdk = controlled
    now = started(service, sdk)
    report(service, now + 5, (50, 10))
    service.canaries.tick(now + 10)
    report(service, now + 15, (50, 10))
    service.canaries.tick(now + 20)
    status = sdk.canary_status("orders")
    assert status["run"]["phase"] == "rolled_back" and status["released_weight"] is None
    assert weight(sdk) is None, "the weight left the release: the rule routes to stable as written"
    rollback, hold, start = status["decisions"][:3]
    assert [d["action"] for d in (rollback, hold, start)] == ["rollback", "hold", "start"]
    assert rollback["figures"]["crossed"] == ["min_success_rate"] and rollback["weight_to"] == 0
    assert rollback["figures"]["canary"] == {"upstream": "orders-v2", "requests": 50, "failures": 10,
                                             "success_rate": 0.8, "p50_ms": 12.4, "p99_ms": 12.4,
                                             "p99_beyond_last_bucket": False}
    assert rollback["figures"]["thresholds"]["min_success_rate"] == 0.95
    assert "below min_success_rate" in rollback["reasons"][0] and rollback["release"] == sdk.releases()[0]["version"]
    service.canaries.tick(now + 40)
    assert len(sdk.canary_decisions("orders")) == 3, "a rolled-back canary is left alone"


def test_a_healthy_canary_advances_each_interval_and_is_promoted(controlled):
    service, sdk = controlled
    now = started(service, sdk, step_weight=20, max_weight=60)
    weights = [weight(sdk)]
    for step in range(1, 5):
        report(service, now + step * 10 - 5, (30, 0))
        service.canaries.tick(now + step * 10)
        weights.append(weight(sdk))
    assert weights == [20, 40, 60, 100, 100]
    decisions = sdk.canary_decisions("orders")
    assert [d["action"] for d in reversed(decisions)] == ["start", "advance", "advance", "promote"]
    assert sdk.canary_status("orders")["run"]["phase"] == "promoted"


def test_too_few_requests_wait_and_the_window_grows_until_there_are_enough(controlled):
    service, sdk = controlled
    now = started(service, sdk)
    report(service, now + 5, (15, 0))
    service.canaries.tick(now + 10)
    wait = sdk.canary_decisions("orders")[0]
    assert wait["action"] == "wait" and "15 canary request(s)" in wait["reasons"][0] and weight(sdk) == 25
    report(service, now + 15, (15, 0))
    service.canaries.tick(now + 20)
    advance = sdk.canary_decisions("orders")[0]
    assert advance["action"] == "advance" and advance["figures"]["canary"]["requests"] == 30


def test_missing_and_stale_nodes_are_named_in_the_decision(controlled):
    service, sdk = controlled
    shop(sdk)
    sdk.release()
    sdk.patch("clusters", "default", {"auto_approve": True})
    token = sdk.join_token()["token"]
    for name in ("n1", "n2"):
        sdk.http.post("/api/v1/nodes/join", json={"token": token, "name": name}).raise_for_status()
    now = time.time()
    service.canaries.tick(now)
    report(service, now + 9, (40, 0), node="n1")
    service.canaries.tick(now + 10)
    decision = sdk.canary_decisions("orders")[0]
    nodes = {n["name"]: n for n in decision["figures"]["nodes"]}
    assert nodes["n1"]["state"] == "reporting" and nodes["n1"]["requests"] == {"orders-v2": 40, "orders-v1": 100}
    assert nodes["n2"]["state"] == "never"
    assert any("node n2 has sent no traffic report" in r for r in decision["reasons"])


@BOTH
def test_operators_pause_resume_promote_and_abort(controlled):
    service, sdk = controlled
    now = started(service, sdk)
    assert sdk.pause_canary("orders", "looking at the dashboards")["run"]["phase"] == "paused"
    report(service, now + 5, (40, 0))
    service.canaries.tick(now + 30)
    assert weight(sdk) == 25, "no checks while paused"
    with pytest.raises(Exception, match="cannot pause canary 'orders': it is paused"):
        sdk.pause_canary("orders")
    assert sdk.resume_canary("orders")["run"]["phase"] == "progressing"
    promoted = sdk.promote_canary("orders", "looks good")
    assert promoted["run"]["phase"] == "promoted" and weight(sdk) == 100
    assert sdk.releases(limit=1)[0]["actor"] == "admin"
    assert sdk.abort_canary("orders")["run"]["phase"] == "aborted" and weight(sdk) is None
    restarted = sdk.resume_canary("orders", "fixed, again")
    assert (restarted["run"]["phase"], restarted["run"]["run"], weight(sdk)) == ("progressing", 2, 25)
    actions = [(d["action"], d["actor"]) for d in sdk.canary_decisions("orders")]
    assert actions == [("resume", "admin"), ("abort", "admin"), ("promote", "admin"), ("resume", "admin"),
                       ("pause", "admin"), ("start", "controller")]


def test_a_release_the_controller_did_not_make_stops_the_run(controlled):
    service, sdk = controlled
    shop(sdk)
    before = sdk.release()["version"]
    now = time.time()
    service.canaries.tick(now)
    sdk.rollback(before, note="back to before the canary")
    service.canaries.tick(now + 1)
    status = sdk.canary_status("orders")
    assert status["run"]["phase"] == "aborted"
    assert "release" in status["decisions"][0]["reasons"][0] and "back to before the canary" in \
        status["decisions"][0]["reasons"][0]


def test_a_released_spec_change_starts_a_new_run(controlled):
    service, sdk = controlled
    now = started(service, sdk)
    report(service, now + 5, (40, 0))
    service.canaries.tick(now + 10)
    assert weight(sdk) == 50
    sdk.patch("canaries", "orders", {"step_weight": 5, "max_weight": 20})
    service.canaries.tick(now + 11)
    assert weight(sdk) == 50, "a drafted spec change waits for its release"
    assert sdk.canary_status("orders")["pending_spec_change"] is True
    sdk.release()
    service.canaries.tick(now + 12)
    status = sdk.canary_status("orders")
    assert (status["run"]["run"], status["run"]["weight"], weight(sdk)) == (2, 5, 5)


def test_a_partition_under_review_reviews_the_canary_not_its_steps(controlled):
    service, sdk = controlled
    sdk.put("partitions", "default", {"name": "default", "review": True})
    shop(sdk)
    request = sdk.release()["review"]
    service.canaries.tick(time.time())
    assert sdk.releases() == [] and sdk.canary_runs()[0]["phase"] == "not released"
    sdk.create_user("bob", "bob-password")
    sdk.grant("user:bob", "releaser", "partition:default")
    sdk_on(sdk.http, sdk.create_token(user="bob")["token"]).approve_review(request["id"])
    service.canaries.tick(time.time())
    assert weight(sdk) == 25 and sdk.reviews("open") == []


def test_who_may_create_drive_and_read_canaries(controlled):
    _service, sdk = controlled
    shop(sdk)
    sdk.release()
    _service.canaries.tick(time.time())
    users = {"editor": ("editor", "partition:default"), "releaser": ("releaser", "partition:default"),
             "viewer": ("viewer", "*"), "shop-editor": ("editor", "application:shop")}
    as_user = {}
    for user, (role, scope) in users.items():
        sdk.create_user(user, f"{user}-password")
        sdk.grant(f"user:{user}", role, scope)
        as_user[user] = sdk_on(sdk.http, sdk.create_token(user=user)["token"])
    second = {**SPEC, "name": "second"}
    as_user["editor"].create("canaries", second)
    for user in ("releaser", "viewer", "shop-editor"):
        refused = as_user[user].http.put("/api/v1/canaries/second", json=second)
        assert refused.status_code == 403 and refused.json()["permission"] == "write"
    for user in ("editor", "viewer"):
        refused = as_user[user].http.post("/api/v1/canaries/orders/pause", json={})
        assert refused.status_code == 403 and refused.json()["permission"] == "release"
    assert as_user["releaser"].pause_canary("orders")["run"]["phase"] == "paused"
    assert as_user["viewer"].canary_status("orders")["run"]["phase"] == "paused"
    assert sdk.http.put("/api/v1/canary_weights/orders", json={"name": "orders", "weight": 90}).status_code == 405
    refused = sdk.http.post("/api/v1/batch", json={"items": [{"kind": "canary_weights", "name": "orders",
                                                              "data": {"name": "orders", "weight": 90}}]})
    assert refused.status_code == 422 and "written only by the canary controller" in refused.json()["message"]

"""Nodes synced with real admin processes: releases reach exactly their partition's nodes
and are applied without a restart; nodes outlive the admin; a killed admin leaves whole
releases; two admins on one PostgreSQL serve nodes alike."""

from __future__ import annotations

import threading
import time

import pytest

from admin_harness import AdminProcess, SyncedNode, get, store_for, wait_until
from conftest import free_port

PAUSE_ENV = "EDGEPLANE_FAULT_RELEASE_PAUSE"


def app(name: str, port: int, body: str, partitions: list[str]) -> dict:
    return {"name": name, "domains": ["*"], "ports": [port], "partitions": partitions,
            "rules": [{"actions": [{"respond": {"body": body}}]}]}


def body_of(port: int) -> bytes:
    return get(port)[1]


@pytest.fixture
def cluster(tmp_path):
    """Started admins and nodes, stopped afterwards."""
    started: list = []

    def admin(store: str | None, **options) -> AdminProcess:
        directory = tmp_path / f"admin{len(started)}"
        directory.mkdir(exist_ok=True)
        process = AdminProcess(directory, store, **options)
        started.append(process)
        return process

    def node(admin_url: str, token: str | None, name: str, workers: int = 1) -> SyncedNode:
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        process = SyncedNode(directory, admin_url, token, name, workers)
        started.append(process)
        return process
    yield admin, node
    for process in reversed(started):
        process.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_release_reaches_every_node_of_its_partition_and_none_of_another(cluster, tmp_path, backend):
    store, cleanup = store_for(backend, tmp_path)
    start_admin, start_node = cluster
    try:
        admin = start_admin(store)
        sdk = admin.sdk()
        home_port, shop_port = free_port(), free_port()
        sdk.create("partitions", {"name": "eu"})
        sdk.patch("clusters", "default", {"auto_approve": True})
        sdk.create("clusters", {"name": "eu-edge", "partition": "eu"})
        sdk.create("applications", app("home", home_port, "home v1", ["default"]))
        sdk.create("applications", app("shop", shop_port, "shop v1", ["eu"]))
        first = sdk.release("default")["version"]
        eu_release = sdk.release("eu")["version"]
        default_token, eu_token = sdk.join_token("default")["token"], sdk.join_token("eu-edge")["token"]
        nodes = [start_node(admin.url, default_token, "d1", workers=2), start_node(admin.url, default_token, "d2")]
        eu_node = start_node(admin.url, eu_token, "e1")
        for node in nodes:
            node.wait_serving(first)
        wait_until(lambda: sdk.node("e1")["state"] == "candidate", 10, "e1 waiting as a candidate")
        assert eu_node.serving() is None
        sdk.approve_node("e1")
        eu_node.wait_serving(eu_release)
        assert body_of(home_port) == b"home v1"

        sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "home v2"}}]}]})
        second = sdk.release("default")["version"]
        for node in nodes:
            node.wait_serving(second)
        assert eu_node.serving() == str(eu_release)
        wait_until(lambda: body_of(home_port) == b"home v2", 5, "home v2 served")
        pids = [w["pid"] for w in nodes[0].status()["workers"]]
        rolled = sdk.rollback(first)["version"]
        for node in nodes:
            node.wait_serving(rolled)
        wait_until(lambda: body_of(home_port) == b"home v1", 5, "home v1 served again")
        assert [w["pid"] for w in nodes[0].status()["workers"]] == pids, "applied without restarting workers"
        status = wait_until(lambda: (s := sdk.status()) and s["partitions"]["default"]["releases"][0]["nodes"] == 2
                            and s, 10, "both default nodes reported the rollback")
        assert {n["name"]: (n["version"], n["lag"]) for n in status["nodes"]} == {
            "d1": (rolled, 0), "d2": (rolled, 0), "e1": (eu_release, 0)}
    finally:
        cleanup()


def one_node(cluster, body: str):
    """An admin on SQLite with one released application, and one node serving it."""
    start_admin, start_node = cluster
    admin = start_admin(None)
    sdk = admin.sdk()
    port = free_port()
    sdk.patch("clusters", "default", {"auto_approve": True})
    sdk.create("applications", app("home", port, body, ["default"]))
    version = sdk.release()["version"]
    node = start_node(admin.url, sdk.join_token()["token"], "n1")
    node.wait_serving(version)
    return admin, sdk, port, node, version


def test_an_offline_node_keeps_its_release_and_gets_no_new_one(cluster):
    _admin, sdk, port, node, first = one_node(cluster, "v1")
    sdk.offline("n1")
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "v2"}}]}]})
    second = sdk.release()["version"]
    time.sleep(1.0)
    assert node.serving() == str(first) and body_of(port) == b"v1"
    sdk.online("n1")
    node.wait_serving(second)


def test_nodes_serve_while_the_admin_is_down_and_restart_from_their_local_store(cluster):
    admin, sdk, port, node, version = one_node(cluster, "stored")
    admin.kill()
    time.sleep(0.5)
    assert body_of(port) == b"stored"
    node.stop()
    node.token = None  # it has its credential; a restart needs no join token
    node.start()
    node.wait_serving(version)
    assert body_of(port) == b"stored"
    assert "admin_unreachable" in node.log_text()
    wait_until(lambda: node.status()["sync"]["last_error"], 10, "the node noticing the admin is down")
    admin.start()
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "after"}}]}]})
    node.wait_serving(sdk.release()["version"])
    assert body_of(port) == b"after"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_admin_killed_in_the_middle_of_a_release_leaves_a_consistent_store(cluster, tmp_path, backend):
    store, cleanup = store_for(backend, tmp_path)
    start_admin, _start_node = cluster
    try:
        admin = start_admin(store, env={PAUSE_ENV: "30"})
        sdk = admin.sdk()
        sdk.create("applications", app("home", free_port(), "v1", ["default"]))
        errors: list = []

        def release() -> None:
            try:
                sdk.release()
            except Exception as error:  # the admin dies under it: that is the test
                errors.append(error)
        thread = threading.Thread(target=release)
        thread.start()
        wait_until(lambda: "release_paused" in (admin.data_dir.parent / f"admin-{admin.port}.log").read_text(),
                   20, "the admin to be inside the release transaction")
        admin.kill()
        thread.join(10)
        assert errors, "the release must not have completed"
        admin.env.pop(PAUSE_ENV)
        admin.start()
        sdk = admin.sdk()
        assert sdk.releases() == []
        assert [c["name"] for c in sdk.pending()["changes"]][-1] == "home"
        assert sdk.release()["version"] == 1, "the counter was rolled back with the release"
        assert [a["name"] for a in sdk.release_snapshot(1)["config"]["applications"]] == ["home"]
    finally:
        cleanup()


def test_two_admins_on_one_postgresql_number_releases_alike_and_serve_nodes_alike(cluster, tmp_path):
    store, cleanup = store_for("postgresql", tmp_path)
    start_admin, start_node = cluster
    try:
        first, second = start_admin(store), start_admin(store, bootstrap=False)
        a, b = first.sdk(), second.sdk()
        port = free_port()
        a.patch("clusters", "default", {"auto_approve": True})
        a.create("applications", app("home", port, "v0", ["default"]))
        node = start_node(second.url, b.join_token()["token"], "n1")
        versions: list[int] = []
        lock = threading.Lock()

        def release_many(sdk, label: str) -> None:
            for index in range(4):
                sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": f"{label}{index}"}}]}]})
                number = sdk.release()["version"]
                with lock:
                    versions.append(number)
        threads = [threading.Thread(target=release_many, args=(sdk, label)) for sdk, label in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(versions) == list(range(1, 9)), "no number forked or skipped"
        a.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "from A"}}]}]})
        last = a.release()["version"]
        node.wait_serving(last, timeout=10)
        assert body_of(port) == b"from A"
        assert b.node("n1")["version"] == last or wait_until(lambda: b.node("n1")["version"] == last, 10, "report")
    finally:
        cleanup()


def test_a_node_refuses_to_start_without_a_join_token_or_credential(tmp_path):
    import subprocess
    import sys

    from conftest import ENV
    result = subprocess.run([sys.executable, "-m", "edgeplane", "node", "--admin", "http://127.0.0.1:9",
                             "--data-dir", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "join with --token" in result.stderr


def test_a_node_validates_each_stored_object_and_leaves_references_to_the_admin():
    import orjson

    from edgeplane.model.load import ConfigError
    from edgeplane.node.store import ConfigBuilder
    proxied = {"name": "web", "domains": ["*"], "rules": [{"actions": [{"proxy": {"upstream": "api"}}]}]}
    config = ConfigBuilder().build([("applications", "web", orjson.dumps(proxied))], "store")
    assert config.applications[0].rules[0].actions[0].upstream == "api"  # checked by the admin before it released
    with pytest.raises(ConfigError, match=r"applications/web\.ports"):
        ConfigBuilder().build([("applications", "web", orjson.dumps({**proxied, "ports": [0]}))], "store")


def test_the_admin_keeps_an_idle_connection_longer_than_its_clients_do(cluster):
    """httpx (the SDK, the CLI) drops an idle connection after 5 s; were the admin to close
    it first, a request sent just then would meet a reset."""
    import http.client
    admin = cluster[0](None)
    connection = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() is not None
        time.sleep(6)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()

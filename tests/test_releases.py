"""Releases: numbered immutable snapshots per partition, diffs, rollback, discard, review."""

from __future__ import annotations

from admin_harness import sdk_on

UPSTREAM = {"name": "api", "servers": [{"address": "127.0.0.1", "port": 9001}]}


def app(name: str, partitions: list[str], body: str = "hi") -> dict:
    return {"name": name, "domains": [f"{name}.example"], "partitions": partitions,
            "rules": [{"actions": [{"respond": {"body": body}}]}]}


def test_a_release_is_a_numbered_snapshot_of_its_partition_only(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.create("partitions", {"name": "eu"})
    sdk.create("applications", app("home", ["default"]))
    sdk.create("applications", app("shop", ["eu"]))
    first = sdk.release("default", note="home")
    second = sdk.release("eu")
    assert second["version"] == first["version"] + 1
    home = sdk.release_snapshot(first["version"])["config"]
    assert [a["name"] for a in home["applications"]] == ["home"]
    assert [a["name"] for a in sdk.release_snapshot(second["version"])["config"]["applications"]] == ["shop"]
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "changed"}}]}]})
    assert sdk.release_snapshot(first["version"])["config"] == home  # immutable
    assert [c["name"] for c in sdk.pending("default")["changes"]] == ["home"]
    assert sdk.pending("eu")["changes"] == []


def test_any_two_releases_diff_as_json_and_text(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.create("applications", app("home", ["default"], "one"))
    one = sdk.release()["version"]
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "two"}}]}]})
    sdk.create("upstreams", UPSTREAM)
    two = sdk.release()["version"]
    diff = sdk.diff(old=one, new=two)
    assert {(c["op"], c["kind"], c["name"]) for c in diff["changes"]} == {("update", "applications", "home"),
                                                                         ("create", "upstreams", "api")}
    text = sdk.diff(old=one, new=two, text=True)
    assert "-      body: one" in text and "+      body: two" in text


def test_rollback_is_a_new_release_equal_to_the_older_one_and_restores_the_draft(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.create("applications", app("home", ["default"], "good"))
    good = sdk.release()["version"]
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "bad"}}]}]})
    sdk.create("applications", app("extra", ["default"]))
    bad = sdk.release()["version"]
    rolled = sdk.rollback(good)
    assert rolled["version"] > bad and rolled["rollback_of"] == good
    assert sdk.release_snapshot(rolled["version"])["config"] == sdk.release_snapshot(good)["config"]
    assert sdk.get("applications", "home")["rules"][0]["actions"][0]["respond"]["body"] == "good"
    assert sdk.list("applications")["total"] == 1
    assert sdk.pending()["diff"] == [] and sdk.pending()["changes"] == []


def test_pending_changes_can_be_discarded(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.create("applications", app("home", ["default"], "kept"))
    sdk.release()
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "dropped"}}]}]})
    sdk.create("applications", app("new", ["default"]))
    assert len(sdk.pending()["changes"]) == 2
    result = sdk.discard()
    assert result["discarded"] == 2
    assert sdk.get("applications", "home")["rules"][0]["actions"][0]["respond"]["body"] == "kept"
    assert sdk.list("applications")["total"] == 1 and sdk.pending()["diff"] == []


def test_review_requires_a_different_user_with_release_permission(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.put("partitions", "default", {"name": "default", "review": True})
    sdk.create_user("bob", "bob-password")
    sdk.create_user("vic", "vic-password")
    sdk.grant("user:bob", "releaser", "partition:default")
    sdk.grant("user:vic", "viewer")
    sdk.create("applications", app("home", ["default"]))
    request = sdk.release(note="please")["review"]
    assert request["state"] == "open" and sdk.releases() == []
    own = client.post(f"/api/v1/reviews/{request['id']}/approve")
    assert own.status_code == 403 and "different user" in own.json()["message"]
    viewer = sdk_on(client, sdk.create_token(user="vic")["token"])
    denied = viewer.http.post(f"/api/v1/reviews/{request['id']}/approve")
    assert denied.status_code == 403 and denied.json()["permission"] == "release"
    bob = sdk_on(client, sdk.create_token(user="bob")["token"])
    released = bob.approve_review(request["id"])
    assert released["approved_by"] == "bob" and released["actor"] == "admin"
    assert sdk.reviews("released")[0]["release"] == released["version"]


def test_a_rejected_release_request_releases_nothing(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.put("partitions", "default", {"name": "default", "review": True})
    sdk.create("applications", app("home", ["default"]))
    request = sdk.release()["review"]
    sdk.reject_review(request["id"])
    assert sdk.releases() == []
    assert client.post(f"/api/v1/reviews/{request['id']}/approve").status_code == 409


def test_what_a_node_is_sent_is_each_released_object_as_stored_with_its_secrets_opened(admin):
    import orjson
    import trustme
    service, client = admin
    sdk = sdk_on(client)
    leaf = trustme.CA().issue_cert("home.example")
    key = leaf.private_key_pem.bytes().decode()
    sdk.create("certificates", {"name": "home", "cert": leaf.cert_chain_pems[0].bytes().decode(), "key": key})
    sdk.create("applications", app("home", ["default"], "one"))
    first = sdk.release()["version"]
    full = orjson.loads(service.nodes.delta("default", 0, first))
    objects = {(o["kind"], o["name"]): o["data"] for o in full["objects"]}
    assert (full["full"], full["version"], full["deleted"]) == (True, first, [])
    assert objects[("applications", "home")] == sdk.get("applications", "home")
    assert objects[("certificates", "home")]["key"] == key
    sdk.patch("applications", "home", {"rules": [{"actions": [{"respond": {"body": "two"}}]}]})
    sdk.delete("certificates", "home")
    second = sdk.release()["version"]
    delta = orjson.loads(service.nodes.delta("default", first, second))
    assert delta["full"] is False and delta["deleted"] == [["certificates", "home"]]
    assert [(o["kind"], o["name"], o["data"]["rules"][0]["actions"][0]["respond"]["body"])
            for o in delta["objects"]] == [("applications", "home", "two")]


def test_a_shared_object_rolled_back_or_discarded_in_one_partition_is_pending_in_another_only_if_it_differs(admin):
    _service, client = admin
    sdk = sdk_on(client)
    sdk.create("partitions", {"name": "eu"})
    sdk.create("upstreams", UPSTREAM)
    good = sdk.release("default")["version"]
    sdk.release("eu")
    sdk.patch("upstreams", "api", {"balance": "ewma"})
    assert [c["name"] for c in sdk.pending("eu")["changes"]] == ["api"]
    sdk.release("default")
    sdk.rollback(good, "default")
    assert sdk.get("upstreams", "api") == UPSTREAM
    assert sdk.pending("eu") == {"partition": "eu", "changes": [], "diff": []}, "eu released what the draft is again"
    sdk.patch("upstreams", "api", {"balance": "least-conn"})
    assert [c["name"] for c in sdk.pending("eu")["changes"]] == ["api"]
    sdk.discard("default")
    assert sdk.pending("eu") == {"partition": "eu", "changes": [], "diff": []}
    assert sdk.pending("default") == {"partition": "default", "changes": [], "diff": []}

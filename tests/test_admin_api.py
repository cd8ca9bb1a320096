"""The Admin API's objects: every kind of the model managed generically, validated by the
model's classes, errors with field paths, nothing invalid stored, secrets sealed at rest."""

from __future__ import annotations

import base64

import orjson
import pytest
from sqlalchemy import select

from edgeplane.admin import schema
from edgeplane.model.kinds import KINDS

from admin_harness import sdk_on

UPSTREAM = {"name": "api", "servers": [{"address": "127.0.0.1", "port": 9001}]}
APP = {"name": "web", "domains": ["web.example"], "rules": [{"actions": [{"proxy": {"upstream": "api"}}]}]}


def rows(service, table) -> list:
    with service.store.transaction() as connection:
        return connection.execute(select(table)).all()


def test_every_kind_of_the_model_has_endpoints_in_the_openapi_document(admin):
    _service, client = admin
    paths = client.get("/openapi.json").json()["paths"]
    for kind in KINDS.values():
        assert f"/api/v1/{kind.name}" in paths
        if not kind.singleton:
            written = {"put", "patch", "delete"} if kind.controlled_by is None else set()  # by its controller only
            assert set(paths[f"/api/v1/{kind.name}/{{name}}"]) == {"get", *written}
    assert "/api/v1/applications/{app}/rules/{index}" in paths


def test_docs_are_served_without_the_internet(admin):
    _service, client = admin
    page = client.get("/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_objects_are_created_read_replaced_patched_listed_and_deleted(admin):
    _service, client = admin
    assert client.post("/api/v1/upstreams", json=UPSTREAM).status_code == 201
    assert client.post("/api/v1/applications", json=APP).status_code == 201
    assert client.get("/api/v1/applications/web").json() == APP
    changed = client.patch("/api/v1/upstreams/api", json={"balance": "least-conn"})
    assert changed.status_code == 200 and changed.json()["object"]["balance"] == "least-conn"
    replaced = {**APP, "domains": ["www.example"]}
    assert client.put("/api/v1/applications/web", json=replaced).status_code == 200
    assert client.get("/api/v1/applications", params={"q": "we"}).json()["items"] == [replaced]
    assert client.get("/api/v1/applications", params={"partition": "other"}).json()["items"] == []
    assert client.delete("/api/v1/applications/web").status_code == 200
    assert client.get("/api/v1/applications/web").status_code == 404


def test_listing_is_paginated(admin):
    _service, client = admin
    for index in range(5):
        client.post("/api/v1/upstreams", json={**UPSTREAM, "name": f"u{index}"})
    page = client.get("/api/v1/upstreams", params={"limit": 2, "offset": 2}).json()
    assert [u["name"] for u in page["items"]] == ["u2", "u3"] and page["total"] == 5


def test_singletons_are_read_and_replaced(admin):
    _service, client = admin
    assert client.put("/api/v1/settings", json={"timezone": "Europe/Paris"}).status_code == 200
    assert client.get("/api/v1/settings").json() == {"timezone": "Europe/Paris"}
    bad = client.put("/api/v1/settings", json={"timezone": "Mars/Olympus"})
    assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "timezone"


def test_rules_are_resources_of_their_application(admin):
    _service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    client.post("/api/v1/applications", json=APP)
    first = {"conditions": [{"var": "path", "values": ["/ping"]}], "actions": [{"respond": {"body": "pong"}}]}
    assert client.post("/api/v1/applications/web/rules", json=first, params={"position": 0}).status_code == 201
    assert client.get("/api/v1/applications/web/rules/0").json() == first
    assert len(client.get("/api/v1/applications/web/rules").json()["items"]) == 2
    assert client.delete("/api/v1/applications/web/rules/1").status_code == 200
    assert client.get("/api/v1/applications/web/rules/1").status_code == 404


@pytest.mark.parametrize("body, path", [
    ({**APP, "rules": [{"conditions": [{"var": "path", "op": "near"}], "actions": [{"respond": {}}]}]},
     "rules[0].conditions[0].op"),
    ({**APP, "domains": ["not a domain"]}, "domains[0]"),
    ({**APP, "rules": [{"actions": [{"proxy": {"upstream": "missing"}}]}]},
     "applications/web.rules[0].actions[0].proxy.upstream"),
    ({**APP, "surprise": 1}, "surprise"),
])
def test_invalid_input_is_refused_with_its_field_path_and_leaves_the_store_untouched(admin, body, path):
    service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    before = (rows(service, schema.objects), rows(service, schema.changes))
    response = client.post("/api/v1/applications", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid"
    assert path in [p["path"] for p in response.json()["problems"]]
    assert (rows(service, schema.objects), rows(service, schema.changes)) == before


def test_a_batch_with_one_bad_object_stores_none_of_it(admin):
    service, client = admin
    before = rows(service, schema.objects)
    response = client.post("/api/v1/batch", json={"items": [
        {"kind": "upstreams", "name": "api", "data": UPSTREAM},
        {"kind": "applications", "name": "web", "data": {**APP, "ports": [0]}}]})
    assert response.status_code == 422
    assert response.json()["problems"][0]["path"] == "applications/web.ports[0]"
    assert rows(service, schema.objects) == before


def test_deleting_what_others_refer_to_is_refused(admin):
    _service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    client.post("/api/v1/applications", json=APP)
    response = client.delete("/api/v1/upstreams/api")
    assert response.status_code == 422
    assert "no upstream named 'api'" in response.json()["message"]


def test_conflicts_and_unknown_objects(admin):
    _service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    assert client.post("/api/v1/upstreams", json=UPSTREAM).status_code == 409
    assert client.get("/api/v1/upstreams/nope").status_code == 404
    renamed = client.put("/api/v1/upstreams/api", json={**UPSTREAM, "name": "other"})
    assert renamed.status_code == 400 and "rename" in renamed.json()["message"]


def test_every_write_is_a_recorded_change_with_actor_and_before_after(admin):
    _service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    client.patch("/api/v1/upstreams/api", json={"balance": "ewma"})
    change = client.get("/api/v1/changes", params={"limit": 1}).json()["items"][0]
    assert (change["actor"], change["op"], change["kind"], change["name"]) == ("admin", "update", "upstreams", "api")
    assert change["before"] == UPSTREAM and change["after"] == {**UPSTREAM, "balance": "ewma"}


def test_a_batch_records_one_change_per_object_it_creates_replaces_or_deletes(admin):
    service, client = admin
    client.post("/api/v1/upstreams", json=UPSTREAM)
    client.post("/api/v1/upstreams", json={**UPSTREAM, "name": "old"})
    response = client.post("/api/v1/batch", json={"items": [
        {"kind": "upstreams", "name": "api", "data": {**UPSTREAM, "balance": "ewma"}},
        {"kind": "upstreams", "name": "old"},
        *[{"kind": "applications", "name": f"web{i}", "data": {**APP, "name": f"web{i}", "domains": [f"{i}.example"]}}
          for i in range(3)]]})
    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    changes = {c["id"]: c for c in client.get("/api/v1/changes", params={"limit": 10}).json()["items"]}
    assert [(changes[i]["op"], changes[i]["name"]) for i in ids] == [
        ("update", "api"), ("delete", "old"), ("create", "web0"), ("create", "web1"), ("create", "web2")]
    assert changes[ids[0]]["before"] == UPSTREAM and changes[ids[0]]["after"] == {**UPSTREAM, "balance": "ewma"}
    stored = {(r.kind, r.name): r.change_id for r in rows(service, schema.objects)}
    assert ("upstreams", "old") not in stored
    assert [stored[("upstreams", "api")], *(stored[("applications", f"web{i}")] for i in range(3))] == \
        [ids[0], *ids[2:]]
    assert client.get("/api/v1/applications/web2").json()["domains"] == ["2.example"]


def test_private_keys_are_encrypted_at_rest_and_redacted_in_answers(admin, tmp_path):
    import trustme
    service, client = admin
    ca = trustme.CA()
    leaf = ca.issue_cert("web.example")
    key = leaf.private_key_pem.bytes().decode()
    certificate = {"name": "web", "cert": leaf.cert_chain_pems[0].bytes().decode(), "key": key}
    assert client.post("/api/v1/certificates", json=certificate).status_code == 201
    assert client.get("/api/v1/certificates/web").json()["key"] == "(secret)"
    stored = rows(service, schema.objects)
    assert all("PRIVATE KEY" not in row.data for row in stored)
    sealed = orjson.loads(next(r.data for r in stored if r.kind == "certificates"))["key"]
    assert base64.b64decode(sealed["$sealed"])  # AES-GCM: nonce and ciphertext
    assert service.box.open_value(sealed) == key
    # what GET shows can be sent back: the redacted key keeps the stored one
    assert client.put("/api/v1/certificates/web", json=client.get("/api/v1/certificates/web").json()).status_code == 200
    with service.store.transaction() as connection:
        assert service.draft.one(connection, "certificates", "web").instance.key == key


def test_secrets_nested_in_auth_providers_are_sealed_redacted_and_kept_when_sent_back(admin):
    service, client = admin
    hmac, other = "h" * 32, "o" * 32
    providers = [{"name": "tokens", "jwt": {"algorithms": ["HS256"], "keys": [{"kid": "a", "secret": hmac},
                                                                                {"kid": "b", "secret": other}]}},
                 {"name": "sso", "oidc": {"issuer": "https://idp.example", "client_id": "edge",
                                          "client_secret": "client-secret", "session_secret": "s" * 32}}]
    for provider in providers:
        assert client.post("/api/v1/auth_providers", json=provider).status_code == 201
    shown = client.get("/api/v1/auth_providers/tokens").json()
    assert [k["secret"] for k in shown["jwt"]["keys"]] == ["(secret)", "(secret)"]
    sso = client.get("/api/v1/auth_providers/sso").json()["oidc"]
    assert (sso["client_secret"], sso["session_secret"]) == ("(secret)", "(secret)")
    stored = " ".join(row.data for row in rows(service, schema.objects) if row.kind == "auth_providers")
    assert hmac not in stored and "client-secret" not in stored and "s" * 32 not in stored
    shown["jwt"]["keys"][1]["secret"] = "n" * 32  # one key replaced, the other sent back redacted
    assert client.put("/api/v1/auth_providers/tokens", json=shown).status_code == 200
    assert client.put("/api/v1/auth_providers/sso", json=client.get("/api/v1/auth_providers/sso").json()
                      ).status_code == 200
    with service.store.reading() as connection:
        tokens = service.draft.one(connection, "auth_providers", "tokens").instance
        sso = service.draft.one(connection, "auth_providers", "sso").instance
    assert [k.secret for k in tokens.jwt.keys] == [hmac, "n" * 32]
    assert (sso.oidc.client_secret, sso.oidc.session_secret) == ("client-secret", "s" * 32)


def test_sdk_apply_is_declarative_and_idempotent(admin, tmp_path):
    from edgeplane.declarative import plan, read
    _service, client = admin
    sdk = sdk_on(client)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(orjson.dumps({"upstreams": [UPSTREAM], "applications": [APP]}).decode())
    config, mentioned = read(config_file)
    first = plan(config, mentioned, sdk.objects())
    assert [(i["op"], i["kind"], i["name"]) for i in first] == [("create", "upstreams", "api"),
                                                                  ("create", "applications", "web")]
    sdk.batch([{k: v for k, v in i.items() if k != "op"} for i in first])
    assert plan(config, mentioned, sdk.objects()) == []
    assert len(sdk.pending()["changes"]) >= 2


def test_the_control_plane_example_directory_applies_as_one_config(admin):
    from edgeplane.declarative import plan, read

    from conftest import ROOT
    _service, client = admin
    sdk = sdk_on(client)
    config, mentioned = read(ROOT / "examples" / "control-plane")
    sdk.batch([{k: v for k, v in i.items() if k != "op"} for i in plan(config, mentioned, sdk.objects())])
    assert sdk.get("partitions", "eu")["review"] is True
    assert sdk.get("applications", "shop")["partitions"] == ["default", "eu"]
    assert plan(config, mentioned, sdk.objects()) == []


def test_values_longer_than_the_store_holds_are_invalid_input_on_either_backend(admin):
    service, client = admin
    before = rows(service, schema.tokens), rows(service, schema.role_bindings)
    for path, body in (("/api/v1/tokens", {"label": "l" * 129}),
                       ("/api/v1/role-bindings", {"subject": "user:" + "u" * 200, "role": "viewer"}),
                       ("/api/v1/role-bindings", {"subject": "user:admin", "role": "viewer",
                                                  "scope": "partition:" + "p" * 200})):
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["problems"][0]["path"] in body
    assert (rows(service, schema.tokens), rows(service, schema.role_bindings)) == before

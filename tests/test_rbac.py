"""Authorization: each role against each kind of call, roles scoped to partitions and
applications, and every refusal a 403 naming the permission and the scope it lacked."""

from __future__ import annotations

import pytest

from admin_harness import BACKENDS, in_process, sdk_on, store_for

ROLES = ["viewer", "editor", "releaser", "admin"]
CALLS = {
    # name: (method, path, body, permission it needs)
    "read objects": ("GET", "/api/v1/applications/home", None, "read"),
    "read status": ("GET", "/api/v1/status", None, "read"),
    "write objects": ("PATCH", "/api/v1/applications/home", {"domains": ["home.example", "www.home.example"]}, "write"),
    "write shared objects": ("PUT", "/api/v1/upstreams/u", {"name": "u", "servers": [{"address": "10.0.0.1", "port": 80}]},
                             "write"),
    "release": ("POST", "/api/v1/partitions/default/releases", {}, "release"),
    "discard": ("POST", "/api/v1/partitions/default/discard", None, "release"),
    "make join tokens": ("POST", "/api/v1/clusters/default/join-tokens", None, "admin"),
    "manage users": ("PUT", "/api/v1/users/nobody/password", {"password": "nobody-password"}, "admin"),
    "grant roles": ("POST", "/api/v1/role-bindings", {"subject": "user:zed", "role": "admin"}, "admin"),
}
ALLOWED = {"viewer": {"read"}, "editor": {"read", "write"}, "releaser": {"read", "release"},
           "admin": {"read", "write", "release", "admin"}}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    """One admin with a user per role (global), plus scoped users; tokens by user."""
    directory = tmp_path_factory.mktemp(f"rbac-{request.param}")
    store, cleanup = store_for(request.param, directory)
    service, client = in_process(store, directory / "admin")
    sdk = sdk_on(client)
    sdk.create("partitions", {"name": "eu"})
    sdk.create("applications", {"name": "home", "domains": ["home.example"],
                                "rules": [{"actions": [{"respond": {"body": "hi"}}]}]})
    sdk.create("applications", {"name": "shop", "domains": ["shop.example"], "partitions": ["eu"],
                                "rules": [{"actions": [{"respond": {"body": "hi"}}]}]})
    tokens = {}
    for user, role, scope in [*((f"{r}-user", r, "*") for r in ROLES), ("default-editor", "editor", "partition:default"),
                              ("home-editor", "editor", "application:home"), ("eu-releaser", "releaser", "partition:eu"),
                              ("nobody", None, None)]:
        sdk.create_user(user, f"{user}-password")
        if role:
            sdk.grant(f"user:{user}", role, scope)
        tokens[user] = sdk.create_token(user=user)["token"]
    sdk.create_group("ops", ["nobody"])
    yield client, tokens
    client.__exit__(None, None, None)
    service.close()
    cleanup()


def call(client, token: str, name: str):
    method, path, body, _ = CALLS[name]
    return client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_each_kind_of_call(world, role):
    client, tokens = world
    for name, (_method, _path, _body, permission) in CALLS.items():
        response = call(client, tokens[f"{role}-user"], name)
        if permission in ALLOWED[role]:
            assert response.status_code < 400, (role, name, response.text)
        else:
            assert response.status_code == 403, (role, name, response.text)
            assert response.json()["permission"] == permission
            assert f"lacks permission {permission!r}" in response.json()["message"]
            assert f"holds: {role} on *" in response.json()["message"]


def test_a_partition_role_reaches_its_partition_and_nothing_else(world):
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['default-editor']}"}
    assert client.patch("/api/v1/applications/home", json={"domains": ["home.example"]}, headers=headers).status_code == 200
    denied = client.patch("/api/v1/applications/shop", json={"domains": ["shop.example"]}, headers=headers)
    assert denied.status_code == 403 and denied.json()["scopes"] == ["partition:eu"]
    moved = client.patch("/api/v1/applications/home", json={"partitions": ["eu"]}, headers=headers)
    assert moved.status_code == 403, "moving an application into a partition needs write there too"
    assert client.get("/api/v1/applications", headers=headers).json()["total"] == 1  # lists what it may read
    assert call(client, tokens["default-editor"], "write shared objects").status_code == 403


def test_an_application_role_reaches_that_application_only(world):
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['home-editor']}"}
    assert client.patch("/api/v1/applications/home", json={"domains": ["home.example"]}, headers=headers).status_code == 200
    assert client.get("/api/v1/applications/shop", headers=headers).status_code == 403
    assert call(client, tokens["home-editor"], "release").status_code == 403


def test_a_releaser_of_one_partition_cannot_release_another(world):
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['eu-releaser']}"}
    assert client.post("/api/v1/partitions/eu/releases", json={}, headers=headers).status_code == 201
    denied = client.post("/api/v1/partitions/default/releases", json={}, headers=headers)
    assert denied.status_code == 403 and "partition 'default'" in denied.json()["message"]


def test_no_role_means_no_access_and_no_credential_means_401(world):
    client, tokens = world
    assert call(client, tokens["nobody"], "read status").status_code == 403
    anonymous = client.get("/api/v1/status", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert client.get("/api/v1/status", headers={"Authorization": "Bearer ep_wrong"}).status_code == 401


def test_passwords_log_in_and_groups_carry_roles(world):
    client, tokens = world
    import base64
    basic = base64.b64encode(b"viewer-user:viewer-user-password").decode()
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Basic {basic}"}).json()["name"] == "viewer-user"
    wrong = base64.b64encode(b"viewer-user:nope").decode()
    assert client.get("/api/v1/whoami", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    token = client.post("/api/v1/login", json={"user": "nobody", "password": "nobody-password"}).json()["token"]
    client.post("/api/v1/role-bindings", json={"subject": "group:ops", "role": "viewer"})
    assert client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200

"""A Python client for the edgeplane Admin API (httpx), one method per endpoint.

    from edgeplane.sdk import Client
    admin = Client("http://127.0.0.1:9900", token="ep_...")
    admin.put("upstreams", "api", {"name": "api", "servers": [{"address": "10.0.0.5", "port": 80}]})
    admin.release("default", note="api upstream")

Every failed call raises `ApiError` with the status, the admin's message and, for invalid
input, each problem's field path. The CLI (`edgeplane apply`, `release`, ...) is built on it.
"""

from __future__ import annotations

from typing import Any

import httpx

API = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.problems = self.body.get("problems", [])
        super().__init__(self.body.get("message") or self.body.get("detail") or f"HTTP {status}")


class Client:
    def __init__(self, admin: str, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.admin = admin.rstrip("/")
        self.http = httpx.Client(base_url=self.admin, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, API + path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, body)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    # --- objects -----------------------------------------------------------------------

    def kinds(self) -> dict:
        return self.call("GET", "/kinds")

    def list(self, kind: str, partition: str | None = None, q: str | None = None, limit: int = 1000,
             offset: int = 0) -> dict:
        params = {k: v for k, v in {"partition": partition, "q": q, "limit": limit, "offset": offset}.items()
                  if v is not None}
        return self.call("GET", f"/{kind}", params=params)

    def get(self, kind: str, name: str = "") -> dict:
        return self.call("GET", f"/{kind}/{name}" if name else f"/{kind}")

    def create(self, kind: str, data: dict) -> dict:
        return self.call("POST", f"/{kind}", json=data)

    def put(self, kind: str, name: str, data: dict) -> dict:
        return self.call("PUT", f"/{kind}/{name}" if name else f"/{kind}", json=data)

    def patch(self, kind: str, name: str, patch: dict) -> dict:
        return self.call("PATCH", f"/{kind}/{name}", json=patch)

    def delete(self, kind: str, name: str) -> dict:
        return self.call("DELETE", f"/{kind}/{name}")

    def rules(self, app: str) -> list:
        return self.call("GET", f"/applications/{app}/rules")["items"]

    def add_rule(self, app: str, rule: dict, position: int | None = None) -> dict:
        params = {"position": position} if position is not None else {}
        return self.call("POST", f"/applications/{app}/rules", json=rule, params=params)

    def put_rule(self, app: str, index: int, rule: dict) -> dict:
        return self.call("PUT", f"/applications/{app}/rules/{index}", json=rule)

    def delete_rule(self, app: str, index: int) -> dict:
        return self.call("DELETE", f"/applications/{app}/rules/{index}")

    def objects(self, kind: str | None = None) -> list[dict]:
        return self.call("GET", "/objects", params={"kind": kind} if kind else {})["items"]

    def batch(self, items: list[dict]) -> dict:
        return self.call("POST", "/batch", json={"items": items})

    # --- changes and releases ----------------------------------------------------------

    def changes(self, partition: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        params = {"limit": limit, "offset": offset, **({"partition": partition} if partition else {})}
        return self.call("GET", "/changes", params=params)

    def pending(self, partition: str = "default") -> dict:
        return self.call("GET", f"/partitions/{partition}/pending")

    def discard(self, partition: str = "default") -> dict:
        return self.call("POST", f"/partitions/{partition}/discard")

    def release(self, partition: str = "default", note: str = "") -> dict:
        """The release made, or {"review": ...} when the partition requires review."""
        return self.call("POST", f"/partitions/{partition}/releases", json={"note": note})

    def rollback(self, version: int, partition: str = "default", note: str = "") -> dict:
        return self.call("POST", f"/partitions/{partition}/rollback", json={"version": version, "note": note})

    def releases(self, partition: str | None = None, limit: int = 50) -> list[dict]:
        return self.call("GET", "/releases", params={"limit": limit, **({"partition": partition} if partition else {})}
                         )["items"]

    def release_snapshot(self, version: int) -> dict:
        return self.call("GET", f"/releases/{version}")

    def diff(self, partition: str | None = None, old: int | None = None, new: int | None = None,
             text: bool = False) -> Any:
        params = {k: v for k, v in {"partition": partition, "from": old, "to": new}.items() if v is not None}
        return self.call("GET", "/diff", params={**params, "format": "text" if text else "json"})

    def reviews(self, state: str | None = None) -> list[dict]:
        return self.call("GET", "/reviews", params={"state": state} if state else {})["items"]

    def approve_review(self, review_id: int) -> dict:
        return self.call("POST", f"/reviews/{review_id}/approve")

    def reject_review(self, review_id: int) -> dict:
        return self.call("POST", f"/reviews/{review_id}/reject")

    # --- canaries (the objects themselves: put/get/delete of kind "canaries") ------------

    def canary_runs(self) -> list[dict]:
        return self.call("GET", "/canary-runs")["items"]

    def canary_status(self, name: str) -> dict:
        """The run (phase, weight, failed checks), the current step's figures, the decisions."""
        return self.call("GET", f"/canaries/{name}/status")

    def canary_decisions(self, name: str, limit: int = 50) -> list[dict]:
        return self.call("GET", f"/canaries/{name}/decisions", params={"limit": limit})["items"]

    def pause_canary(self, name: str, note: str = "") -> dict:
        return self.call("POST", f"/canaries/{name}/pause", json={"note": note})

    def resume_canary(self, name: str, note: str = "") -> dict:
        """Go on from a pause; after a rollback or an abort, a new run from the first step."""
        return self.call("POST", f"/canaries/{name}/resume", json={"note": note})

    def promote_canary(self, name: str, note: str = "") -> dict:
        return self.call("POST", f"/canaries/{name}/promote", json={"note": note})

    def abort_canary(self, name: str, note: str = "") -> dict:
        return self.call("POST", f"/canaries/{name}/abort", json={"note": note})

    # --- nodes -------------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        return self.call("GET", "/nodes")["items"]

    def node(self, node: str) -> dict:
        return self.call("GET", f"/nodes/{node}")

    def approve_node(self, node: str) -> dict:
        return self.call("POST", f"/nodes/{node}/approve")

    def offline(self, node: str) -> dict:
        return self.call("POST", f"/nodes/{node}/offline")

    def online(self, node: str) -> dict:
        return self.call("POST", f"/nodes/{node}/online")

    def remove_node(self, node: str) -> dict:
        return self.call("DELETE", f"/nodes/{node}")

    def join_token(self, cluster: str = "default") -> dict:
        return self.call("POST", f"/clusters/{cluster}/join-tokens")

    def join_tokens(self) -> list[dict]:
        return self.call("GET", "/join-tokens")["items"]

    def delete_join_token(self, token_id: int) -> dict:
        return self.call("DELETE", f"/join-tokens/{token_id}")

    def status(self) -> dict:
        return self.call("GET", "/status")

    # --- access ------------------------------------------------------------------------

    def whoami(self) -> dict:
        return self.call("GET", "/whoami")

    def login(self, user: str, password: str) -> dict:
        return self.call("POST", "/login", json={"user": user, "password": password})

    def users(self) -> list[dict]:
        return self.call("GET", "/users")["items"]

    def create_user(self, name: str, password: str) -> dict:
        return self.call("POST", "/users", json={"name": name, "password": password})

    def set_password(self, name: str, password: str) -> dict:
        return self.call("PUT", f"/users/{name}/password", json={"password": password})

    def delete_user(self, name: str) -> dict:
        return self.call("DELETE", f"/users/{name}")

    def groups(self) -> list[dict]:
        return self.call("GET", "/groups")["items"]

    def create_group(self, name: str, members: list[str] = ()) -> dict:
        return self.call("POST", "/groups", json={"name": name, "members": list(members)})

    def set_members(self, group: str, users: list[str]) -> dict:
        return self.call("PUT", f"/groups/{group}/members", json={"users": users})

    def delete_group(self, name: str) -> dict:
        return self.call("DELETE", f"/groups/{name}")

    def role_bindings(self) -> list[dict]:
        return self.call("GET", "/role-bindings")["items"]

    def grant(self, subject: str, role: str, scope: str = "*") -> dict:
        return self.call("POST", "/role-bindings", json={"subject": subject, "role": role, "scope": scope})

    def revoke(self, binding_id: int) -> dict:
        return self.call("DELETE", f"/role-bindings/{binding_id}")

    def tokens(self) -> list[dict]:
        return self.call("GET", "/tokens")["items"]

    def create_token(self, label: str = "", user: str | None = None, ttl: float | None = None) -> dict:
        return self.call("POST", "/tokens", json={"label": label, "user": user, "ttl": ttl})

    def delete_token(self, token_id: int) -> dict:
        return self.call("DELETE", f"/tokens/{token_id}")

    def backup(self) -> bytes:
        response = self.http.get(API + "/backup")
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.json())
        return response.content

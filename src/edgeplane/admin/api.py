"""The Admin API: FastAPI over `service.Admin`, with its OpenAPI document and offline docs.

Object endpoints are generated from the model's kinds (`kinds.KINDS`): every collection
gets list/create/get/replace/patch/delete and every singleton get/replace, with the
model class as the request schema, so a kind added to `Config` needs no code here. Every
call is authenticated (API token or password) and authorized per permission and scope;
every error is JSON: what was wrong, and for invalid input the field path of each problem.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ..collector import collector_paused, settle_collector
from ..model.config import Rule
from ..model.kinds import KINDS, SINGLETON_NAME, Kind
from ..model.load import problems_of
from . import schema
from .auth import (
    GLOBAL,
    Forbidden,
    Principal,
    Unauthorized,
    check_role,
    check_scope,
    principal_view,
)
from .backup import backup
from .draft import BULK, Conflict, Edit, Invalid, NotFound, Stored, validate
from .releases import ReviewRequired, SelfApproval, diff_text
from .secrets import keep_redacted, redact
from .service import Admin

PREFIX = "/api/v1"
WATCH_INTERVAL = 0.2  # seconds between looks for releases made by other admins on the same store


# --- errors ----------------------------------------------------------------------------


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, **extra}, status_code=status)


def _problems_response(problems: list) -> JSONResponse:
    return _error(422, "invalid", "; ".join(f"{p.path or '(top level)'}: {p.message}" for p in problems),
                  problems=[{"path": p.path, "message": p.message} for p in problems])


def install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request(_request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{**e, "loc": tuple(e["loc"][1:]) if e["loc"] and e["loc"][0] in ("body", "query", "path")
                   else tuple(e["loc"])} for e in error.errors()]
        return _problems_response(problems_of(errors))

    handlers: dict[type[Exception], Callable[[Exception], JSONResponse]] = {
        Invalid: lambda e: _problems_response(e.problems),
        NotFound: lambda e: _error(404, "not_found", str(e)),
        Conflict: lambda e: _error(409, "conflict", str(e)),
        Unauthorized: lambda e: _error(401, "unauthorized", str(e)),
        Forbidden: lambda e: _error(403, "forbidden", str(e), permission=e.permission, scopes=e.scopes),
        SelfApproval: lambda e: _error(403, "forbidden", str(e), permission="release", scopes=[]),
        PermissionError: lambda e: _error(401, "unauthorized", str(e)),
        ReviewRequired: lambda e: JSONResponse({"review": e.review, "message": str(e)}, status_code=202),
        ValueError: lambda e: _error(400, "bad_request", str(e)),
    }
    for exception, handle in handlers.items():
        app.add_exception_handler(exception, lambda _request, error, handle=handle: handle(error))


# --- authentication --------------------------------------------------------------------


def caller(request: Request) -> Principal:
    """The principal of an `Authorization: Bearer TOKEN` or `Basic user:password` header."""
    admin: Admin = request.app.state.admin
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return admin.auth.by_token(value.strip())
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            raise Unauthorized("malformed Basic credentials") from None
        return admin.auth.by_password(user, password)
    raise Unauthorized("authenticate with Authorization: Bearer TOKEN (or Basic user:password)")


Caller = Depends(caller)


def object_scopes(kind: Kind, name: str, partitions: set[str] | None) -> list[str] | None:
    """Scopes any one of which grants a call on this object, by partition or application;
    None for a shared kind (only a global grant does)."""
    if partitions is None:
        return None
    return sorted(f"partition:{p}" for p in partitions)


def require_object(who: Principal, permission: str, kind: Kind, name: str, *partition_sets: set[str] | None) -> None:
    if who.may(permission, GLOBAL):
        return
    if kind.name == "applications" and who.may(permission, f"application:{name}"):
        return
    if any(p is None for p in partition_sets) or not partition_sets:
        raise Forbidden(who, permission, [GLOBAL])
    who.require(permission, object_scopes(kind, name, set().union(*partition_sets)))


def may_read(who: Principal, kind: Kind, name: str, data: dict) -> bool:
    partitions = kind.partitions_of(data)
    if partitions is None:
        return who.holds_anywhere("read")
    return (who.may("read", GLOBAL) or (kind.name == "applications" and who.may("read", f"application:{name}"))
            or any(who.may("read", f"partition:{p}") for p in partitions))


# --- objects ---------------------------------------------------------------------------


class ObjectAccess:
    """Reads and writes of one kind's objects for the generated routes."""

    def __init__(self, admin: Admin, kind: Kind):
        self.admin = admin
        self.kind = kind

    def current(self, name: str) -> dict | None:
        with self.admin.store.reading() as connection:
            stored = self.admin.draft.one(connection, self.kind.name, name)
        return orjson.loads(stored.data) if stored is not None else None

    def listing(self, who: Principal, partition: str | None, q: str | None, limit: int, offset: int) -> dict:
        with self.admin.store.reading() as connection:
            objects = self.admin.draft.load(connection)
        items = []
        for (kind, name), stored in sorted(objects.items()):
            if kind != self.kind.name or (q and q not in name):
                continue
            data = orjson.loads(stored.data)
            bound = self.kind.partitions_of(data)
            if partition and bound is not None and partition not in bound:
                continue
            if may_read(who, self.kind, name, data):
                items.append(redact(data, self.kind.secret_paths))
        return {"items": items[offset:offset + limit], "total": len(items), "limit": limit, "offset": offset}

    def get(self, who: Principal, name: str) -> dict:
        data = self.current(name)
        if data is None:
            raise NotFound(f"no {self.kind.name}/{name}" if name else f"no {self.kind.name} set yet")
        if not may_read(who, self.kind, name, data):
            raise Forbidden(who, "read", object_scopes(self.kind, name, self.kind.partitions_of(data)) or [GLOBAL])
        return redact(data, self.kind.secret_paths)

    def put(self, who: Principal, name: str, data: dict, create: bool = False, replace: bool = False) -> dict:
        before = self.current(name)
        if before is not None:
            data = keep_secrets(data, before, self.kind)
        instance = validate(self.kind, data)
        require_object(who, "write", self.kind, name, self.kind.partitions_of(data),
                       *([self.kind.partitions_of(before)] if before is not None else []))
        changes = self.admin.draft.write(who.name, [Edit(self.kind.name, name, instance)],
                                         expect_new=create, expect_existing=replace)
        return {"object": redact(orjson.loads(instance.model_dump_json(exclude_defaults=True)), self.kind.secret_paths),
                "changes": [c["id"] for c in changes]}

    def patch(self, who: Principal, name: str, patch: dict) -> dict:
        before = self.current(name)
        if before is None:
            raise NotFound(f"no {self.kind.name}/{name}")
        return self.put(who, name, merge_patch(before, patch), replace=True)

    def delete(self, who: Principal, name: str) -> dict:
        before = self.current(name)
        if before is None:
            raise NotFound(f"no {self.kind.name}/{name}")
        require_object(who, "write", self.kind, name, self.kind.partitions_of(before))
        changes = self.admin.draft.write(who.name, [Edit(self.kind.name, name, None)], expect_existing=True)
        return {"deleted": f"{self.kind.name}/{name}", "changes": [c["id"] for c in changes]}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def keep_secrets(data: dict, before: dict, kind: Kind) -> dict:
    """A secret sent back as the redacted placeholder keeps its stored value (GET, edit, PUT)."""
    return keep_redacted(data, before, kind.secret_paths)


def object_routes(admin: Admin, kind: Kind) -> APIRouter:
    router = APIRouter(prefix=f"{PREFIX}/{kind.name}", tags=[kind.name])
    access = ObjectAccess(admin, kind)
    model = kind.model
    title = kind.name.replace("_", " ")
    if kind.singleton:
        @router.get("", summary=f"Get the {title}")
        def get_singleton(who: Principal = Caller) -> dict:
            return access.get(who, SINGLETON_NAME)

        @router.put("", summary=f"Replace the {title}", openapi_extra=body_schema(model))
        def put_singleton(body: dict = Body(...), who: Principal = Caller) -> dict:
            return access.put(who, SINGLETON_NAME, body)
        return router

    @router.get("", summary=f"List {title}")
    def list_objects(partition: str | None = None, q: str | None = Query(None, description="name contains"),
                     limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0),
                     who: Principal = Caller) -> dict:
        return access.listing(who, partition, q, limit, offset)

    @router.get("/{name}", summary=f"Get one of the {title}")
    def get(name: str, who: Principal = Caller) -> dict:
        return access.get(who, name)
    if kind.controlled_by is not None:  # read-only here: written by its controller
        return router

    @router.post("", status_code=201, summary=f"Create one of the {title}", openapi_extra=body_schema(model))
    def create(body: dict = Body(...), who: Principal = Caller) -> dict:
        name = body.get("name")
        if not isinstance(name, str):
            raise Invalid([problem("name", "Field required: every object has a name")])
        return access.put(who, name, body, create=True)

    @router.put("/{name}", summary=f"Create or replace one of the {title}", openapi_extra=body_schema(model))
    def put(name: str, body: dict = Body(...), who: Principal = Caller) -> dict:
        if body.setdefault("name", name) != name:
            raise ValueError(f"name: the body names {body['name']!r} but the path {name!r}; "
                             "to rename, create the new one and delete the old")
        return access.put(who, name, body)

    @router.patch("/{name}", summary=f"Change fields of one of the {title} (JSON merge patch)")
    def patch(name: str, body: dict = Body(...), who: Principal = Caller) -> dict:
        if body.get("name", name) != name:
            raise ValueError("name: a patch cannot rename; create the new one and delete the old")
        return access.patch(who, name, body)

    @router.delete("/{name}", summary=f"Delete one of the {title}")
    def delete(name: str, who: Principal = Caller) -> dict:
        return access.delete(who, name)
    return router


def body_schema(model: type[BaseModel]) -> dict:
    """The request body's schema in the OpenAPI document: the kind's model, which
    `install_schemas` adds to the components. (Bodies are validated by the handlers, so
    that secrets sent back redacted keep their stored values first.)"""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def inline_schema(model: type[BaseModel]) -> dict:
    """A model's JSON schema with the models it uses written in place: a body that is not
    one of the kinds (whose models are in the components)."""
    document = model.model_json_schema()
    models = document.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(models[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node
    return resolve(document)


def install_schemas(app: FastAPI) -> None:
    """Add every kind's model (and the models it uses) to the OpenAPI components."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for kind in KINDS.values():
                model_schema = kind.model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[kind.model.__name__] = model_schema
            app.openapi_schema = document
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]


def rule_routes(admin: Admin) -> APIRouter:
    """Rules as their own resources: /applications/{app}/rules/{index}; each write is a change of the application."""
    router = APIRouter(prefix=f"{PREFIX}/applications/{{app}}/rules", tags=["rules"])
    access = ObjectAccess(admin, KINDS["applications"])

    def rules_of(who: Principal, app: str) -> list:
        return list(access.get(who, app).get("rules", []))

    def store(who: Principal, app: str, rules: list) -> dict:
        return access.patch(who, app, {"rules": rules} if rules else {"rules": None})

    def at(rules: list, index: int, app: str) -> int:
        if not 0 <= index < len(rules):
            raise NotFound(f"application {app!r} has no rule {index} (it has {len(rules)})")
        return index

    @router.get("", summary="List an application's rules")
    def list_rules(app: str, who: Principal = Caller) -> dict:
        return {"items": rules_of(who, app)}

    @router.post("", status_code=201, summary="Add a rule (at the end, or at `position`)")
    def add_rule(app: str, body: Rule = Body(...), position: int | None = None, who: Principal = Caller) -> dict:
        rules = rules_of(who, app)
        rules.insert(len(rules) if position is None else position, body.model_dump(mode="json", exclude_defaults=True))
        return store(who, app, rules)

    @router.get("/{index}", summary="Get one rule")
    def get_rule(app: str, index: int, who: Principal = Caller) -> dict:
        rules = rules_of(who, app)
        return rules[at(rules, index, app)]

    @router.put("/{index}", summary="Replace one rule")
    def put_rule(app: str, index: int, body: Rule = Body(...), who: Principal = Caller) -> dict:
        rules = rules_of(who, app)
        rules[at(rules, index, app)] = body.model_dump(mode="json", exclude_defaults=True)
        return store(who, app, rules)

    @router.delete("/{index}", summary="Delete one rule")
    def delete_rule(app: str, index: int, who: Principal = Caller) -> dict:
        rules = rules_of(who, app)
        del rules[at(rules, index, app)]
        return store(who, app, rules)
    return router


class BatchItem(BaseModel):
    kind: str
    name: str = ""
    data: dict | None = Field(None, description="the object; absent or null deletes it")


class Batch(BaseModel):
    items: list[BatchItem]


def batch_routes(admin: Admin) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["objects"])

    @router.get("/kinds", summary="The kinds of object, with their JSON schemas")
    def kinds(_who: Principal = Caller) -> dict:
        return {name: {"singleton": k.singleton, "partitioned": k.partitioned,
                       "secret_fields": [".".join(p) for p in k.secret_paths], "schema": k.model.model_json_schema()}
                for name, k in KINDS.items()}

    @router.get("/objects", summary="Every object's kind, name and content hash (what apply compares)")
    def objects(kind: str | None = None, who: Principal = Caller) -> dict:
        with admin.store.reading() as connection:
            rows = connection.execute(select(schema.objects.c.kind, schema.objects.c.name, schema.objects.c.hash,
                                             schema.objects.c.change_id)).all()
        items = []
        for row in rows:
            if kind and row.kind != kind:
                continue
            items.append({"kind": row.kind, "name": row.name, "hash": row.hash, "change": row.change_id})
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        return {"items": items}

    @router.post("/batch", summary="Create, replace and delete many objects in one change set (apply)",
                 openapi_extra=BATCH_BODY)
    async def batch(request: Request, who: Principal = Caller) -> dict:
        body = await request.body()
        return await run_in_threadpool(apply_batch, admin, who, body)
    return router


BATCH_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(Batch)}}}}


def apply_batch(admin: Admin, who: Principal, body: bytes) -> dict:
    """A batch is parsed here rather than by FastAPI: 10,000 applications are millions of
    objects, made and validated with the collector paused."""
    with collector_paused():
        try:
            items = Batch.model_validate_json(body).items
        except ValidationError as error:
            raise Invalid(problems_of(error.errors(include_url=False))) from None
        with admin.store.reading() as connection:
            current = admin.draft.load(connection)
        edits = [batch_edit(who, current, index, item) for index, item in enumerate(items)]
        changes = admin.draft.write(who.name, edits)
    if len(edits) >= BULK:
        settle_collector()
    return {"changes": len(changes), "ids": [c["id"] for c in changes]}


def batch_edit(who: Principal, current: dict[tuple[str, str], Stored], index: int, item: BatchItem) -> Edit:
    kind = KINDS.get(item.kind)
    if kind is None:
        raise Invalid([problem(f"items[{index}].kind", f"unknown kind {item.kind!r}; expected one of "
                                                        f"{', '.join(KINDS)}")])
    if kind.controlled_by is not None:
        raise Invalid([problem(f"items[{index}].kind", f"{kind.name} are written only by "
                                                        f"{kind.controlled_by}, not by apply")])
    name = SINGLETON_NAME if kind.singleton else item.name
    before = current.get((kind.name, name))
    before_data = orjson.loads(before.data) if before is not None else None
    instance = None
    if item.data is not None:
        data = keep_secrets(item.data, before_data, kind) if before_data else item.data
        instance = validate(kind, data, f"{kind.name}/{name}." if name else f"{kind.name}.")
        if not kind.singleton and instance.name != name:
            raise Invalid([problem(f"items[{index}].name", f"{name!r} differs from data.name {instance.name!r}")])
    partitions = [kind.partitions_of(item.data)] if item.data is not None else []
    partitions += [kind.partitions_of(before_data)] if before_data is not None else []
    require_object(who, "write", kind, name, *partitions)
    return Edit(kind.name, name, instance)


def problem(path: str, message: str) -> Any:
    from ..model.load import Problem
    return Problem(path, message)


# --- changes, releases, review ---------------------------------------------------------


class ReleaseRequest(BaseModel):
    note: str = ""


class RollbackRequest(BaseModel):
    version: int
    note: str = ""


def release_routes(admin: Admin, hub: Hub) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["releases"])
    releases = admin.releases

    @router.get("/changes", summary="Recorded changes, newest first")
    def changes(partition: str | None = None, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                who: Principal = Caller) -> dict:
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        table = schema.changes
        with admin.store.reading() as connection:
            rows = connection.execute(select(table).order_by(table.c.id.desc())).all()
        items = [releases.change_view(r) for r in rows]
        if partition:
            items = [c for c in items if c["partitions"] is None or partition in c["partitions"]]
        return {"items": items[offset:offset + limit], "total": len(items), "limit": limit, "offset": offset}

    @router.get("/partitions/{partition}/pending", summary="Changes not released yet in this partition")
    def pending(partition: str, who: Principal = Caller) -> dict:
        who.require_any("read", [f"partition:{partition}"])
        with admin.store.reading() as connection:
            changes = releases.pending_changes(connection, partition)
        return {"partition": partition, "changes": changes, "diff": releases.diff(None, None, partition)["changes"]}

    @router.post("/partitions/{partition}/discard", summary="Drop pending changes: the draft returns to the latest release")
    def discard(partition: str, who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{partition}"])
        return releases.discard(who.name, partition)

    @router.post("/partitions/{partition}/releases", status_code=201,
                 summary="Release the draft of a partition (202 with a release request when it requires review)")
    def release(partition: str, body: ReleaseRequest = Body(ReleaseRequest()), who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{partition}"])
        return releases.release(who.name, partition, body.note)

    @router.post("/partitions/{partition}/rollback", status_code=201,
                 summary="A new release equal to an older one (the draft returns to it too)")
    def rollback(partition: str, body: RollbackRequest, who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{partition}"])
        return releases.rollback(who.name, partition, body.version, body.note)

    @router.get("/releases", summary="Releases, newest first")
    def list_releases(partition: str | None = None, limit: int = Query(50, ge=1, le=1000),
                      offset: int = Query(0, ge=0), who: Principal = Caller) -> dict:
        who.require_any("read", [f"partition:{partition}"] if partition else [])
        return {"items": releases.listing(partition, limit, offset)}

    @router.get("/releases/{version}", summary="One release as a config document (secrets redacted)")
    def get_release(version: int, who: Principal = Caller) -> dict:
        snapshot = releases.snapshot(version)
        who.require_any("read", [f"partition:{snapshot['partition']}"])
        return snapshot

    @router.get("/diff", summary="What changed between two releases, or from a partition's latest release to its draft")
    def diff(partition: str | None = None, from_: int | None = Query(None, alias="from"),
             to: int | None = None, format: str = Query("json", pattern="^(json|text)$"),
             who: Principal = Caller) -> Any:
        if to is None and partition is None:
            raise ValueError("partition: give the partition whose draft to compare, or `to` (a release)")
        result = releases.diff(from_, to, partition)
        who.require_any("read", [f"partition:{result['partition']}"])
        return PlainTextResponse(diff_text(result)) if format == "text" else result

    @router.get("/reviews", summary="Release requests of partitions that require review")
    def reviews(state: str | None = Query(None, pattern="^(open|released|rejected)$"), who: Principal = Caller) -> dict:
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        return {"items": releases.reviews(state)}

    @router.post("/reviews/{review_id}/approve", status_code=201, summary="Approve a release request: it is released")
    def approve(review_id: int, who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{releases.review_partition(review_id)}"])
        return releases.approve(who.name, review_id)

    @router.post("/reviews/{review_id}/reject", summary="Reject a release request")
    def reject(review_id: int, who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{releases.review_partition(review_id)}"])
        return releases.reject(who.name, review_id)
    return router


# --- nodes and sync --------------------------------------------------------------------


class Hub:
    """Wakes long-polling nodes: at once for releases and approvals made here, within
    WATCH_INTERVAL for those made by another admin on the same store."""

    def __init__(self, admin: Admin):
        self.admin = admin
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event = asyncio.Event()
        self.seen: tuple = ()

    def notify(self, *_args: Any) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    def marks(self) -> tuple:
        with self.admin.store.reading() as connection:
            releases = connection.execute(select(schema.counters.c.value)
                                          .where(schema.counters.c.name == "release")).scalar_one()
            states = tuple(connection.execute(select(schema.nodes.c.id, schema.nodes.c.state)
                                              .order_by(schema.nodes.c.id)).all())
        return releases, states

    async def watch(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            try:
                marks = await run_in_threadpool(self.marks)
                if marks != self.seen:
                    self.seen = marks
                    self.wake()
            except Exception as error:  # a database hiccup must not stop the watch
                print(f"edgeplane admin: watching the store failed: {error}", flush=True)
            await asyncio.sleep(WATCH_INTERVAL)


class JoinRequest(BaseModel):
    token: str
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class SyncRequest(BaseModel):
    have: int = Field(0, description="the release in the node's local store")
    running: int = Field(0, description="the release its workers serve")
    report: dict = Field(default_factory=dict, description="last error, workers, metrics: kept as sent")
    wait: float = Field(25.0, ge=0, le=60, description="seconds to wait for a new release")


def node_routes(admin: Admin, hub: Hub) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["nodes"])
    nodes = admin.nodes

    def may_manage(who: Principal, node: str) -> None:
        who.require_any("admin", [f"partition:{nodes.partition_of(node)}"])

    @router.post("/nodes/join", status_code=201, summary="A node joins with a join token (no other credential)")
    def join(body: JoinRequest, request: Request) -> dict:
        joined = nodes.join(body.token, body.name, request.client.host if request.client else "")
        hub.notify()
        return joined

    @router.post("/sync", summary="A node's long poll: its report in, the changes to its partition's latest release out")
    async def sync(body: SyncRequest, request: Request) -> Any:
        header = request.headers.get("authorization", "")
        node = await run_in_threadpool(nodes.by_secret, header.removeprefix("Bearer ").strip())
        address = request.client.host if request.client else ""
        await run_in_threadpool(nodes.report, node.id, body.running, body.report, address)
        deadline = time.monotonic() + body.wait
        while True:
            event = hub.event
            state, partition, latest = await run_in_threadpool(nodes.target, node.id)
            if state == "approved" and latest and latest != body.have:
                delta = await run_in_threadpool(nodes.delta, partition, body.have, latest)
                return Response(delta, media_type="application/json")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"state": state, "partition": partition, "version": body.have, "full": False,
                        "objects": [], "deleted": []}
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    @router.get("/nodes", summary="Nodes with their state, version, lag and last contact")
    def list_nodes(who: Principal = Caller) -> dict:
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        return {"items": nodes.listing()}

    @router.get("/nodes/{node}", summary="One node, with its last report")
    def get_node(node: str, who: Principal = Caller) -> dict:
        who.require_any("read", [f"partition:{nodes.partition_of(node)}"])
        return nodes.listing(node)[0]

    for action, state in (("approve", "approved"), ("offline", "offline"), ("online", "approved")):
        def change_state(node: str, who: Principal = Caller, state: str = state) -> dict:
            may_manage(who, node)
            changed = nodes.set_state(node, state)
            hub.notify()
            return changed
        router.add_api_route(f"/nodes/{{node}}/{action}", change_state, methods=["POST"],
                             summary=f"Mark a node {state}", name=f"node_{action}")

    @router.delete("/nodes/{node}", summary="Remove a node (it must join again)")
    def remove_node(node: str, who: Principal = Caller) -> dict:
        may_manage(who, node)
        nodes.remove(node)
        return {"removed": node}

    @router.post("/clusters/{cluster}/join-tokens", status_code=201, summary="A token nodes join this cluster with")
    def create_join_token(cluster: str, who: Principal = Caller) -> dict:
        with admin.store.reading() as connection:
            partition = nodes.cluster_partition(connection, cluster)[0]
        who.require_any("admin", [f"partition:{partition}"])
        return nodes.create_join_token(who.name, cluster)

    @router.get("/join-tokens", summary="Join tokens (without their secrets)")
    def join_tokens(who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        return {"items": nodes.join_tokens()}

    @router.delete("/join-tokens/{token_id}", summary="Revoke a join token")
    def delete_join_token(token_id: int, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        nodes.delete_join_token(token_id)
        return {"deleted": token_id}

    @router.get("/status", summary="Per partition, each release and how many nodes run it; per node its sync state")
    def status(who: Principal = Caller) -> dict:
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        return nodes.status()
    return router


# --- users, groups, roles, tokens, backup ------------------------------------------------


class NewUser(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
    password: str = Field(min_length=8)


class Password(BaseModel):
    password: str = Field(min_length=8)


class NewGroup(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    members: list[str] = Field(default_factory=list)


class Members(BaseModel):
    users: list[str]


# Lengths as the store's columns hold them (PostgreSQL refuses longer values where SQLite
# would keep them): refused here as invalid input, on either backend.
class Binding(BaseModel):
    subject: str = Field(description="user:NAME or group:NAME", pattern=r"^(user|group):[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
    role: str = Field(description="viewer, editor, releaser or admin")
    scope: str = Field("*", description="*, partition:NAME or application:NAME", max_length=160)


class NewToken(BaseModel):
    label: str = Field("", max_length=128)
    user: str | None = Field(None, description="whose token (admins only); yours when absent")
    ttl: float | None = Field(None, gt=0, description="seconds until it expires; never when absent")


class Login(BaseModel):
    user: str
    password: str


def user_routes(admin: Admin) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["users"])
    auth = admin.auth
    tables = schema

    @router.get("/whoami", summary="The caller, their groups and roles")
    def whoami(who: Principal = Caller) -> dict:
        return principal_view(who)

    @router.post("/login", summary="A password for a token (12 hours)")
    def login(body: Login) -> dict:
        who = auth.by_password(body.user, body.password)
        with admin.store.transaction() as connection:
            return auth.create_token(connection, who.name, "login", ttl=12 * 3600)

    @router.get("/users", summary="Users with their groups and roles")
    def users(who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        return {"items": auth.users()}

    @router.post("/users", status_code=201, summary="Create a user")
    def create_user(body: NewUser, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.transaction() as connection:
            if connection.execute(select(tables.users.c.name).where(tables.users.c.name == body.name)).first():
                raise Conflict(f"user {body.name!r} exists")
            auth.create_user(connection, body.name, body.password)
        return {"name": body.name}

    @router.put("/users/{name}/password", summary="Set a password (your own, or anyone's as admin)")
    def set_password(name: str, body: Password, who: Principal = Caller) -> dict:
        if name != who.name:
            who.require("admin", [GLOBAL])
        auth.set_password(name, body.password)
        return {"name": name}

    @router.delete("/users/{name}", summary="Delete a user, their tokens and memberships")
    def delete_user(name: str, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        auth.remove("user", name)
        return {"deleted": name}

    @router.get("/groups", summary="Groups and their members")
    def groups(who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.reading() as connection:
            names = connection.execute(select(tables.groups.c.name)).scalars().all()
            members = connection.execute(select(tables.group_members)).all()
        return {"items": [{"name": g, "members": sorted(m.user for m in members if m.group == g)} for g in names]}

    @router.post("/groups", status_code=201, summary="Create a group")
    def create_group(body: NewGroup, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.transaction() as connection:
            connection.execute(tables.groups.insert().values(name=body.name))
            for user in body.members:
                connection.execute(tables.group_members.insert().values(group=body.name, user=user))
        return body.model_dump()

    @router.put("/groups/{name}/members", summary="Set a group's members")
    def set_members(name: str, body: Members, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.transaction() as connection:
            connection.execute(tables.group_members.delete().where(tables.group_members.c.group == name))
            for user in body.users:
                connection.execute(tables.group_members.insert().values(group=name, user=user))
        return {"name": name, "members": body.users}

    @router.delete("/groups/{name}", summary="Delete a group")
    def delete_group(name: str, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        auth.remove("group", name)
        return {"deleted": name}

    @router.get("/role-bindings", summary="Who holds which role where")
    def bindings(who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.reading() as connection:
            return {"items": [dict(r._mapping) for r in connection.execute(select(tables.role_bindings))]}

    @router.post("/role-bindings", status_code=201, summary="Grant a role to a user or group at a scope")
    def bind(body: Binding, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        check_role(body.role)
        check_scope(body.scope)
        with admin.store.transaction() as connection:
            return auth.bind(connection, body.subject, body.role, body.scope)

    @router.delete("/role-bindings/{binding_id}", summary="Revoke a role binding")
    def unbind(binding_id: int, who: Principal = Caller) -> dict:
        who.require("admin", [GLOBAL])
        with admin.store.transaction() as connection:
            if not connection.execute(tables.role_bindings.delete().where(tables.role_bindings.c.id == binding_id)).rowcount:
                raise NotFound(f"no role binding {binding_id}")
        return {"deleted": binding_id}

    @router.get("/tokens", summary="Your API tokens (all of them, as admin)")
    def list_tokens(who: Principal = Caller) -> dict:
        table = tables.tokens
        query = select(table.c.id, table.c.user, table.c.label, table.c.at, table.c.expires)
        if not who.may("admin", GLOBAL):
            query = query.where(table.c.user == who.name)
        with admin.store.reading() as connection:
            return {"items": [dict(r._mapping) for r in connection.execute(query)]}

    @router.post("/tokens", status_code=201, summary="A new API token (shown once)")
    def create_token(body: NewToken, who: Principal = Caller) -> dict:
        user = body.user or who.name
        if user != who.name:
            who.require("admin", [GLOBAL])
        with admin.store.transaction() as connection:
            return auth.create_token(connection, user, body.label, body.ttl)

    @router.delete("/tokens/{token_id}", summary="Revoke a token")
    def delete_token(token_id: int, who: Principal = Caller) -> dict:
        table = tables.tokens
        with admin.store.transaction() as connection:
            owner = connection.execute(select(table.c.user).where(table.c.id == token_id)).scalar()
            if owner is None:
                raise NotFound(f"no token {token_id}")
            if owner != who.name:
                who.require("admin", [GLOBAL])
            connection.execute(table.delete().where(table.c.id == token_id))
        return {"deleted": token_id}

    @router.get("/backup", summary="The whole store as one JSON document (secrets stay sealed)")
    def get_backup(who: Principal = Caller) -> Response:
        who.require("admin", [GLOBAL])
        return Response(backup(admin.store), media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="edgeplane-backup.json"'})
    return router


# --- the app ---------------------------------------------------------------------------


def docs_routes(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package: the docs work without the internet."""
    from swagger_ui_bundle import swagger_ui_path
    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgeplane admin API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")


def create_app(admin: Admin) -> FastAPI:
    hub = Hub(admin)
    admin.releases.on_release = hub.notify

    async def lifespan(_app: FastAPI):  # noqa: ANN202
        watcher = asyncio.ensure_future(hub.watch())
        controller = asyncio.ensure_future(admin.canaries.run())
        yield
        watcher.cancel()
        controller.cancel()

    app = FastAPI(title="edgeplane admin API", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Objects, changes, releases, review, nodes and access of an edgeplane control plane.")
    app.state.admin = admin
    install_errors(app)
    install_schemas(app)
    for kind in KINDS.values():
        app.include_router(object_routes(admin, kind))
    from .canary_api import canary_routes, traffic_routes
    for router in (rule_routes(admin), batch_routes(admin), release_routes(admin, hub), node_routes(admin, hub),
                   user_routes(admin), canary_routes(admin), traffic_routes(admin)):
        app.include_router(router)
    docs_routes(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")
    return app

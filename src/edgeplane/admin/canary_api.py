"""The Admin API of automated canaries, and the endpoint nodes send traffic figures to.

Canary objects themselves are ordinary objects (`/api/v1/canaries`, written with `write` on
their partition); here are their runs: status with the current figures and every decision
(`read` on the partition), and the operator's pause, resume, promote and abort, which make
releases and so need `release` on the partition. Nodes report with their own credential.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from .api import PREFIX, Caller
from .auth import GLOBAL, Forbidden, Principal
from .service import Admin


class OperatorAction(BaseModel):
    note: str = Field("", description="why; kept with the decision")


class UpstreamTraffic(BaseModel):
    requests: int = Field(ge=0)
    failures: int = Field(ge=0)
    buckets_ms: dict[str, int] = Field(default_factory=dict, description="upper bound in ms (or +Inf) → count")

    @field_validator("buckets_ms")
    @classmethod
    def _bounds(cls, value: dict[str, int]) -> dict[str, int]:
        for bound, count in value.items():
            if bound != "+Inf":
                try:
                    float(bound)
                except ValueError:
                    raise ValueError(f"{bound!r}: expected an upper bound in ms such as 12.4, or +Inf") from None
            if count < 0:
                raise ValueError(f"{bound!r}: a count cannot be negative")
        return value


class TrafficReport(BaseModel):
    seconds: float = Field(ge=0, le=3600, description="the time the figures cover, ending now")
    upstreams: dict[str, UpstreamTraffic] = Field(default_factory=dict)


def canary_routes(admin: Admin) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["canaries"])
    canaries = admin.canaries

    @router.get("/canary-runs", summary="Every canary: phase, released weight, failed checks, last decision")
    def runs(who: Principal = Caller) -> dict:
        if not who.holds_anywhere("read"):
            raise Forbidden(who, "read", [GLOBAL])
        return {"items": [c for c in canaries.listing() if who.may("read", f"partition:{c['partition']}")]}

    @router.get("/canaries/{name}/status", summary="A canary's run, its current figures and its decisions")
    def status(name: str, who: Principal = Caller) -> dict:
        who.require_any("read", [f"partition:{canaries.partition_of(name)}"])
        return canaries.view(name)

    @router.get("/canaries/{name}/decisions", summary="A canary's decisions, newest first, with reasons and figures")
    def decisions(name: str, limit: int = Query(50, ge=1, le=1000), who: Principal = Caller) -> dict:
        who.require_any("read", [f"partition:{canaries.partition_of(name)}"])
        return {"items": canaries.decisions(name, limit)}

    @router.post("/canaries/{name}/{action}", summary="pause, resume, promote or abort a canary (an operator's decision)")
    def operate(name: str, action: Literal["pause", "resume", "promote", "abort"],
                body: OperatorAction = Body(OperatorAction()), who: Principal = Caller) -> dict:
        who.require_any("release", [f"partition:{canaries.partition_of(name)}"])
        return canaries.operate(who.name, name, action, body.note)
    return router


def traffic_routes(admin: Admin) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["nodes"])

    @router.post("/nodes/traffic", summary="A node's traffic figures since its last report; answers when to send the next")
    async def traffic(body: TrafficReport, request: Request) -> dict:
        header = request.headers.get("authorization", "")
        node = await run_in_threadpool(admin.nodes.by_secret, header.removeprefix("Bearer ").strip())
        partition = await run_in_threadpool(admin.nodes.partition_of, node.name)
        if node.state != "approved":
            return {"next_in": admin.canaries.report_interval(partition), "recorded": False}
        upstreams = {name: series.model_dump() for name, series in body.upstreams.items() if series.requests}
        next_in = await run_in_threadpool(admin.canaries.record_report, node, partition, body.seconds, upstreams)
        return {"next_in": next_in, "recorded": True}
    return router

"""GET /healthz (the process answers), /readyz (Qdrant and the backend answer), /metrics."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from ragtune.errors import RagtuneError
from service.deps import BackendDep, MetricsDep, RetrievalDep, SettingsDep

router = APIRouter(tags=["health"])
# A readiness probe must answer quickly even when a dependency hangs.
_CHECK_TIMEOUT_S = 5.0


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    # Per dependency (qdrant, backend): "ok", or why not.
    checks: dict[str, str]


class Liveness(BaseModel):
    status: Literal["ok"]


@router.get("/healthz", response_model=Liveness)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "A dependency did not answer; `checks` says which and why.",
            "headers": {
                "Retry-After": {"schema": {"type": "integer"}, "required": True},
            },
        }
    },
)
async def readyz(
    retrieval: RetrievalDep, backend: BackendDep, settings: SettingsDep
) -> JSONResponse:
    checks: dict[str, Any] = {}
    for name, probe in (("qdrant", retrieval.ping()), ("backend", backend.health())):
        try:
            await asyncio.wait_for(probe, _CHECK_TIMEOUT_S)
            checks[name] = "ok"
        except TimeoutError:
            checks[name] = f"no answer within {_CHECK_TIMEOUT_S:g} s"
        except RagtuneError as exc:
            checks[name] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if ready:
        return JSONResponse(body)
    headers = {"Retry-After": str(settings.api.retry_after_s)}
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

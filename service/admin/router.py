"""The admin API (mounted under /admin only when admin.token is set): the adapter registry,
loading and unloading, alias flips and rollbacks, backend status and the audit log."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from adapters.registry import AliasRecord
from service.admin.schemas import (
    NAME,
    REF,
    AliasRequest,
    AuditEntries,
    RegisterRequest,
    RegisterResponse,
    RegistryListing,
    Status,
)
from service.deps import AdminDep, SettingsDep, state_of
from service.limits import TooLarge
from service.openapi import BODY, errors

# Upload pieces are gathered up to this size, then written on a worker thread.
_WRITE_BYTES = 1 << 20
# The upload's body: read as a stream by the endpoint, so FastAPI cannot document it.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ARCHIVE = {
    "required": True,
    "description": "The PEFT adapter folder as a zip or tar(.gz) archive.",
    "content": {
        "application/zip": _BINARY,
        "application/gzip": _BINARY,
        "application/x-tar": _BINARY,
        "application/octet-stream": _BINARY,
    },
}


def authenticate(request: Request) -> str:
    """The caller's audit name if it sent the admin bearer token: 401 without one, 403 wrong."""
    token = state_of(request).settings.admin.token
    if token is None:  # the router is not mounted without a token; belt and braces
        raise HTTPException(403, "the admin API is off: set RAGTUNE_ADMIN__TOKEN")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "admin endpoints need 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "the admin token is wrong")
    client = request.client.host if request.client else "unknown"
    return f"admin@{client}"


class _AuthenticatedRoute(APIRoute):
    """Checks the token before FastAPI reads the body: a dependency would run only after the
    JSON is parsed, so an unauthenticated caller would learn about the body's validity."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.state.admin_actor = authenticate(request)
            return await handler(request)

        return authenticated


def _actor(request: Request) -> str:
    actor: str = request.state.admin_actor
    return actor


Actor = Annotated[str, Depends(_actor)]
# Path segments, with the registry's rules documented (its checks word the refusals).
Ref = Annotated[str, Path(json_schema_extra={"pattern": REF})]
AliasName = Annotated[str, Path(json_schema_extra={"pattern": NAME})]
Admin = AdminDep
# Documents the bearer scheme in the OpenAPI schema (/docs offers "Authorize"); the check
# itself is _AuthenticatedRoute's, done before this runs.
_documented = HTTPBearer(
    scheme_name="adminToken", description="The admin token (admin.token)", auto_error=False
)
# Every admin answer may be these: no token, a wrong one.
_AUTH = (401, 403)
router = APIRouter(
    tags=["admin"],
    route_class=_AuthenticatedRoute,
    dependencies=[Security(_documented)],
    responses=errors(*_AUTH),
)


@router.get("/adapters", response_model=RegistryListing)
async def list_adapters(admin: Admin) -> RegistryListing:
    return await admin.listing()


@router.post(
    "/adapters",
    response_model=RegisterResponse,
    status_code=201,
    responses=errors(404, *BODY, 503),
)
async def register(body: RegisterRequest, admin: Admin, actor: Actor) -> RegisterResponse:
    """Register a folder under the adapter root; with `alias`, load it and point the alias."""
    record = await admin.register_path(actor, body.path, body.name, body.description, body.alias)
    alias = await admin.set_alias(actor, body.alias, record.ref) if body.alias else None
    return RegisterResponse(adapter=record, alias=alias)


@router.post(
    "/adapters/upload",
    response_model=RegisterResponse,
    status_code=201,
    responses=errors(400, 404, *BODY, 503),
    openapi_extra={"requestBody": _ARCHIVE},
)
async def upload(
    request: Request,
    settings: SettingsDep,
    admin: Admin,
    actor: Actor,
    name: Annotated[str, Query(json_schema_extra={"pattern": NAME})],
    description: Annotated[str, Query()] = "",
    alias: Annotated[str | None, Query(json_schema_extra={"pattern": NAME})] = None,
) -> RegisterResponse:
    """Register an adapter sent as the body: a zip or tar(.gz) of the PEFT folder."""
    await admin.check_names(actor, name, alias)
    limit = settings.admin.max_upload_bytes
    scratch = admin.registry.root / ".uploads"
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
    # Up to admin.max_upload_bytes to write: never on the event loop.
    async with anyio.NamedTemporaryFile(dir=str(scratch), suffix=".upload") as spool:
        received = 0
        pending: list[bytes] = []  # pieces not written yet, joined by the write
        try:
            async for piece in request.stream():
                received += len(piece)
                if received > limit:
                    raise TooLarge(limit)
                pending.append(piece)
                if sum(map(len, pending)) >= _WRITE_BYTES:
                    await spool.writelines(pending)
                    pending = []
        except TooLarge as exc:
            await admin.refused(actor, "upload", name, str(exc.detail))
            raise
        await spool.writelines(pending)
        await spool.flush()
        if not received:
            await admin.refused(actor, "upload", name, "empty body")
            raise HTTPException(400, "the body is empty; send the adapter as a zip or tar.gz")
        archive = FilePath(spool.wrapped.name)
        record = await admin.register_archive(
            actor, archive, name, description, settings.adapters.max_adapter_bytes
        )
    result = await admin.set_alias(actor, alias, record.ref) if alias else None
    return RegisterResponse(adapter=record, alias=result)


@router.delete("/adapters/{ref}", status_code=204, responses=errors(404, 422))
async def delete(ref: Ref, admin: Admin, actor: Actor) -> None:
    await admin.delete(actor, ref)


@router.post("/adapters/{ref}/load", status_code=204, responses=errors(404, 422, 503))
async def load(ref: Ref, admin: Admin, actor: Actor) -> None:
    await admin.load(actor, ref)


@router.post("/adapters/{ref}/unload", status_code=204, responses=errors(404, 422, 503))
async def unload(ref: Ref, admin: Admin, actor: Actor) -> None:
    await admin.unload(actor, ref)


@router.put("/aliases/{alias}", response_model=AliasRecord, responses=errors(404, 409, *BODY, 503))
async def set_alias(
    alias: AliasName, body: AliasRequest, admin: Admin, actor: Actor
) -> AliasRecord:
    """Load the target on every backend, flip the alias, drain and unload the old version;
    with `require_suite`, only once the suite's gates hold for the target."""
    if body.require_suite is not None:
        return await admin.set_alias_gated(actor, alias, body.target, body.require_suite)
    return await admin.set_alias(actor, alias, body.target)


@router.delete("/aliases/{alias}", status_code=204, responses=errors(404, 422, 503))
async def remove_alias(alias: AliasName, admin: Admin, actor: Actor) -> None:
    """Forget an alias no route serves; the version it pointed at is unloaded once drained."""
    await admin.remove_alias(actor, alias)


@router.post(
    "/aliases/{alias}/rollback", response_model=AliasRecord, responses=errors(404, 422, 503)
)
async def rollback(alias: AliasName, admin: Admin, actor: Actor) -> AliasRecord:
    return await admin.rollback(actor, alias)


@router.get("/status", response_model=Status)
async def status(admin: Admin) -> Status:
    return await admin.status()


@router.get("/audit", response_model=AuditEntries, responses=errors(422))
async def audit(admin: Admin, limit: Annotated[int, Query(ge=1, le=1_000)] = 100) -> AuditEntries:
    return AuditEntries(entries=await asyncio.to_thread(admin.audit.tail, limit))

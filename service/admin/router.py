"""The admin API (mounted under /admin only when admin.token is set): the adapter registry,
loading and unloading, alias flips and rollbacks, backend status and the audit log."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute

from adapters.registry import AliasRecord
from service.admin.schemas import (
    AliasRequest,
    AuditEntries,
    RegisterRequest,
    RegisterResponse,
    RegistryListing,
    Status,
)
from service.deps import AdminDep, SettingsDep, state_of
from service.limits import TooLarge

# Upload pieces are gathered up to this size, then written on a worker thread.
_WRITE_BYTES = 1 << 20


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
Admin = AdminDep
router = APIRouter(tags=["admin"], route_class=_AuthenticatedRoute)


@router.get("/adapters", response_model=RegistryListing)
async def list_adapters(admin: Admin) -> RegistryListing:
    return await admin.listing()


@router.post("/adapters", response_model=RegisterResponse, status_code=201)
async def register(body: RegisterRequest, admin: Admin, actor: Actor) -> RegisterResponse:
    """Register a folder under the adapter root; with `alias`, load it and point the alias."""
    record = await admin.register_path(actor, body.path, body.name, body.description, body.alias)
    alias = await admin.set_alias(actor, body.alias, record.ref) if body.alias else None
    return RegisterResponse(adapter=record, alias=alias)


@router.post("/adapters/upload", response_model=RegisterResponse, status_code=201)
async def upload(
    request: Request,
    settings: SettingsDep,
    admin: Admin,
    actor: Actor,
    name: Annotated[str, Query()],
    description: Annotated[str, Query()] = "",
    alias: Annotated[str | None, Query()] = None,
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
        archive = Path(spool.wrapped.name)
        record = await admin.register_archive(
            actor, archive, name, description, settings.adapters.max_adapter_bytes
        )
    result = await admin.set_alias(actor, alias, record.ref) if alias else None
    return RegisterResponse(adapter=record, alias=result)


@router.delete("/adapters/{ref}", status_code=204)
async def delete(ref: str, admin: Admin, actor: Actor) -> None:
    await admin.delete(actor, ref)


@router.post("/adapters/{ref}/load", status_code=204)
async def load(ref: str, admin: Admin, actor: Actor) -> None:
    await admin.load(actor, ref)


@router.post("/adapters/{ref}/unload", status_code=204)
async def unload(ref: str, admin: Admin, actor: Actor) -> None:
    await admin.unload(actor, ref)


@router.put("/aliases/{alias}", response_model=AliasRecord)
async def set_alias(alias: str, body: AliasRequest, admin: Admin, actor: Actor) -> AliasRecord:
    """Load the target on every backend, flip the alias, drain and unload the old version;
    with `require_suite`, only once the suite's gates hold for the target."""
    if body.require_suite is not None:
        return await admin.set_alias_gated(actor, alias, body.target, body.require_suite)
    return await admin.set_alias(actor, alias, body.target)


@router.delete("/aliases/{alias}", status_code=204)
async def remove_alias(alias: str, admin: Admin, actor: Actor) -> None:
    """Forget an alias no route serves; the version it pointed at is unloaded once drained."""
    await admin.remove_alias(actor, alias)


@router.post("/aliases/{alias}/rollback", response_model=AliasRecord)
async def rollback(alias: str, admin: Admin, actor: Actor) -> AliasRecord:
    return await admin.rollback(actor, alias)


@router.get("/status", response_model=Status)
async def status(admin: Admin) -> Status:
    return await admin.status()


@router.get("/audit", response_model=AuditEntries)
async def audit(admin: Admin, limit: Annotated[int, Query(ge=1, le=1_000)] = 100) -> AuditEntries:
    return AuditEntries(entries=await asyncio.to_thread(admin.audit.tail, limit))

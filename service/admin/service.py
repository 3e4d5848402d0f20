"""Admin operations on the registry and the backends, each one written to the audit log."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from adapters.archive import extract_archive, resolve_under
from adapters.audit import AuditLog
from adapters.registry import AdapterRecord, AliasRecord, Registry
from ragtune.errors import InvalidInput, RagtuneError
from service.admin.schemas import BackendStatus, RegistryListing, Status
from service.hotswap.manager import AdapterManager

T = TypeVar("T")


class AdminService:
    def __init__(self, registry: Registry, manager: AdapterManager, audit: AuditLog) -> None:
        self.registry = registry
        self.manager = manager
        self.audit = audit

    async def _audited(
        self, actor: str, action: str, target: str, op: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            result = await op()
        except RagtuneError as exc:
            await asyncio.to_thread(self.audit.append, actor, action, target, "refused", str(exc))
            raise
        except BaseException as exc:
            await asyncio.to_thread(self.audit.append, actor, action, target, "failed", repr(exc))
            raise
        await asyncio.to_thread(self.audit.append, actor, action, target, "ok")
        return result

    async def listing(self) -> RegistryListing:
        state = await asyncio.to_thread(self.registry.snapshot)
        return RegistryListing(
            revision=state.revision, adapters=list(state.records), aliases=dict(state.aliases)
        )

    async def register_path(
        self, actor: str, path: str, name: str, description: str
    ) -> AdapterRecord:
        async def op() -> AdapterRecord:
            folder = resolve_under(self.registry.root, path)
            if not folder.is_dir():
                raise InvalidInput(f"{path!r} is not a folder under the adapter root")
            return await asyncio.to_thread(self.registry.register, folder, name, description)

        return await self._audited(actor, "register", f"{name} from {path}", op)

    async def register_archive(
        self, actor: str, archive: Path, name: str, description: str, max_bytes: int
    ) -> AdapterRecord:
        async def op() -> AdapterRecord:
            work = Path(tempfile.mkdtemp(prefix="upload-", dir=self._scratch()))
            try:
                folder = await asyncio.to_thread(
                    extract_archive, archive, work / "adapter", max_bytes=max_bytes
                )
                return await asyncio.to_thread(self.registry.register, folder, name, description)
            finally:
                shutil.rmtree(work, ignore_errors=True)

        return await self._audited(actor, "upload", name, op)

    def _scratch(self) -> Path:
        scratch = self.registry.root / ".uploads"
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    async def set_alias(self, actor: str, alias: str, target: str) -> AliasRecord:
        return await self._audited(
            actor, "alias", f"{alias} -> {target}", lambda: self.manager.set_alias(alias, target)
        )

    async def rollback(self, actor: str, alias: str) -> AliasRecord:
        return await self._audited(actor, "rollback", alias, lambda: self.manager.rollback(alias))

    async def load(self, actor: str, ref: str) -> None:
        await self._audited(actor, "load", ref, lambda: self.manager.load(ref))

    async def unload(self, actor: str, ref: str) -> None:
        await self._audited(actor, "unload", ref, lambda: self.manager.unload(ref))

    async def delete(self, actor: str, ref: str) -> None:
        async def op() -> None:
            if ref in self.manager.loaded():
                raise InvalidInput(f"{ref} is loaded; unload it first")
            await asyncio.to_thread(self.registry.delete, ref)

        await self._audited(actor, "delete", ref, op)

    async def status(self) -> Status:
        await self.manager.sync()
        state = await asyncio.to_thread(self.registry.snapshot)
        backends = [
            BackendStatus(
                index=m.index,
                name=m.name,
                up=m.up,
                loaded=m.loaded,
                missing=m.missing,
                extra=m.extra,
                error=m.error,
            )
            for m in self.manager.members
        ]
        registry = {alias: rec.target for alias, rec in state.aliases.items()}
        active = self.manager.active()
        drift = active != registry or any(not b.up or b.missing for b in backends)
        return Status(
            revision=state.revision,
            active=active,
            registry=registry,
            inflight=self.manager.inflight(),
            backends=backends,
            drift=drift,
        )

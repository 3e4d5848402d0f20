"""Admin operations on the registry and the backends, each one written to the audit log."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from adapters.archive import extract_archive, resolve_under
from adapters.audit import AuditLog
from adapters.gating import GateVerdict, record_verdict, refuse_unless_passed
from adapters.policy import check_delete, check_unalias
from adapters.registry import AdapterRecord, AliasRecord, Registry, check_name
from ingest.backends.base import VectorStore
from ragtune.errors import InvalidInput, NotFound, RagtuneError
from service.admin.gate import GateServices, SuiteGate
from service.admin.schemas import (
    BackendStatus,
    CollectionStatus,
    RegistryListing,
    Status,
    StoreStatus,
)
from service.hotswap.manager import AdapterManager
from service.rag.retrieval import RetrievalService
from service.routes.loader import route_adapters
from service.routes.schemas import RouteSpec

T = TypeVar("T")


class AdminService:
    def __init__(
        self,
        registry: Registry,
        manager: AdapterManager,
        audit: AuditLog,
        routes: Mapping[str, RouteSpec],
        gate: tuple[SuiteGate, GateServices] | None = None,
        retrieval: RetrievalService | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.registry = registry
        self.manager = manager
        self.audit = audit
        self.routes = routes
        # The suite runner for gated flips and the services it runs on; None: refused.
        self.gate = gate

    async def _audited(
        self,
        actor: str,
        action: str,
        target: str,
        op: Callable[[], Awaitable[T]],
        detail: Callable[[], str] = str,
    ) -> T:
        try:
            result = await op()
        except RagtuneError as exc:
            await asyncio.to_thread(self.audit.append, actor, action, target, "refused", str(exc))
            raise
        except BaseException as exc:
            await asyncio.to_thread(self.audit.append, actor, action, target, "failed", repr(exc))
            raise
        await asyncio.to_thread(self.audit.append, actor, action, target, "ok", detail())
        return result

    async def refused(self, actor: str, action: str, target: str, detail: str) -> None:
        """Record a request refused before it reached an operation (an oversized upload)."""
        await asyncio.to_thread(self.audit.append, actor, action, target, "refused", detail)

    async def check_names(self, actor: str, name: str, alias: str | None) -> None:
        """Refuse (and record) a bad name or alias before an upload's body is read."""
        try:
            _check_names(name, alias)
        except InvalidInput as exc:
            await self.refused(actor, "upload", name, str(exc))
            raise

    async def listing(self) -> RegistryListing:
        state = await asyncio.to_thread(self.registry.snapshot)
        return RegistryListing(
            revision=state.revision, adapters=list(state.records), aliases=dict(state.aliases)
        )

    async def register_path(
        self, actor: str, path: str, name: str, description: str, alias: str | None = None
    ) -> AdapterRecord:
        """Validate and store a folder under the adapter root; `alias` is only checked here
        (pointed by the caller once this returns), so a bad one stores nothing."""

        async def op() -> AdapterRecord:
            _check_names(name, alias)
            return await asyncio.to_thread(self._register_folder, path, name, description)

        return await self._audited(actor, "register", f"{name} from {path}", op)

    def _register_folder(self, path: str, name: str, description: str) -> AdapterRecord:
        folder = resolve_under(self.registry.root, path)
        if not folder.is_dir():
            raise InvalidInput(f"{path!r} is not a folder under the adapter root")
        return self.registry.register(folder, name, description)

    async def register_archive(
        self, actor: str, archive: Path, name: str, description: str, max_bytes: int
    ) -> AdapterRecord:
        async def op() -> AdapterRecord:
            work = await asyncio.to_thread(self._work_folder)
            try:
                folder = await asyncio.to_thread(
                    extract_archive, archive, work / "adapter", max_bytes=max_bytes
                )
                return await asyncio.to_thread(self.registry.register, folder, name, description)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)

        return await self._audited(actor, "upload", name, op)

    def _work_folder(self) -> Path:
        scratch = self.registry.root / ".uploads"
        scratch.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="upload-", dir=scratch))

    async def set_alias(self, actor: str, alias: str, target: str) -> AliasRecord:
        """Point `alias` at `target` (a ref, or another alias: its current target, as the CLI
        does); the alias name is checked before anything is loaded."""

        async def op() -> AliasRecord:
            check_name(alias, "alias")
            record = await asyncio.to_thread(self.registry.resolve, target)
            return await self.manager.set_alias(alias, record.ref)

        return await self._audited(actor, "alias", f"{alias} -> {target}", op)

    async def set_alias_gated(self, actor: str, alias: str, target: str, suite: str) -> AliasRecord:
        """Point `alias` at `target` only if the suite at `suite` (a path on this server)
        passes with the version served in the alias's place; GateFailed names the failing
        gates. The summary is kept on the version's record either way."""
        verdicts: list[GateVerdict] = []

        async def op() -> AliasRecord:
            check_name(alias, "alias")
            if self.gate is None:
                raise InvalidInput(
                    "require_suite: this server was started without eval gating (an app built "
                    "by `ragtune serve` has it); flip without require_suite, or run "
                    "`ragtune adapters alias ALIAS REF --require-suite SUITE.yaml` on its host"
                )
            run_gate, services = self.gate
            path = Path(suite).expanduser()
            if not await asyncio.to_thread(path.is_file):
                raise NotFound(
                    f"require_suite: {suite!r} is not a file on the server (a path relative to "
                    f"its working directory, or absolute)"
                )
            record = await asyncio.to_thread(self.registry.resolve, target)
            # Held from the run to the flip, so the measured version is not unloaded between.
            async with self.manager.hold(record.ref):
                verdict = await run_gate(path, alias, record.ref, services)
                verdicts.append(verdict)
                await asyncio.to_thread(record_verdict, self.registry, record.ref, verdict)
                refuse_unless_passed(verdict, alias, record.ref)
                return await self.manager.set_alias(alias, record.ref)

        return await self._audited(
            actor,
            "alias",
            f"{alias} -> {target} (require_suite {suite})",
            op,
            lambda: verdicts[0].describe() if verdicts else "",
        )

    async def remove_alias(self, actor: str, alias: str) -> None:
        async def op() -> None:
            check_unalias(alias, route_adapters(self.routes))
            await asyncio.to_thread(self.registry.remove_alias, alias)
            await self.manager.sync()  # retires the version it pointed at

        await self._audited(actor, "unalias", alias, op)

    async def rollback(self, actor: str, alias: str) -> AliasRecord:
        return await self._audited(actor, "rollback", alias, lambda: self.manager.rollback(alias))

    async def load(self, actor: str, ref: str) -> None:
        await self._audited(actor, "load", ref, lambda: self.manager.load(ref))

    async def unload(self, actor: str, ref: str) -> None:
        await self._audited(actor, "unload", ref, lambda: self.manager.unload(ref))

    async def delete(self, actor: str, ref: str) -> None:
        """Delete a version no alias uses and no backend holds."""

        async def op() -> None:
            # Aliases first: an aliased version is loaded too, but unloading it is refused,
            # so "unload it first" would send the caller in a circle.
            check_delete(ref, await asyncio.to_thread(self.registry.aliases))
            if ref in self.manager.loaded():
                raise InvalidInput(f"{ref} is loaded; unload it first")
            await asyncio.to_thread(self.registry.delete, ref)

        await self._audited(actor, "delete", ref, op)

    async def status(self) -> Status:
        await self.manager.sync()
        state = await asyncio.to_thread(self.registry.snapshot)
        backends = [
            BackendStatus.model_validate(m, from_attributes=True) for m in self.manager.members
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
            store=await self.retrieval.on_store(_store_status) if self.retrieval else None,
        )


def _store_status(store: VectorStore) -> StoreStatus:
    collections = []
    for name in store.names():
        index = store.index_status(name)
        collections.append(
            CollectionStatus(
                name=name,
                points=store.count(name),
                dense_indexed=index.dense_indexed if index else None,
                segments=index.segments if index else None,
            )
        )
    return StoreStatus(
        kind=store.kind, where=store.where, collections=collections, not_migrated=list(store.legacy)
    )


def _check_names(name: str, alias: str | None) -> None:
    check_name(name)
    if alias is not None:
        check_name(alias, "alias")

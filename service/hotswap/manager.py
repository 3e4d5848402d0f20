"""Which adapter version each alias serves, on every backend, swapped without dropping requests.

A swap loads the new version under its versioned name (`name@version`) on every backend,
then flips the alias (new requests go to the new version), waits for requests still running
on the old version, then unloads it. Requests are only ever routed to a loaded version, and a
versioned name is never reused for other weights, so no engine can serve stale ones.

The registry on disk is the source of truth. Every `sync_interval_s`, the manager re-reads it
(following flips made by other processes or the CLI) and reconciles each backend: a replica
that restarted empty gets its adapters back before it rejoins the rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from adapters.registry import REGISTRY_FILE, AliasRecord, Registry
from engine.pool import BackendPool
from ragtune.errors import (
    AdapterError,
    InvalidInput,
    NotFound,
    RagtuneError,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)


@dataclass
class MemberStatus:
    """One backend's adapters against what the registry says it should hold."""

    index: int
    name: str
    up: bool
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    error: str | None = None


class AdapterManager:
    def __init__(
        self,
        registry: Registry,
        pool: BackendPool,
        *,
        sync_interval_s: float,
        drain_timeout_s: float,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self._interval = sync_interval_s
        self._drain_timeout = drain_timeout_s
        self._active: dict[str, str] = {}  # alias -> version ref that requests are sent to
        self._loaded: set[str] = set()  # refs that every backend in rotation should hold
        self._pinned: set[str] = set()  # refs loaded by an admin without an alias
        self._held: Counter[str] = Counter()  # refs loaded for an evaluation (hold())
        self._inflight: Counter[str] = Counter()
        self._idle = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._revision: int | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._restoring: dict[tuple[int, str], asyncio.Task[bool]] = {}
        # alias -> why the version the registry names could not be loaded (its files are
        # damaged, the engine refused it): the alias stays where it was; retried every sync.
        self._failed: dict[str, RagtuneError] = {}
        self._loop: asyncio.Task[None] | None = None
        self.members: list[MemberStatus] = []
        # A replica that restarted between two syncs answers NotFound for the adapters it
        # lost: the pool asks here to load the version on it and retries the request there.
        pool.restore = self._restore

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the registry's aliases now, then follow it in the background."""
        try:
            await self.sync()
        except RagtuneError as exc:
            # The API still starts: routes on the base model work, and the loop retries.
            log.error("adapters could not be loaded at start-up: %s", exc)
        self._loop = asyncio.create_task(self._run(), name="adapter-sync")

    async def stop(self) -> None:
        pending = [self._loop, *self._retiring, *self._restoring.values()]
        tasks = [t for t in pending if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except RagtuneError as exc:
                log.warning("adapter sync failed, retrying in %.1f s: %s", self._interval, exc)
            except Exception:
                log.exception("adapter sync failed unexpectedly")

    # -- requests -------------------------------------------------------------------

    async def check(self, alias: str | None) -> None:
        """Raise NotFound unless `alias` (None: the base model) can be served now."""
        if alias is not None and alias not in self._active:
            # An alias made a moment ago by another process: look before refusing (the
            # registry only; reconciling the backends is the loop's job, not a request's).
            await self.sync(reconcile=False)
            if alias in self._failed:
                failed = self._failed[alias]
                raise type(failed)(str(failed))
            if alias not in self._active:
                raise NotFound(
                    f"adapter alias {alias!r} is not in the registry (aliases: "
                    f"{', '.join(sorted(self._active)) or 'none'}); register an adapter and "
                    f"point the alias at it: `ragtune adapters register DIR --name N --alias "
                    f"{alias}`"
                )

    @contextlib.asynccontextmanager
    async def lease(
        self, alias: str | None, *, candidate: str | None = None
    ) -> AsyncIterator[str | None]:
        """The version `alias` serves now (None: the base model), held until the block ends
        so that a swap does not unload it under the request. `candidate`: a version held for
        an evaluation (`hold`), served instead of the alias's."""
        if candidate is not None:
            if not self._held[candidate]:
                raise InvalidInput(
                    f"{candidate} is not held for an evaluation; only an eval-gated alias flip "
                    f"serves a version no alias points at"
                )
            ref = candidate
        elif alias is None:
            yield None
            return
        else:
            await self.check(alias)
            ref = self._active[alias]
        self._inflight[ref] += 1
        try:
            yield ref
        finally:
            self._inflight[ref] -= 1
            if not self._inflight[ref]:
                del self._inflight[ref]
                async with self._idle:
                    self._idle.notify_all()

    def active(self) -> dict[str, str]:
        return dict(self._active)

    def loaded(self) -> set[str]:
        return set(self._loaded)

    def inflight(self) -> dict[str, int]:
        return dict(self._inflight)

    # -- admin operations -------------------------------------------------------------

    async def set_alias(self, alias: str, ref: str) -> AliasRecord:
        """Load `ref` everywhere, point `alias` at it, then retire the old version."""
        async with self._lock:
            await self._ensure_loaded(ref)
            record = await asyncio.to_thread(self.registry.set_alias, alias, ref)
            await self._switch(alias, record.target)
            return record

    async def rollback(self, alias: str) -> AliasRecord:
        """Point `alias` back at its previous version, loading it first."""
        async with self._lock:
            current = (await asyncio.to_thread(self.registry.aliases)).get(alias)
            if current is None:
                raise NotFound(f"alias {alias!r} does not exist")
            if current.previous is None:
                raise InvalidInput(f"alias {alias!r} has no previous version to roll back to")
            await self._ensure_loaded(current.previous)
            record = await asyncio.to_thread(self.registry.rollback, alias)
            await self._switch(alias, record.target)
            return record

    async def load(self, ref: str) -> None:
        """Load a version on every backend without an alias (to warm it before a flip)."""
        async with self._lock:
            await asyncio.to_thread(self.registry.get, ref)
            await self._ensure_loaded(ref)
            self._pinned.add(ref)

    @contextlib.asynccontextmanager
    async def hold(self, ref: str) -> AsyncIterator[None]:
        """Keep `ref` loaded on every backend while the block runs, without an alias, so an
        eval-gated flip can measure it first (`lease(..., candidate=ref)`). It counts against
        the backends' max_loras; afterwards it is unloaded unless an alias serves it or an
        admin loaded it."""
        async with self._lock:
            await asyncio.to_thread(self.registry.get, ref)
            await self._ensure_loaded(ref)
            self._held[ref] += 1
        try:
            yield
        finally:
            self._held[ref] -= 1
            if not self._held[ref]:
                del self._held[ref]
                if ref not in self._active.values() and ref not in self._pinned:
                    self._retire(ref)

    async def unload(self, ref: str) -> None:
        """Unload a version no alias serves; refused while an alias points at it."""
        async with self._lock:
            users = sorted(a for a, r in self._active.items() if r == ref)
            if users:
                raise InvalidInput(
                    f"{ref} is served by alias {', '.join(map(repr, users))}; point the alias "
                    f"at another version first"
                )
            if ref not in self._loaded:
                raise NotFound(f"{ref} is not loaded")
            self._pinned.discard(ref)
            self._retire(ref)

    # -- reconciliation -------------------------------------------------------------

    async def sync(self, reconcile: bool = True) -> None:
        """Follow the registry (aliases flipped elsewhere) and reconcile every backend."""
        async with self._lock:
            state = await asyncio.to_thread(self.registry.snapshot)
            if state.revision == 0 and ((self._revision or 0) > 0 or self._active):
                # registry.json was there and is gone: far more often a volume that is not
                # mounted (yet) than a registry emptied on purpose, which goes through the
                # admin API and writes a new revision. Retiring every alias would take every
                # adapter route down: keep serving what was read last, and say so.
                raise UpstreamUnavailable(
                    f"the adapter registry's {REGISTRY_FILE} at {self.registry.root} has "
                    f"disappeared (aliases served: {', '.join(sorted(self._active)) or 'none'}); "
                    "is its volume "
                    "mounted? The aliases read last are still served until it is back"
                )
            if state.revision != self._revision or self._failed:
                failed: dict[str, RagtuneError] = {}
                for alias, record in state.aliases.items():
                    if self._active.get(alias) != record.target:
                        try:
                            await self._ensure_loaded(record.target)
                        except RagtuneError as exc:
                            # One version that cannot be loaded holds back no other alias.
                            log.warning("alias %s stays unchanged: %s", alias, exc)
                            failed[alias] = exc
                            continue
                        await self._switch(alias, record.target)
                self._failed = failed
                for alias in set(self._active) - set(state.aliases):
                    old = self._active.pop(alias)
                    self._retire(old)
                self._revision = state.revision
            if reconcile:
                await self._reconcile()

    async def _switch(self, alias: str, ref: str) -> None:
        old = self._active.get(alias)
        self._active[alias] = ref
        if old is not None and old != ref:
            log.info("alias %s: %s -> %s", alias, old, ref)
            self._retire(old)
        # A drain waiting on `ref` (flipped away, now back) has nothing left to do.
        async with self._idle:
            self._idle.notify_all()

    async def _ensure_loaded(self, ref: str) -> None:
        if ref in self._loaded:
            return
        path = await asyncio.to_thread(self.registry.path, ref)
        await self.pool.load_adapter(ref, path)
        self._loaded.add(ref)

    def _retire(self, ref: str) -> None:
        task = asyncio.create_task(self._drain_and_unload(ref), name=f"retire {ref}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_unload(self, ref: str) -> None:
        def drained_or_back() -> bool:
            # Under steady traffic an alias flipped back to `ref` never drains: stop waiting.
            return not self._inflight[ref] or ref in self._active.values()

        async with self._idle:
            try:
                await asyncio.wait_for(self._idle.wait_for(drained_or_back), self._drain_timeout)
            except TimeoutError:
                log.warning(
                    "%s still has %d requests running after %.0f s; it stays loaded and is "
                    "retired at the next sync",
                    ref,
                    self._inflight[ref],
                    self._drain_timeout,
                )
                return
        async with self._lock:
            if (
                ref in self._active.values()
                or ref in self._pinned
                or self._held[ref]
                or self._inflight[ref]
            ):
                return  # flipped back to it (or held again) meanwhile
            if ref in self._loaded:
                self._loaded.discard(ref)
                try:
                    await self.pool.unload_adapter(ref)
                except NotFound:
                    pass  # a replica that restarted meanwhile no longer holds it
                except RagtuneError as exc:
                    # Nothing routes to it any more; status lists it as extra where it stayed.
                    log.warning("%s could not be unloaded everywhere: %s", ref, exc)

    async def _restore(self, index: int, ref: str) -> bool:
        """Load `ref` on pool member `index`, which answered NotFound for it; False when this
        manager does not serve `ref` (the NotFound stands)."""
        if ref not in self._loaded and not self._inflight[ref]:
            return False
        key = (index, ref)
        task = self._restoring.get(key)
        if task is None:
            # One load per member and version, however many requests found it missing.
            task = asyncio.create_task(self._load_on(index, ref), name=f"restore {ref}")
            self._restoring[key] = task
            task.add_done_callback(lambda _: self._restoring.pop(key, None))
        return await asyncio.shield(task)

    async def _load_on(self, index: int, ref: str) -> bool:
        member = self.pool.members[index]
        log.warning("backend %d (%s) lost %s; loading it again", index, member.name, ref)
        try:
            await member.load_adapter(ref, await asyncio.to_thread(self.registry.path, ref))
        except RagtuneError as exc:
            log.warning("could not load %s again on backend %d: %s", ref, index, exc)
            return False
        return True

    async def _reconcile(self) -> None:
        """Bring every backend to the adapters in `_loaded`; rejoin recovered members."""
        wanted = self._loaded
        managed = wanted | set(self._inflight)
        statuses = []
        for index, member in enumerate(self.pool.members):
            status = MemberStatus(index=index, name=member.name, up=False)
            try:
                await member.health()
                loaded = set(await member.list_adapters())
                status.missing = sorted(wanted - loaded)
                for ref in status.missing:
                    try:
                        path = await asyncio.to_thread(self.registry.path, ref)
                        await member.load_adapter(ref, path)
                    except (AdapterError, NotFound) as exc:
                        # The version's files, not the backend: it serves the other routes.
                        status.error = str(exc)
                # Reported, not unloaded: another API process sharing this engine may still
                # be draining requests on a version this one has retired.
                status.extra = sorted(r for r in loaded - managed if "@" in r)
                status.loaded = sorted(await member.list_adapters())
                status.up = True
                self.pool.mark_up(index)
            except RagtuneError as exc:
                status.error = str(exc)
                self.pool.mark_down(index, exc)
            statuses.append(status)
        self.members = statuses
        # Retirements that timed out are tried again once their requests are done.
        for ref in sorted(wanted - set(self._active.values()) - self._pinned - set(self._held)):
            if not self._inflight[ref] and not any(
                t.get_name() == f"retire {ref}" for t in self._retiring
            ):
                self._retire(ref)

"""Several backends serving the same model (vLLM replicas) behind the one Backend interface.

A member that stops answering is taken out of rotation; the adapter manager's reconciliation
puts it back once it answers again and holds the registry's adapters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

from engine.backend import Backend
from engine.types import Completion, GenerationRequest, StreamDelta
from ragtune.errors import NotFound, UpstreamUnavailable

log = logging.getLogger(__name__)


# Loads an adapter again on the member (by index) that answered NotFound for it; True if it did.
Restore = Callable[[int, str], Awaitable[bool]]


class BackendPool:
    """Sends each request to the least busy member in rotation; a member that fails before
    answering (down, or restarted without the adapter) is skipped and the next one tried.

    A member that lost an adapter the `restore` hook (set by the adapter manager) still
    serves gets it loaded again and the request retried there once, so a single replica that
    restarted between two reconciliations does not turn requests into 404s.
    """

    def __init__(self, members: Sequence[Backend]) -> None:
        if not members:
            raise ValueError("a backend pool needs at least one backend")
        self.members = list(members)
        self.up = [True] * len(self.members)
        self._why: list[str] = [""] * len(self.members)
        self._busy = [0] * len(self.members)
        self.restore: Restore | None = None
        first = members[0].name
        self.name = first if len(members) == 1 else f"{first} x{len(members)}"

    def mark_down(self, index: int, reason: object) -> None:
        if self.up[index]:
            name = self.members[index].name
            log.warning("backend %d (%s) taken out of rotation: %s", index, name, reason)
        self.up[index] = False
        self._why[index] = str(reason)

    def mark_up(self, index: int) -> None:
        if not self.up[index]:
            log.info("backend %d (%s) back in rotation", index, self.members[index].name)
        self.up[index] = True

    def _order(self) -> list[int]:
        candidates = [i for i in range(len(self.members)) if self.up[i]]
        if not candidates:
            why = "; ".join(self._why)
            raise UpstreamUnavailable(
                f"no {self.name} backend is answering ({why}); check the engine (vLLM or the "
                f"embedded model) and retry"
            )
        return sorted(candidates, key=self._busy.__getitem__)

    async def generate(self, request: GenerationRequest) -> Completion:
        error: Exception = self._none_answered()
        for index in self._order():
            self._busy[index] += 1
            try:
                return await self._generate_on(index, request)
            except UpstreamUnavailable as exc:
                self.mark_down(index, exc)
                error = exc
            except NotFound as exc:
                if request.adapter is None:
                    raise
                error = exc
            finally:
                self._busy[index] -= 1
        raise error

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        error: Exception = self._none_answered()
        for index in self._order():
            started = False
            self._busy[index] += 1
            try:
                async with aclosing(self._stream_on(index, request)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
                return
            except UpstreamUnavailable as exc:
                if started:
                    raise
                self.mark_down(index, exc)
                error = exc
            except NotFound as exc:
                if started or request.adapter is None:
                    raise
                error = exc
            finally:
                self._busy[index] -= 1
        raise error

    def _none_answered(self) -> UpstreamUnavailable:
        """Raised only if no member was tried; each one tried replaces it with its own error."""
        return UpstreamUnavailable(f"no {self.name} backend answered; check the engine and retry")

    async def _generate_on(self, index: int, request: GenerationRequest) -> Completion:
        member = self.members[index]
        try:
            return await member.generate(request)
        except NotFound:
            if not await self._restored(index, request):
                raise
        return await member.generate(request)

    async def _stream_on(
        self, index: int, request: GenerationRequest
    ) -> AsyncGenerator[StreamDelta, None]:
        member = self.members[index]
        started = False
        try:
            async with _closing(member.stream(request)) as deltas:
                async for delta in deltas:
                    started = True
                    yield delta
            return
        except NotFound:
            if started or not await self._restored(index, request):
                raise
        async with _closing(member.stream(request)) as deltas:
            async for delta in deltas:
                yield delta

    async def _restored(self, index: int, request: GenerationRequest) -> bool:
        if request.adapter is None or self.restore is None:
            return False
        return await self.restore(index, request.adapter)

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load on every member in rotation; a member that does not answer leaves rotation."""
        await self._each("load_adapter", name, path)

    async def unload_adapter(self, name: str) -> None:
        await self._each("unload_adapter", name)

    async def _each(self, method: str, *args: object) -> None:
        indexes = self._order()
        results = await asyncio.gather(
            *(getattr(self.members[i], method)(*args) for i in indexes), return_exceptions=True
        )
        answered = 0
        for index, result in zip(indexes, results, strict=True):
            if isinstance(result, UpstreamUnavailable):
                self.mark_down(index, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answered += 1
        if not answered:
            raise UpstreamUnavailable(f"no {self.name} backend answered {method}")

    async def list_adapters(self) -> list[str]:
        """Adapters loaded on every member in rotation (what a request can rely on)."""
        indexes = self._order()
        listed = await asyncio.gather(*(self.members[i].list_adapters() for i in indexes))
        return sorted(set(listed[0]).intersection(*listed[1:]))

    async def health(self) -> None:
        """Healthy while at least one member in rotation answers."""
        indexes = self._order()
        results = await asyncio.gather(
            *(self.members[i].health() for i in indexes), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == len(indexes):
            raise UpstreamUnavailable("; ".join(str(f) for f in failures))

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)


@asynccontextmanager
async def _closing(deltas: AsyncIterator[StreamDelta]) -> AsyncIterator[AsyncIterator[StreamDelta]]:
    """`deltas`, closed in this task when the caller stops early (a client that went away),
    so an engine's HTTP stream is not left for the garbage collector to close elsewhere."""
    try:
        yield deltas
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()

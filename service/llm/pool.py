"""Several backends serving the same model (vLLM replicas) behind the one Backend interface.

A member that stops answering is taken out of rotation; the adapter manager's reconciliation
puts it back once it answers again and holds the registry's adapters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ragtune.errors import NotFound, UpstreamUnavailable
from service.llm.backend import Backend
from service.llm.types import Completion, GenerationRequest, StreamDelta

log = logging.getLogger(__name__)


class BackendPool:
    """Sends each request to the least busy member in rotation; a member that fails before
    answering (down, or restarted without the adapter) is skipped and the next one tried."""

    def __init__(self, members: Sequence[Backend]) -> None:
        if not members:
            raise ValueError("a backend pool needs at least one backend")
        self.members = list(members)
        self.up = [True] * len(self.members)
        self._why: list[str] = [""] * len(self.members)
        self._busy = [0] * len(self.members)
        first = members[0].name
        self.name = first if len(members) == 1 else f"{first} x{len(members)}"

    def mark_down(self, index: int, reason: object) -> None:
        if self.up[index]:
            log.warning("backend %d (%s) taken out of rotation: %s", index, self.name, reason)
        self.up[index] = False
        self._why[index] = str(reason)

    def mark_up(self, index: int) -> None:
        if not self.up[index]:
            log.info("backend %d (%s) back in rotation", index, self.name)
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
        error: Exception | None = None
        for index in self._order():
            self._busy[index] += 1
            try:
                return await self.members[index].generate(request)
            except UpstreamUnavailable as exc:
                self.mark_down(index, exc)
                error = exc
            except NotFound as exc:
                if request.adapter is None:
                    raise
                error = exc
            finally:
                self._busy[index] -= 1
        assert error is not None
        raise error

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        error: Exception | None = None
        for index in self._order():
            started = False
            self._busy[index] += 1
            try:
                async for delta in self.members[index].stream(request):
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
        assert error is not None
        raise error

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

"""The one interface every generation engine implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.types import Completion, GenerationRequest, StreamDelta


@runtime_checkable
class Backend(Protocol):
    """A base model plus LoRA adapters loaded at run time, chosen per request by name.

    Errors are ragtune's domain errors: `NotFound` for an adapter that is not loaded,
    `AdapterError` for one that cannot be loaded, `UpstreamUnavailable` when the engine
    does not answer.
    """

    name: str

    async def generate(self, request: GenerationRequest) -> Completion:
        """The whole answer at once."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The answer piece by piece; the last delta has finish_reason and usage."""
        ...

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA folder under `name`; requests may name it once this returns."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Unload `name`; later requests for it fail with NotFound."""
        ...

    async def list_adapters(self) -> list[str]:
        """Names of the adapters loaded now."""
        ...

    async def health(self) -> None:
        """Return if the engine answers; raise UpstreamUnavailable if it does not."""
        ...

    async def aclose(self) -> None:
        """Release the engine's resources (HTTP clients, worker threads)."""
        ...

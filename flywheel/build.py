"""`ragtune dataset build`: each case's question retrieved and rendered through a route's own
templates by the app's chat service, exactly as it would be served, with the case's answer as
the assistant's turn. The app is built in this process; no answer is generated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backend import Backend
from engine.types import ChatMessage, Completion, GenerationRequest, StreamDelta
from evaluation.targets import InProcessTarget
from flywheel.cases import BuildCase, read_build_cases
from flywheel.examples import Example, write_examples
from flywheel.progress import progress_bar
from ragtune.errors import InvalidInput, RagtuneError
from ragtune.settings import Settings
from service.routes.loader import load_served_routes, routes_path
from service.routes.policy import find_route
from service.routes.schemas import RouteSpec

# Served in the route's adapter's place while rendering: the alias need not exist yet (the
# first adapter of a route is trained on this very dataset), and nothing is generated.
_RENDER_ONLY = "dataset-build@render-only"


class RenderOnlyBackend:
    """A Backend that generates nothing: the app's services need one, rendering does not (so
    the model's weights are never loaded). Adapters 'load' as names only."""

    name = "render-only"

    def __init__(self) -> None:
        self._adapters: set[str] = set()

    async def generate(self, request: GenerationRequest) -> Completion:
        raise RagtuneError("dataset build renders prompts only; nothing may generate")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        raise RagtuneError("dataset build renders prompts only; nothing may generate")
        yield StreamDelta()  # pragma: no cover - makes this an async generator

    async def load_adapter(self, name: str, path: Path) -> None:
        self._adapters.add(name)

    async def unload_adapter(self, name: str) -> None:
        self._adapters.discard(name)

    async def list_adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def render_only(settings: Settings) -> Sequence[Backend]:
    """The backend factory `create_app` takes: one render-only backend."""
    return [RenderOnlyBackend()]


@dataclass(frozen=True)
class BuildResult:
    out: Path
    written: int
    # Cases whose retrieval found no source: their prompt says so, as serving's would.
    without_sources: int


def retrieving_route(settings: Settings, route: str) -> RouteSpec:
    """The chat route `route` of the served routes file; it must retrieve."""
    spec = find_route(load_served_routes(settings), route, "chat")
    if spec.retrieval is None:
        raise InvalidInput(
            f"route {route!r} does not retrieve: dataset build renders the retrieved context "
            f"into each prompt; name a route with `retrieval:` in {routes_path(settings)}, or "
            f"write the chat JSONL yourself for a route without retrieval"
        )
    return spec


def build_dataset(
    settings: Settings, route: str, cases_file: Path, out: Path, *, progress: bool = False
) -> BuildResult:
    """Render every case of `cases_file` through `route` and write chat JSONL to `out`."""
    spec = retrieving_route(settings, route)
    cases = read_build_cases(cases_file)  # a bad file stops before anything loads
    examples = asyncio.run(_render_all(settings, route, spec, cases, progress))
    written = write_examples(examples, out)
    empty = sum(1 for e in examples if not e.metadata["sources"])
    return BuildResult(out, written, empty)


async def _render_all(
    settings: Settings, route: str, spec: RouteSpec, cases: list[BuildCase], progress: bool
) -> list[Example]:
    target = InProcessTarget(settings, render_only)
    try:
        await target.start()
        examples = []
        with progress_bar("render", len(cases), enabled=progress) as advance:
            for case in cases:
                examples.append(await _render(target.services, route, spec, case))
                advance()
        return examples
    finally:
        await target.aclose()


async def _render(services: Any, route: str, spec: RouteSpec, case: BuildCase) -> Example:
    from service.chat.service import ChatCall

    candidates: Mapping[str, str] = {spec.adapter: _RENDER_ONLY} if spec.adapter else {}
    call = ChatCall(route, [ChatMessage(role="user", content=case.question)], candidates=candidates)
    try:
        prepared = await services.chat.prepare(call)
    except InvalidInput as exc:
        raise InvalidInput(f"case {case.id!r} (line {case.line}): {exc}") from None
    prompt = [{"role": m.role, "content": m.content} for m in prepared.request.messages]
    metadata = {
        "id": case.id,
        "route": route,
        "sources": [s.hit.id for s in prepared.sources],
    }
    return Example(prompt, case.answer, metadata)

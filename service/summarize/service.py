"""Summarize text or ingested documents: map-reduce when the input is longer than one piece."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.backend import Backend
from engine.tokens import TokenCounter
from engine.types import ChatMessage, Completion, FinishReason, GenerationRequest, Usage
from ragtune.errors import InvalidInput, UpstreamUnavailable
from ragtune.settings import ApiSettings
from service.hotswap.manager import AdapterManager
from service.metrics import Metrics
from service.rag.retrieval import Document, Filters, RetrievalService
from service.routes.output import parse_output
from service.routes.policy import adapter_for, find_route, sampling
from service.routes.schemas import BASE_MODEL, RouteSpec, SummarizeSpec

# Combining rounds before giving up (each round shrinks the text several-fold).
_MAX_ROUNDS = 6
# Chunks read for one request, at most.
_MAX_CHUNKS = 20_000


@dataclass
class SummarizeCall:
    route: str
    text: str | None = None
    doc_ids: list[str] | None = None
    filters: Filters | None = None
    adapter: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass
class SummaryResult:
    route: str
    adapter: str | None
    text: str
    # JSON routes: the summary parsed, or None with `output_error` saying why it is not valid.
    output: Any
    output_error: str | None
    finish_reason: FinishReason
    documents: list[Document]
    input_tokens: int
    pieces: int
    reduce_rounds: int
    usage: Usage


class SummarizeService:
    """Summaries on the routes of kind summarize, with the same route rules as chat."""

    def __init__(
        self,
        routes: Mapping[str, RouteSpec],
        retrieval: RetrievalService,
        backend: Backend,
        adapters: AdapterManager,
        counter: TokenCounter,
        metrics: Metrics,
        limits: ApiSettings,
    ) -> None:
        self._routes = routes
        self._retrieval = retrieval
        self._backend = backend
        self._adapters = adapters
        self._counter = counter
        self._metrics = metrics
        self._limits = limits

    async def summarize(self, call: SummarizeCall) -> SummaryResult:
        spec = find_route(self._routes, call.route, "summarize")
        try:
            async with asyncio.timeout(self._limits.request_timeout_s):
                return await self._summarize(call, spec)
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                f"the summary took longer than {self._limits.request_timeout_s:g} s "
                f"(api.request_timeout_s); summarize less text, or retry later"
            ) from exc

    async def _summarize(self, call: SummarizeCall, spec: RouteSpec) -> SummaryResult:
        # Always set on summarize routes (RouteSpec fills it in); the default keeps typing honest.
        settings = spec.summarize or SummarizeSpec()
        alias = adapter_for(call.route, spec, call.adapter)
        await self._adapters.check(alias)
        params = sampling(call.route, spec, call.sampling, self._limits.max_tokens)
        documents: list[Document] = []
        if call.text is not None:
            text = call.text
        else:
            if spec.retrieval is None:
                raise InvalidInput(
                    f"route {call.route!r} has no collection to read documents from; send text"
                )
            if call.filters and not spec.overrides.filters:
                raise InvalidInput(f"filters: route {call.route!r} does not let callers filter")
            with self._metrics.timed(call.route, "search"):
                documents = await self._retrieval.documents(
                    spec.retrieval,
                    doc_ids=call.doc_ids,
                    filters=call.filters,
                    max_chunks=_MAX_CHUNKS,
                )
            text = "\n\n".join(f"# {d.title}\n\n{d.text}" for d in documents)
        input_tokens = await asyncio.to_thread(self._counter.count, text)
        if input_tokens > settings.max_input_tokens:
            raise InvalidInput(
                f"the input has {input_tokens} tokens, above route {call.route!r}'s "
                f"max_input_tokens of {settings.max_input_tokens}; summarize less at once"
            )
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        async with self._adapters.lease(alias) as ref:

            async def generate(template: str, body: str, final: bool) -> Completion:
                values = {"text": body, "route": call.route}
                messages = [ChatMessage(role="user", content=template.format_map(values))]
                if spec.prompt.system.strip():
                    system = spec.prompt.system.format_map(values)
                    messages.insert(0, ChatMessage(role="system", content=system))
                piece_sampling = params
                if not final:
                    budget = min(params.max_tokens, settings.piece_summary_tokens)
                    piece_sampling = params.model_copy(update={"max_tokens": budget})
                request = GenerationRequest(
                    messages=messages,
                    adapter=ref,
                    sampling=piece_sampling,
                    json_schema=spec.output.json_schema if final else None,
                )
                with self._metrics.timed(call.route, "generate"):
                    completion = await self._backend.generate(request)
                usage.prompt_tokens += completion.usage.prompt_tokens
                usage.completion_tokens += completion.usage.completion_tokens
                return completion

            limit = asyncio.Semaphore(settings.concurrency)

            async def summarize_piece(piece: str, template: str) -> str:
                async with limit:
                    return (await generate(template, piece, final=False)).text.strip()

            pieces = await asyncio.to_thread(self._counter.split, text, settings.piece_tokens)
            if not pieces:
                raise InvalidInput("there is no text to summarize")
            mapped = len(pieces)
            rounds = 0
            template = spec.prompt.user
            while len(pieces) > 1:
                if rounds == _MAX_ROUNDS:
                    raise InvalidInput(
                        f"the partial summaries did not fit in one piece after {rounds} rounds; "
                        f"raise summarize.piece_tokens or lower piece_summary_tokens"
                    )
                summaries = await asyncio.gather(*(summarize_piece(p, template) for p in pieces))
                joined = "\n\n".join(s for s in summaries if s)
                pieces = await asyncio.to_thread(self._counter.split, joined, settings.piece_tokens)
                template = spec.prompt.reduce or spec.prompt.user
                rounds += 1
            final = await generate(template, pieces[0], final=True)
        output = parse_output(spec.output, final.text, final.finish_reason)
        if output.reason is not None:
            self._metrics.invalid_json.labels(call.route, output.reason).inc()
        self._metrics.tokens.labels(call.route, "in").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(call.route, "out").inc(usage.completion_tokens)
        self._metrics.adapter_use.labels(call.route, ref or BASE_MODEL).inc()
        return SummaryResult(
            route=call.route,
            adapter=ref,
            text=final.text.strip(),
            output=output.value,
            output_error=output.error,
            finish_reason=final.finish_reason,
            documents=documents,
            input_tokens=input_tokens,
            pieces=mapped,
            reduce_rounds=rounds,
            usage=usage,
        )

"""Chat: retrieve, build the prompt within the route's budget, generate with the route's adapter,
and check the answer's citation markers against what was retrieved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.backend import Backend
from engine.tokens import TokenCounter
from engine.types import ChatMessage, FinishReason, GenerationRequest, SamplingParams, Usage
from ingest.search import FilterValue, Mode
from ragtune.errors import InvalidInput, UpstreamUnavailable
from ragtune.settings import ApiSettings
from service.capture import Capture, new_answer_id
from service.hotswap.manager import AdapterManager
from service.metrics import Metrics
from service.rag.citations import CitationCheck, StreamingCitations
from service.rag.context import Source, render_context
from service.rag.query import RetrievalQuery, clean_rewrite, condense_request, window_query
from service.rag.retrieval import RetrievalService
from service.routes.output import parse_output
from service.routes.policy import adapter_for, find_route, sampling
from service.routes.schemas import BASE_MODEL, RetrievalSpec, RouteSpec


@dataclass
class ChatCall:
    """A chat request as both endpoints (ragtune's and OpenAI's) describe it."""

    route: str
    messages: list[ChatMessage]
    filters: Mapping[str, FilterValue | list[FilterValue]] | None = None
    top_k: int | None = None
    mode: Mode | None = None
    # None: the route's adapter; "base": the base model; else an alias the route allows.
    adapter: str | None = None
    # Generation fields the caller set (max_tokens, temperature, top_p, stop, seed).
    sampling: dict[str, Any] = field(default_factory=dict)
    # alias -> a version held for an evaluation (AdapterManager.hold), served in the alias's
    # place: an eval-gated flip measures the version before the alias points at it. Set only
    # by in-process callers; no HTTP body has this field.
    candidates: Mapping[str, str] = field(default_factory=dict)
    # Whether a route with `capture` may record the answer: the HTTP endpoints set it (traffic
    # is training data; in-process evaluations and dataset builds are not).
    capture: bool = False


@dataclass
class Checked:
    """A call the route accepts: what it would be served with."""

    route: str
    spec: RouteSpec
    # The alias that would answer (None: the base model), and the version it points at now.
    alias: str | None
    version: str | None
    sampling: SamplingParams


@dataclass
class Prepared:
    route: str
    spec: RouteSpec
    request: GenerationRequest
    alias: str | None
    sources: list[Source]
    # The version held for an evaluation that answers in the alias's place (ChatCall.candidates).
    candidate: str | None = None
    # The numbered sources, rendered as the templates' {context} (used or not).
    context: str = ""
    # What the route searched with (None: it does not retrieve).
    query: RetrievalQuery | None = None


@dataclass
class ChatResult:
    # The answer's id ("chatcmpl-<hex>"): what POST /v1/feedback takes.
    id: str
    route: str
    adapter: str | None
    text: str
    # JSON routes: the answer parsed, or None with `output_error` saying why it is not valid.
    output: Any
    output_error: str | None
    finish_reason: FinishReason
    sources: list[Source]
    citations: CitationCheck
    usage: Usage
    # What the route searched with (None: it does not retrieve). A condense rewrite's tokens
    # are its own, not in `usage` (the answer's).
    query: RetrievalQuery | None = None


@dataclass
class SourcesEvent:
    id: str
    route: str
    adapter: str | None
    sources: list[Source]


@dataclass
class DeltaEvent:
    text: str


ChatEvent = SourcesEvent | DeltaEvent | ChatResult


class ChatService:
    """Answers on the routes of kind chat (for /v1/chat and the OpenAI endpoint)."""

    def __init__(
        self,
        routes: Mapping[str, RouteSpec],
        retrieval: RetrievalService,
        backend: Backend,
        adapters: AdapterManager,
        counter: TokenCounter,
        metrics: Metrics,
        limits: ApiSettings,
        capture: Capture | None = None,
    ) -> None:
        self._routes = routes
        self._retrieval = retrieval
        self._backend = backend
        self._adapters = adapters
        self._counter = counter
        self._metrics = metrics
        self._limits = limits
        self._capture = capture

    async def answer(self, call: ChatCall) -> ChatResult:
        """The whole answer, with its sources and citation check."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._limits.request_timeout_s):
                prepared = await self.prepare(call)
                async with self._adapters.lease(
                    prepared.alias, candidate=prepared.candidate
                ) as ref:
                    request = prepared.request.model_copy(update={"adapter": ref})
                    with self._metrics.timed(prepared.route, "generate"):
                        completion = await self._backend.generate(request)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        check = CitationCheck(len(prepared.sources))
        text = check.clean(completion.text) if self._cites(prepared) else completion.text
        result = self._finish(
            new_answer_id(),
            prepared,
            ref,
            text,
            completion.text,
            completion.finish_reason,
            completion.usage,
            check,
        )
        self._captured(call, prepared, result, started)
        return result

    async def open_stream(self, call: ChatCall) -> AsyncIterator[ChatEvent]:
        """Prepare now (so a bad request fails before any byte is sent), then stream: sources
        first, then cleaned pieces of the answer, then the ChatResult.

        The deadline applies to the wait for each piece: a long answer that keeps coming is
        never cut, a backend that stops answering is.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._limits.request_timeout_s):
                prepared = await self.prepare(call)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        return self._stream(call, prepared, started)

    async def _stream(
        self, call: ChatCall, prepared: Prepared, started: float
    ) -> AsyncIterator[ChatEvent]:
        timeout = self._limits.request_timeout_s
        answer_id = new_answer_id()
        async with self._adapters.lease(prepared.alias, candidate=prepared.candidate) as ref:
            yield SourcesEvent(answer_id, prepared.route, ref, prepared.sources)
            request = prepared.request.model_copy(update={"adapter": ref})
            check = CitationCheck(len(prepared.sources))
            cleaner = StreamingCitations(check) if self._cites(prepared) else None
            raw: list[str] = []
            sent: list[str] = []
            with self._metrics.timed(prepared.route, "generate"):
                deltas = aiter(self._backend.stream(request))
                while True:
                    try:
                        # In this task, not a new one: the stream's HTTP context lives here.
                        async with asyncio.timeout(timeout):
                            delta = await anext(deltas)
                    except StopAsyncIteration:
                        break
                    except TimeoutError as exc:
                        raise self._timed_out() from exc
                    raw.append(delta.text)
                    text = cleaner.feed(delta.text) if cleaner else delta.text
                    if delta.finish_reason is not None and cleaner:
                        text += cleaner.flush()
                    if text:
                        sent.append(text)
                        yield DeltaEvent(text)
                    if delta.finish_reason is not None and delta.usage is not None:
                        result = self._finish(
                            answer_id,
                            prepared,
                            ref,
                            "".join(sent),
                            "".join(raw),
                            delta.finish_reason,
                            delta.usage,
                            check,
                        )
                        # Before the last event: a caller gone by then still got the answer.
                        self._captured(call, prepared, result, started)
                        yield result
                        return
        raise UpstreamUnavailable("the backend ended the stream before finishing the answer")

    def _timed_out(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the answer took longer than {self._limits.request_timeout_s:g} s "
            f"(api.request_timeout_s); the backend may be overloaded, retry later"
        )

    async def check_call(self, call: ChatCall) -> Checked:
        """Everything `prepare` checks before retrieving, the messages aside: the route and its
        kind, the adapter (allowed by the route, in the registry), the retrieval and generation
        overrides. Retrieves and generates nothing (dry runs and evaluations call it)."""
        spec = find_route(self._routes, call.route, "chat")
        alias = adapter_for(call.route, spec, call.adapter)
        candidate = call.candidates.get(alias) if alias is not None else None
        if candidate is None:  # a held candidate answers whether the alias exists or not
            await self._adapters.check(alias)
        if spec.retrieval is not None:
            self._check_retrieval_overrides(call, spec)
        else:
            given = [n for n in ("filters", "top_k", "mode") if getattr(call, n)]
            if given:
                raise InvalidInput(
                    f"{', '.join(given)}: route {call.route!r} does not retrieve; drop them"
                )
        params = sampling(call.route, spec, call.sampling, self._limits.max_tokens)
        version = candidate or (self._adapters.active().get(alias) if alias is not None else None)
        return Checked(call.route, spec, alias, version, params)

    async def dry_run(self, call: ChatCall) -> Checked:
        """What would serve `call`, checked as an answer checks it (messages too), run nothing."""
        checked = await self.check_call(call)
        self.check_messages(list(call.messages))
        return checked

    def check_messages(self, messages: list[ChatMessage]) -> None:
        """The rules a chat's messages must follow: within the limit, ending with a question."""
        if len(messages) > self._limits.max_messages:
            raise InvalidInput(
                f"messages: {len(messages)} messages, the limit is {self._limits.max_messages}"
            )
        if messages[-1].role != "user":
            raise InvalidInput("messages: the last message must be the user's question")
        if not messages[-1].content.strip():
            raise InvalidInput("messages: the last user message is empty")

    async def prepare(self, call: ChatCall) -> Prepared:
        """Check the call against the route, retrieve, and build the generation request."""
        checked = await self.check_call(call)
        spec = checked.spec
        messages = list(call.messages)
        self.check_messages(messages)
        question = messages[-1].content
        sources: list[Source] = []
        query: RetrievalQuery | None = None
        if spec.retrieval is not None:
            query = await self._retrieval_query(call.route, spec.retrieval, messages)
            hits = await self._retrieval.search(
                call.route,
                spec.retrieval,
                query.text,
                filters=call.filters,
                top_k=call.top_k,
                mode=call.mode,
            )
            sources = await self._retrieval.pack(hits, self._counter, spec.retrieval.context_tokens)
        context = render_context(sources)
        values = {"context": context, "question": question, "route": call.route}
        system = spec.prompt.system.format_map(values).strip()
        extra_system = [m.content for m in messages if m.role == "system"]
        system = "\n\n".join(s for s in [system, *extra_system] if s.strip())
        history = [m for m in messages[:-1] if m.role != "system"]
        built = [ChatMessage(role="system", content=system)] if system else []
        built += history
        built.append(ChatMessage(role="user", content=spec.prompt.user.format_map(values)))
        request = GenerationRequest(
            messages=built, sampling=checked.sampling, json_schema=spec.output.json_schema
        )
        candidate = call.candidates.get(checked.alias) if checked.alias is not None else None
        return Prepared(
            call.route, spec, request, checked.alias, sources, candidate, context, query
        )

    async def _retrieval_query(
        self, route: str, retrieval: RetrievalSpec, messages: list[ChatMessage]
    ) -> RetrievalQuery:
        """What to search with, as the route's retrieval.query says. A condense rewrite runs
        on the base model whatever the route's adapter (an adapter trained to answer in the
        route's voice is not one trained to rewrite), greedy, timed as the stage `condense`."""
        spec = retrieval.query
        question = messages[-1].content
        if spec.mode == "window":
            return RetrievalQuery("window", window_query(messages, spec.turns))
        if spec.mode == "last":
            return RetrievalQuery("last", question)
        condense = condense_request(messages, spec)
        if condense is None:  # a first question: nothing to resolve it against
            return RetrievalQuery("condense", question)
        prompt, params = condense
        started = time.perf_counter()
        with self._metrics.timed(route, "condense"):
            completion = await self._backend.generate(
                GenerationRequest(messages=prompt, sampling=params)
            )
        seconds = time.perf_counter() - started
        usage = completion.usage
        self._metrics.tokens.labels(route, "in").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(route, "out").inc(usage.completion_tokens)
        rewrite = clean_rewrite(completion.text)
        return RetrievalQuery("condense", rewrite or question, usage, seconds, fallback=not rewrite)

    @staticmethod
    def _check_retrieval_overrides(call: ChatCall, spec: RouteSpec) -> None:
        allowed = spec.overrides
        if call.filters and not allowed.filters:
            raise InvalidInput(f"filters: route {call.route!r} does not let callers filter")
        if call.mode and not allowed.mode:
            raise InvalidInput(f"mode: route {call.route!r} does not let callers change it")
        if call.top_k is not None:
            if allowed.max_top_k is None:
                raise InvalidInput(f"top_k: route {call.route!r} does not let callers change it")
            if call.top_k > allowed.max_top_k:
                raise InvalidInput(
                    f"top_k: route {call.route!r} allows at most {allowed.max_top_k}"
                )

    @staticmethod
    def _cites(prepared: Prepared) -> bool:
        return prepared.spec.output.type == "text" and bool(prepared.spec.retrieval)

    def _captured(
        self, call: ChatCall, prepared: Prepared, result: ChatResult, started: float
    ) -> None:
        """Hand a finished answer to capture: only callers' traffic, never an evaluation's
        held candidate."""
        if self._capture is not None and call.capture and not call.candidates:
            self._capture.answered(call.messages, prepared, result, time.perf_counter() - started)

    def _finish(
        self,
        answer_id: str,
        prepared: Prepared,
        ref: str | None,
        text: str,
        raw: str,
        finish_reason: FinishReason,
        usage: Usage,
        check: CitationCheck,
    ) -> ChatResult:
        route = prepared.route
        output = parse_output(prepared.spec.output, raw, finish_reason)
        if output.reason is not None:
            self._metrics.invalid_json.labels(route, output.reason).inc()
        self._metrics.tokens.labels(route, "in").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(route, "out").inc(usage.completion_tokens)
        self._metrics.adapter_use.labels(route, ref or BASE_MODEL).inc()
        return ChatResult(
            id=answer_id,
            route=route,
            adapter=ref,
            text=text,
            output=output.value,
            output_error=output.error,
            finish_reason=finish_reason,
            sources=prepared.sources,
            citations=check,
            usage=usage,
            query=prepared.query,
        )

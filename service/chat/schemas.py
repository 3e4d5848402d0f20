"""Request and response bodies of POST /v1/chat."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from engine.types import ChatMessage, FinishReason, GenerationOverrides, Usage
from ingest.search import Mode
from service.rag.citations import CitationCheck
from service.rag.context import Source
from service.rag.query import RetrievalQuery

FilterValue = str | int | bool


class ChatRequest(GenerationOverrides):
    model_config = ConfigDict(extra="forbid")

    route: str = "chat"
    messages: list[ChatMessage] = Field(min_length=1)
    # Payload filters ANDed with the route's (when the route allows it), e.g. {"file_type": "md"}.
    filters: dict[str, FilterValue | list[FilterValue]] | None = None
    top_k: int | None = Field(default=None, ge=1, le=100)
    mode: Mode | None = None
    # An adapter alias from the route's allow-list, or "base".
    adapter: str | None = None
    # max_tokens, temperature, top_p, stop, seed: from GenerationOverrides.
    stream: bool = False
    # Each source's `text` too: the source as packed into the prompt (not just its snippet).
    include_source_text: bool = False
    # Check the request and say what would serve it (ChatDryRun), retrieving and generating
    # nothing: evaluations ask before their first case.
    dry_run: bool = False


class SourceOut(BaseModel):
    """A numbered source the answer may cite as [number]."""

    number: int
    doc_id: str
    source: str
    title: str
    chunk_index: int
    score: float
    snippet: str
    # Only when the request sets include_source_text (absent, not null, otherwise: responses
    # stay as they were): the source as the model saw it, its numbered header line then its
    # text, cut where the context budget cut it.
    text: str | None = Field(default=None, exclude_if=lambda text: text is None)


class Citations(BaseModel):
    # Source numbers the answer cites, after the check.
    cited: list[int]
    # Markers that pointed at no source and were taken out of the answer.
    removed: int


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> Self:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )


class RetrievalQueryOut(BaseModel):
    """What a route whose retrieval.query is `window` or `condense` searched with."""

    mode: Literal["window", "condense"]
    # The text embedded and matched: the turns joined, or the rewrite.
    text: str
    # condense, when the model was asked (not on a first question): the rewrite's tokens
    # (not in the answer's `usage`) and its time.
    usage: UsageOut | None = None
    time_ms: float | None = None
    # condense: the rewrite was empty, so the last user message was searched instead.
    fallback: bool = False

    @classmethod
    def of(cls, query: RetrievalQuery | None) -> RetrievalQueryOut | None:
        """None for routes that search with the last message (their responses stay as
        they were) or do not retrieve."""
        if query is None or query.mode == "last":
            return None
        return cls(
            mode=query.mode,
            text=query.text,
            usage=UsageOut.of(query.usage) if query.usage is not None else None,
            time_ms=round(query.seconds * 1000, 1) if query.seconds is not None else None,
            fallback=query.fallback,
        )


class ChatResponse(BaseModel):
    # The answer's id ("chatcmpl-<hex>", as the OpenAI endpoint's): POST /v1/feedback takes it.
    id: str
    route: str
    # The adapter version that answered ("name@version"), or None for the base model.
    adapter: str | None
    answer: str
    # JSON routes: the answer parsed; None when it is not the route's JSON, and then
    # `output_error` says why (cut off by max_tokens, not JSON, not the schema's).
    output: Any = None
    output_error: str | None = None
    finish_reason: FinishReason
    sources: list[SourceOut]
    citations: Citations
    usage: UsageOut
    # Routes with retrieval.query `window` or `condense` only (absent otherwise).
    retrieval_query: RetrievalQueryOut | None = Field(
        default=None, exclude_if=lambda query: query is None
    )


class ChatDryRun(BaseModel):
    """POST /v1/chat with `dry_run`: the request is servable, and this is what would serve it."""

    dry_run: Literal[True] = True
    route: str
    # The adapter alias the request resolves to (None: the base model), and the version
    # ("name@version") it points at now; a later swap may change it.
    adapter_alias: str | None
    adapter: str | None
    retrieves: bool
    # The route's sampling with the request's changes applied.
    sampling: dict[str, Any]


class StreamEvent(BaseModel):
    """One server-sent event of a streamed chat: sources first, then deltas, then done."""

    type: Literal["sources", "delta", "done", "error"]
    # The answer's id, on the sources and done events.
    id: str | None = None
    route: str | None = None
    adapter: str | None = None
    sources: list[SourceOut] | None = None
    text: str | None = None
    finish_reason: FinishReason | None = None
    citations: Citations | None = None
    usage: UsageOut | None = None
    output: Any = None
    output_error: str | None = None
    # On done, for routes with retrieval.query `window` or `condense`.
    retrieval_query: RetrievalQueryOut | None = None
    error: dict[str, Any] | None = None


def sources_out(sources: list[Source], with_text: bool = False) -> list[SourceOut]:
    return [
        SourceOut(
            number=s.number,
            doc_id=s.hit.doc_id,
            source=str(s.hit.payload.get("source", "")),
            title=str(s.hit.payload.get("title") or ""),
            chunk_index=int(s.hit.payload.get("chunk_index", 0)),
            score=s.hit.score,
            snippet=s.snippet(),
            text=s.render() if with_text else None,
        )
        for s in sources
    ]


def citations_out(check: CitationCheck) -> Citations:
    return Citations(cited=sorted(check.cited), removed=check.removed)

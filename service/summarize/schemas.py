"""Request and response bodies of POST /v1/summarize."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.types import FinishReason, GenerationOverrides
from service.chat.schemas import UsageOut

FilterValue = str | int | bool


class SummarizeRequest(GenerationOverrides):
    """Exactly one of: `text`, `doc_ids` (ingested documents), `filters` (documents matching)."""

    model_config = ConfigDict(extra="forbid")

    route: str = "summarize"
    text: str | None = Field(default=None, min_length=1)
    doc_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)
    filters: dict[str, FilterValue | list[FilterValue]] | None = None
    adapter: str | None = None
    # max_tokens, temperature, top_p, stop, seed: from GenerationOverrides.

    @model_validator(mode="after")
    def _one_input(self) -> SummarizeRequest:
        given = [n for n in ("text", "doc_ids", "filters") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of text, doc_ids or filters"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class SummarizedDocument(BaseModel):
    doc_id: str
    title: str
    chunks: int


class SummarizeResponse(BaseModel):
    route: str
    adapter: str | None
    summary: str
    # JSON routes: the summary parsed; None when it is not the route's JSON, and then
    # `output_error` says why (cut off by max_tokens, not JSON, not the schema's).
    output: Any = None
    output_error: str | None = None
    finish_reason: FinishReason
    documents: list[SummarizedDocument]
    input_tokens: int
    # Map-reduce: how many pieces were summarized, and how many combining rounds followed.
    pieces: int
    reduce_rounds: int
    usage: UsageOut

"""Request and response bodies of POST /v1/summarize."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.types import FinishReason
from service.chat.schemas import UsageOut

FilterValue = str | int | bool


class SummarizeRequest(BaseModel):
    """Exactly one of: `text`, `doc_ids` (ingested documents), `filters` (documents matching)."""

    model_config = ConfigDict(extra="forbid")

    route: str = "summarize"
    text: str | None = Field(default=None, min_length=1)
    doc_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)
    filters: dict[str, FilterValue | list[FilterValue]] | None = None
    adapter: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=8)
    seed: int | None = None

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
    # JSON routes: the summary parsed (None if cut off by max_tokens).
    output: Any = None
    finish_reason: FinishReason
    documents: list[SummarizedDocument]
    input_tokens: int
    # Map-reduce: how many pieces were summarized, and how many combining rounds followed.
    pieces: int
    reduce_rounds: int
    usage: UsageOut

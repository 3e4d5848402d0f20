"""The records an evaluation run produces: assertion specs and results, case outputs and results.

They are plain pydantic models so the runner, the cache and the reports share one JSON shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AssertionSpec(BaseModel):
    """One entry of an `assert:` list, the suite's or a case's."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str
    value: Any = None
    threshold: float | None = None
    weight: float = 1.0
    metric: str | None = None


class AssertionResult(BaseModel):
    """The verdict of one assertion on one case's output."""

    type: str
    metric: str
    passed: bool
    score: float
    weight: float
    reason: str


class Retrieved(BaseModel):
    """One retrieved source as the answer saw it (the snippet is for reports; no full text)."""

    doc_id: str
    chunk_index: int
    score: float
    source: str
    title: str
    snippet: str


class CaseOutput(BaseModel):
    """What a target returns for one case under one strategy."""

    answer: str
    output: Any = None
    output_error: str | None = None
    retrieved: list[Retrieved] = Field(default_factory=list)
    context_text: str = ""
    cited: list[int] = Field(default_factory=list)
    removed_citations: int = 0
    adapter: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    finish_reason: str = "stop"
    refusal: str | None = None


class CaseResult(BaseModel):
    """One case under one strategy: one line of results.jsonl."""

    case_id: str
    strategy: str
    vars: dict[str, Any]
    output: CaseOutput | None
    error: str | None = None
    cached: bool = False
    assertions: list[AssertionResult] = Field(default_factory=list)
    passed: bool
    score: float

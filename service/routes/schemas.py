"""A route as data: retrieval, adapter, prompts, generation, output, and what callers may change."""

from __future__ import annotations

import re
import string
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from engine.types import GENERATION_FIELDS, GenerationField, SamplingParams
from ingest.search import Mode

RouteKind = Literal["chat", "summarize"]
# "base" in an adapter allow-list means the caller may ask for the base model.
BASE_MODEL = "base"
# The variables each template may use, per route kind.
TEMPLATE_VARIABLES: dict[RouteKind, dict[str, frozenset[str]]] = {
    "chat": {
        "system": frozenset({"context", "route"}),
        "user": frozenset({"context", "question", "route"}),
    },
    "summarize": {
        "system": frozenset({"route"}),
        "user": frozenset({"text", "route"}),
        "reduce": frozenset({"text", "route"}),
    },
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


QueryMode = Literal["last", "window", "condense"]
# The default condense prompt: LangChain's contextualize_q_system_prompt (its history-aware
# retriever), with the conversation written into one user message as LlamaIndex's
# CondenseQuestionChatEngine does: small models rewrite a transcript more reliably than they
# refrain from answering a conversation replayed as chat turns.
CONDENSE_PROMPT = """\
Given a chat history and the latest user question which might reference context in the chat \
history, formulate a standalone question which can be understood without the chat history. \
Do NOT answer the question, just reformulate it if needed and otherwise return it as is.

Chat history:
{history}

Latest user question: {question}

Standalone question:"""
CONDENSE_VARIABLES = frozenset({"history", "question"})


class QuerySpec(_Strict):
    """What a route searches with: the last user message (`last`), the last `turns` user
    messages joined (`window`), or the base model's standalone rewrite of the last message,
    with the conversation since the `turns`-th last user message in view (`condense`)."""

    mode: QueryMode = "last"
    # User messages, the last one included.
    turns: int = Field(default=3, ge=1, le=64)
    # condense: the rewrite's template ({history}, {question}) and its most tokens.
    prompt: str = CONDENSE_PROMPT
    max_tokens: int = Field(default=64, ge=1, le=512)

    @model_validator(mode="after")
    def _check(self) -> QuerySpec:
        given = self.model_fields_set
        if self.mode != "condense":
            unused = [name for name in ("prompt", "max_tokens") if name in given]
            if unused:
                raise ValueError(
                    f"{' and '.join(unused)}: only used by mode 'condense', not {self.mode!r}; "
                    f"remove {'them' if len(unused) > 1 else 'it'} or set mode: condense"
                )
        if self.mode == "last" and "turns" in given:
            raise ValueError(
                "turns: mode 'last' searches with the last user message only; "
                "remove turns or set mode: window or condense"
            )
        if self.mode == "condense":
            if self.turns < 2:
                raise ValueError(
                    "turns: mode 'condense' needs at least 2 (the question and a turn before "
                    "it to resolve it against); with 1 use mode: last"
                )
            _check_template("prompt", self.prompt, CONDENSE_VARIABLES)
            missing = sorted(CONDENSE_VARIABLES - set(_fields(self.prompt)))
            if missing:
                raise ValueError(
                    f"prompt must use {' and '.join('{' + m + '}' for m in missing)}: "
                    f"the rewrite sees the conversation as {{history}} and the last user "
                    f"message as {{question}}"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Only condense uses the prompt: a window route's identity does not hang on its text.
        data = handler(self)
        if self.mode != "condense" and isinstance(data, dict):
            data.pop("prompt", None)
            data.pop("max_tokens", None)
        return data


class RetrievalSpec(_Strict):
    """Where a route's context comes from."""

    collection: str
    mode: Mode = "hybrid"
    top_k: int = Field(default=5, ge=1, le=100)
    score_threshold: float | None = None
    filters: dict[str, str | int | bool | list[str | int | bool]] = Field(default_factory=dict)
    # The most tokens (the base model's) the numbered sources may take in the prompt.
    context_tokens: int = Field(default=1_500, ge=32)
    # At most one chunk per document among the sources.
    per_document: bool = False
    # What to search with, from the conversation. Left out of the route's dump (its
    # fingerprint, evaluation cache keys) when it is the default, so routes that do not set it
    # keep the identity they had before it existed.
    query: QuerySpec = Field(default_factory=QuerySpec, exclude_if=lambda q: q == QuerySpec())

    @field_validator("query", mode="before")
    @classmethod
    def _query_mode(cls, value: Any) -> Any:
        # `query: window` is short for `query: {mode: window}`.
        return {"mode": value} if isinstance(value, str) else value


class PromptSpec(_Strict):
    """Templates in str.format syntax (`{question}`); write literal braces as `{{` and `}}`."""

    system: str = ""
    user: str
    # Summarize routes only: the prompt that combines partial summaries (`{text}`).
    reduce: str | None = None


class GenerationSpec(SamplingParams):
    """A route's sampling: the engines' fields, with their bounds (engine/types.py)."""


class OutputSpec(_Strict):
    """Free text, or JSON that must satisfy `schema` (constrained decoding)."""

    type: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _schema(self) -> OutputSpec:
        if self.type == "json" and not self.json_schema:
            raise ValueError("output type 'json' needs a 'schema' (a JSON schema object)")
        if self.type == "text" and self.json_schema is not None:
            raise ValueError("a 'schema' is only used with output type 'json'")
        return self


class OverrideSpec(_Strict):
    """What a caller may change per request; anything else is refused with 422."""

    # Adapter aliases the caller may pick instead of the route's ("base" = the base model).
    adapters: list[str] = Field(default_factory=list)
    filters: bool = False
    mode: bool = False
    # The caller may set top_k up to this; None means top_k is fixed.
    max_top_k: int | None = Field(default=None, ge=1, le=100)
    generation: list[GenerationField] = Field(default_factory=lambda: list(GENERATION_FIELDS))


class SummarizeSpec(_Strict):
    """Map-reduce: inputs longer than `piece_tokens` are summarized in pieces, then combined."""

    piece_tokens: int = Field(default=1_500, ge=64)
    piece_summary_tokens: int = Field(default=200, ge=16)
    max_input_tokens: int = Field(default=200_000, ge=64)
    concurrency: int = Field(default=4, ge=1, le=64)


class CaptureSpec(_Strict):
    """Chat routes only: record answers (redacted) as training data under the data directory."""

    # The share of answers recorded, each drawn at random.
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    # Regular expressions (Python's `re`); every match in every recorded text becomes
    # [REDACTED] before the record is queued for disk.
    redact: list[str] = Field(default_factory=list)

    @field_validator("redact")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"redact[{i}] {pattern!r} is not a regular expression ({exc}); "
                    "write it in Python's re syntax"
                ) from None
        return patterns

    @cached_property
    def patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.redact)


class RouteSpec(_Strict):
    """One route: a kind and everything it is made of."""

    kind: RouteKind
    description: str = ""
    retrieval: RetrievalSpec | None = None
    # An alias in the adapter registry; None serves the base model.
    adapter: str | None = None
    prompt: PromptSpec
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    overrides: OverrideSpec = Field(default_factory=OverrideSpec)
    summarize: SummarizeSpec | None = None
    # Chat routes only; None records nothing.
    capture: CaptureSpec | None = None

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str | None) -> str | None:
        if value == BASE_MODEL:
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> RouteSpec:
        allowed = TEMPLATE_VARIABLES[self.kind]
        for field in ("system", "user", "reduce"):
            template = getattr(self.prompt, field)
            if template is None:
                continue
            if field not in allowed:
                raise ValueError(f"prompt.{field} is not used by {self.kind} routes")
            _check_template(f"prompt.{field}", template, allowed[field])
        if self.kind == "chat" and self.summarize is not None:
            raise ValueError("'summarize' settings are for summarize routes only")
        if self.kind != "chat" and self.capture is not None:
            raise ValueError("'capture' is for chat routes only; remove it from this route")
        if (
            self.kind != "chat"
            and self.retrieval is not None
            and self.retrieval.query != QuerySpec()
        ):
            raise ValueError(
                "retrieval.query is for chat routes only (a summarize route reads whole "
                "documents, it searches nothing); remove it from this route"
            )
        if self.kind == "summarize":
            if self.summarize is None:
                self.summarize = SummarizeSpec()
            if self.prompt.reduce is None:
                self.prompt.reduce = self.prompt.user
        if (
            self.kind == "chat"
            and self.retrieval is not None
            and "{context}" not in (self.prompt.system + self.prompt.user)
        ):
            raise ValueError(
                "the route retrieves, but neither prompt.system nor prompt.user uses {context}"
            )
        if self.overrides.max_top_k is not None and self.retrieval is None:
            raise ValueError("overrides.max_top_k needs retrieval")
        return self

    def uses_context(self) -> bool:
        """Whether the prompt templates take `{context}` (always, on a route that retrieves)."""
        return any(
            "context" in _fields(template) for template in (self.prompt.system, self.prompt.user)
        )

    def allows_adapter(self, name: str | None) -> bool:
        """Whether a caller may serve this route with adapter `name` (None = base model)."""
        if name == self.adapter:
            return True
        return (name or BASE_MODEL) in self.overrides.adapters


def _fields(template: str) -> list[str]:
    return [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]


def _check_template(where: str, template: str, allowed: frozenset[str]) -> None:
    try:
        fields = _fields(template)
    except ValueError as exc:
        raise ValueError(
            f"{where} is not a valid template ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    for name in fields:
        if name not in allowed:
            raise ValueError(
                f"{where} uses {{{name}}}, which is not one of "
                f"{', '.join('{' + a + '}' for a in sorted(allowed))}"
            )


class RoutesFile(_Strict):
    routes: dict[str, RouteSpec] = Field(min_length=1)

    @field_validator("routes")
    @classmethod
    def _names(cls, routes: dict[str, RouteSpec]) -> dict[str, RouteSpec]:
        for name in routes:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"route name {name!r} may use letters, digits, '-', '_' and '.'")
        return routes

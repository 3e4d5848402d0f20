"""OpenAI's chat completion bodies, as far as ragtune serves them. Unknown fields are tolerated
(OpenAI clients send fields ragtune has no use for); ones that would change the answer and
cannot be honoured are refused by the service."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.types import GenerationOverrides, PositiveTokens
from ingest.search import Mode
from service.chat.schemas import UsageOut
from service.routes.schemas import OverrideSpec, RouteKind


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(GenerationOverrides):
    model_config = ConfigDict(extra="allow")

    # The route's name: GET /v1/models lists them.
    model: str
    messages: list[OpenAIMessage] = Field(min_length=1)
    # max_tokens, temperature, top_p, seed: from GenerationOverrides; OpenAI's spellings:
    max_completion_tokens: PositiveTokens | None = None
    # One string or a list, as OpenAI takes it; the engines' bound (StopList) is checked when
    # the sampling is built, so a long list is a 422 that names `stop`.
    stop: str | list[str] | None = None  # type: ignore[assignment]
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    # ragtune's extensions (the openai client sends them with `extra_body=`).
    filters: dict[str, str | int | bool | list[str | int | bool]] | None = None
    top_k: int | None = Field(default=None, ge=1, le=100)
    mode: Mode | None = None
    adapter: str | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class CompletionUsage(UsageOut):
    """OpenAI's usage object: the same three counts as ragtune's."""


class RagtuneExtra(BaseModel):
    """Rides along in `ragtune`; OpenAI clients ignore it (`response.model_extra`)."""

    route: str
    adapter: str | None
    sources: list[Any]
    citations: dict[str, Any]
    # JSON routes: the answer parsed, or None with `output_error` saying why it is not valid.
    output: Any = None
    output_error: str | None = None
    # Routes that search with a window of turns or a condensed question: what was searched.
    retrieval_query: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    ragtune: RagtuneExtra


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed completion (service.chunks builds them): the role, the
    content's pieces, the finish reason with `ragtune`, then `usage` alone if asked."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    ragtune: RagtuneExtra | None = None


class RouteInfo(BaseModel):
    """ragtune's extension of a model (a route): what it is made of and what callers may change,
    so a client can check a request, and notice a changed route, before calling it."""

    # sha256 of the route's spec as JSON: changes whenever the routes file changes the route.
    fingerprint: str
    kind: RouteKind
    retrieves: bool
    output: Literal["text", "json"]
    # The route's adapter alias (None: the base model); overrides.adapters lists the others a
    # caller may ask for ("base" = the base model).
    adapter: str | None
    overrides: OverrideSpec


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragtune"
    description: str = ""
    kind: str = "chat"
    ragtune: RouteInfo


class BaseModelInfo(BaseModel):
    """The base model every route is served on."""

    # The model folder's name (or the configured name when the folder is not on this host).
    name: str
    # sha256 of its config.json; None when the folder is not on this host (a remote vLLM).
    config_sha256: str | None
    backend: Literal["embedded", "vllm"]
    dtype: str


class ModelsExtra(BaseModel):
    base_model: BaseModelInfo


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
    # ragtune's extension; OpenAI clients ignore it (`page.model_extra`).
    ragtune: ModelsExtra

"""OpenAI's chat completion bodies, as far as ragtune serves them. Unknown fields are tolerated
(OpenAI clients send fields ragtune has no use for); ones that would change the answer and
cannot be honoured are refused by the service."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.search import Mode
from service.chat.schemas import UsageOut


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


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    # The route's name: GET /v1/models lists them.
    model: str
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
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


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    ragtune: RagtuneExtra


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragtune"
    description: str = ""
    kind: str = "chat"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]

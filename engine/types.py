"""What goes in and out of a generation backend, whichever engine runs it."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# The generation fields and their bounds, declared once: the engines' sampling, a route's
# generation settings and every request body that may change them use these.
MAX_TOKENS_LIMIT = 32_768
# A request's max_tokens has no upper bound here: the server's api.max_tokens is its limit.
PositiveTokens = Annotated[int, Field(ge=1)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
StopList = Annotated[list[str], Field(max_length=8)]
Seed = int
GenerationField = Literal["max_tokens", "temperature", "top_p", "stop", "seed"]
GENERATION_FIELDS: tuple[GenerationField, ...] = get_args(GenerationField)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """Sampling as vLLM's OpenAI server takes it; temperature 0 means greedy."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: MaxTokens = 256
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    stop: StopList = Field(default_factory=list)
    seed: Seed | None = None


class GenerationOverrides(BaseModel):
    """The generation fields a request body may set; None keeps the route's value."""

    max_tokens: PositiveTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: StopList | None = None
    seed: Seed | None = None

    def generation(self) -> dict[str, Any]:
        """The generation fields as the caller sent them (None: not set)."""
        return {name: getattr(self, name) for name in GENERATION_FIELDS}


class GenerationRequest(BaseModel):
    """Messages in; `adapter` names a loaded LoRA adapter, None means the base model."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    adapter: str | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    # A JSON schema the answer must satisfy (constrained decoding on both engines).
    json_schema: dict[str, Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


FinishReason = Literal["stop", "length"]


class Completion(BaseModel):
    text: str
    finish_reason: FinishReason
    usage: Usage
    # The generated token ids, so engines can be compared token for token.
    token_ids: list[int] = Field(default_factory=list)


class StreamDelta(BaseModel):
    """A piece of a streamed answer; the last one carries finish_reason and usage."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

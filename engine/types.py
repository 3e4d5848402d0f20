"""What goes in and out of a generation backend, whichever engine runs it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """Sampling as vLLM's OpenAI server takes it; temperature 0 means greedy."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = None


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

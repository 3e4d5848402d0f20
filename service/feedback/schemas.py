"""Request and response bodies of POST /v1/feedback."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ANSWER_ID = re.compile(r"chatcmpl-[0-9a-f]{32}")
# A correction is a whole answer; a comment a few sentences. The body limit bounds both too.
MAX_TEXT_CHARS = 32_000


class FeedbackRequest(BaseModel):
    """What a user thought of one answer."""

    model_config = ConfigDict(extra="forbid")

    # The answer's `id`, from POST /v1/chat or POST /v1/chat/completions. The pattern is
    # documented only: the validator below says what is wrong in words.
    id: str = Field(json_schema_extra={"pattern": f"^{ANSWER_ID.pattern}$"})
    # -1 bad, 0 neither, 1 good.
    rating: Literal[-1, 0, 1]
    # The answer as it should have been; training prefers it to the model's.
    correction: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    comment: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ANSWER_ID.fullmatch(value):
            raise ValueError(
                "not an answer id: send the `id` of a /v1/chat or /v1/chat/completions "
                "response (chatcmpl- and 32 hex digits)"
            )
        return value

    @field_validator("rating", mode="before")
    @classmethod
    def _rating(cls, value: Any) -> Any:
        # JSON true is not a rating, though Python counts it equal to 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be -1 (bad), 0 or 1 (good), as a JSON integer")
        return value

    @field_validator("correction")
    @classmethod
    def _correction(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; leave it out, or send the answer as it should have been")
        return value


class FeedbackResponse(BaseModel):
    id: str
    # The feedback is on disk when this is sent.
    recorded: Literal[True] = True

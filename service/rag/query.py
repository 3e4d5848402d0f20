"""The text a retrieving route searches with, built from the conversation (retrieval.query):
the last user message, the last few joined, or the model's standalone rewrite of a follow-up.
Pure functions: the chat service makes the one model call condense needs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.types import ChatMessage, SamplingParams, Usage
from service.routes.schemas import QueryMode, QuerySpec

# Each earlier message as the rewrite sees it: the topic a follow-up points back to is near
# the start of a turn, and a long answer would only lengthen the prompt (seconds on CPU).
HISTORY_MESSAGE_CHARS = 1_000
_SPEAKERS = {"user": "User", "assistant": "Assistant"}
# What models put before the rewrite despite the prompt ending in "Standalone question:".
_LABEL = re.compile(
    r"^(?:\*\*)?(?:standalone|rewritten|reformulated|rephrased)?\s*question"
    r"(?:\*\*)?\s*:(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "`", "\u201c\u201d")


@dataclass(frozen=True)
class RetrievalQuery:
    """What a route searched with, and what building it cost."""

    mode: QueryMode
    text: str
    # condense, when the model was asked: the rewrite's tokens and seconds.
    usage: Usage | None = None
    seconds: float | None = None
    # condense: the rewrite was empty, so the last user message was searched instead.
    fallback: bool = False


def user_turns(messages: Sequence[ChatMessage]) -> list[str]:
    return [m.content for m in messages if m.role == "user"]


def window_query(messages: Sequence[ChatMessage], turns: int) -> str:
    """The last `turns` user messages, oldest first, one per line."""
    return "\n".join(text.strip() for text in user_turns(messages)[-turns:])


def condense_history(messages: Sequence[ChatMessage], turns: int) -> str:
    """The conversation before the last message, from the `turns - 1`-th user message before
    it (system messages left out), one `User:`/`Assistant:` line per message; "" if none."""
    earlier = [m for m in messages[:-1] if m.role in _SPEAKERS]
    starts = [i for i, m in enumerate(earlier) if m.role == "user"]
    keep = turns - 1
    if len(starts) > keep:
        earlier = earlier[starts[-keep] :] if keep else []
    return "\n".join(f"{_SPEAKERS[m.role]}: {_clip(m.content)}" for m in earlier)


def condense_request(
    messages: Sequence[ChatMessage], spec: QuerySpec
) -> tuple[list[ChatMessage], SamplingParams] | None:
    """The rewrite's prompt and sampling (greedy, `spec.max_tokens`), or None when there is
    nothing before the last message to resolve it against (no model call then)."""
    history = condense_history(messages, spec.turns)
    if not history:
        return None
    prompt = spec.prompt.format_map({"history": history, "question": messages[-1].content.strip()})
    sampling = SamplingParams(max_tokens=spec.max_tokens, temperature=0.0)
    return [ChatMessage(role="user", content=prompt)], sampling


def clean_rewrite(text: str) -> str:
    """The rewrite's first non-empty line without control characters, a `Question:` label or
    enclosing quotes; "" when nothing is left (the last user message is searched then)."""
    for raw in text.splitlines():
        # A model's stray control characters are no part of a question.
        line = " ".join("".join(c if c.isprintable() else " " for c in raw).split())
        line = _LABEL.sub("", line).strip()
        for quote in _QUOTES:
            opening, closing = (quote[0], quote[-1])
            if len(line) >= 2 and line[0] == opening and line[-1] == closing:
                line = line[1:-1].strip()
        if line:
            return line
    return ""


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= HISTORY_MESSAGE_CHARS:
        return text
    return text[: HISTORY_MESSAGE_CHARS - 1].rstrip() + "\u2026"

"""Training examples as chat JSONL: a route's prompt rendered from a question and its context
(the way the chat service builds it), the answer as the last turn, and where it came from."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.routes.schemas import RouteSpec

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One chat training example: the prompt as served, the answer, and its metadata."""

    prompt: list[Message]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The JSONL line: {"messages": [..., assistant], "metadata": {...}}."""
        messages = [*self.prompt, {"role": "assistant", "content": self.answer}]
        return json.dumps({"messages": messages, "metadata": self.metadata}, ensure_ascii=False)

    def prompt_key(self) -> str:
        """What identifies the prompt, for deduplication."""
        return json.dumps(self.prompt, ensure_ascii=False, sort_keys=True)


def render_prompt(
    route: str,
    spec: RouteSpec,
    question: str,
    context: str,
    messages: Sequence[Mapping[str, str]] = (),
) -> list[Message]:
    """The messages `spec` sends the model for `question` with `context` (the rendered sources):
    the route's system prompt plus the caller's system messages, the caller's earlier turns,
    then the route's user template. Mirrors ChatService.prepare (a test holds them equal)."""
    values = {"context": context, "question": question, "route": route}
    system = spec.prompt.system.format_map(values).strip()
    extra = [m["content"] for m in messages[:-1] if m["role"] == "system"]
    system = "\n\n".join(s for s in [system, *extra] if s.strip())
    built: list[Message] = [{"role": "system", "content": system}] if system else []
    built += [
        {"role": m["role"], "content": m["content"]} for m in messages[:-1] if m["role"] != "system"
    ]
    built.append({"role": "user", "content": spec.prompt.user.format_map(values)})
    return built


def uses_context(spec: RouteSpec) -> bool:
    """Whether the route's templates put retrieved context in the prompt."""
    return "{context}" in spec.prompt.system + spec.prompt.user


def write_examples(examples: Iterable[Example], out: Path) -> int:
    """Write the examples as JSONL to `out` (beside, then renamed: never a half-written file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for example in examples:
                f.write(example.line() + "\n")
                count += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count

"""Chat-format training data: read and validate JSONL, tokenize with the chat template, and mask
everything but the assistant's answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.types import ChatMessage
from ragtune.errors import InvalidInput, NotFound

# Label value that PyTorch's cross-entropy ignores: prompt tokens and padding.
IGNORE = -100
# Enough to show the pattern of a broken file without flooding the terminal.
_MAX_REPORTED = 10


@dataclass(frozen=True)
class ChatRecord:
    """One training example: the conversation, its last message the assistant's answer."""

    line: int
    messages: tuple[ChatMessage, ...]

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages[:-1]]

    @property
    def answer(self) -> str:
        return self.messages[-1].content


@dataclass(frozen=True)
class TokenizedExample:
    line: int
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_chat_jsonl(path: Path) -> list[ChatRecord]:
    """Read `{"messages": [...]}` lines; refuse the file with every problem's line number."""
    if not path.is_file():
        raise NotFound(f"training data {path} does not exist")
    records: list[ChatRecord] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                records.append(ChatRecord(number, _parse_line(raw)))
            except ValueError as exc:
                problems.append(f"line {number}: {exc}")
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidInput(
            f"{path} has {len(problems)} invalid line(s): {shown}{suffix}. Each line must be "
            f'{{"messages": [{{"role": ..., "content": ...}}, ...]}} ending with a non-empty '
            f"assistant message; fix those lines and run again"
        )
    if not records:
        raise InvalidInput(f"{path} holds no examples; write one JSON chat record per line")
    return records


def _parse_line(raw: str) -> tuple[ChatMessage, ...]:
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if "messages" not in data:
        raise ValueError('missing "messages"')
    items = data["messages"]
    if not isinstance(items, list) or not items:
        raise ValueError('"messages" must be a non-empty list')
    messages: list[ChatMessage] = []
    for index, item in enumerate(items):
        try:
            messages.append(ChatMessage.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"message {index}: {where}: {first['msg']}") from None
    if messages[-1].role != "assistant":
        raise ValueError(f"the last message is {messages[-1].role!r}; it must be the assistant's")
    if not messages[-1].content.strip():
        raise ValueError("the assistant's answer is empty")
    if len(messages) < 2:
        raise ValueError("there is no prompt before the assistant's answer")
    return tuple(messages)


def tokenize_record(
    tokenizer: Any, record: ChatRecord, max_length: int, end_ids: set[int]
) -> TokenizedExample:
    """Token ids of the whole chat; labels only on the answer and its end-of-turn token."""
    prompt = _chat_ids(tokenizer, record.prompt, add_generation_prompt=True)
    full = _chat_ids(
        tokenizer, [*record.prompt, record.messages[-1].model_dump()], add_generation_prompt=False
    )
    if full[: len(prompt)] != prompt:
        raise InvalidInput(
            f"line {record.line}: the chat template renders the prompt differently with and "
            f"without the answer, so the answer tokens cannot be told apart; use a base model "
            f"whose template only appends the assistant turn"
        )
    answer = full[len(prompt) :]
    # Text the template adds after the end-of-turn token (Qwen's trailing newline) is never
    # generated, so it is not learned either.
    for index, token in enumerate(answer):
        if token in end_ids:
            answer = answer[: index + 1]
            break
    input_ids = prompt + answer
    labels = [IGNORE] * len(prompt) + answer
    truncated = len(input_ids) > max_length
    return TokenizedExample(
        record.line, input_ids[:max_length], labels[:max_length], truncated=truncated
    )


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> Any:
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def end_of_turn_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> set[int]:
    """The ids that end an answer: the generation config's EOS ids and the tokenizer's."""
    ids = set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


def pad_batch(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, Any]:
    """Left-pad a batch into tensors: input_ids, attention_mask, position_ids, labels.

    Left padding puts every answer at the end of its row, so the model only needs to compute
    logits for the last few positions (the output head is a quarter of a small model's work).
    Explicit position ids keep each row's positions as if it were alone.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, width - n :] = torch.tensor(example.input_ids)
        labels[row, width - n :] = torch.tensor(example.labels)
        mask[row, width - n :] = 1
        positions[row, width - n :] = torch.arange(n)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": positions,
        "labels": labels,
    }


def answer_span(examples: Sequence[TokenizedExample]) -> int:
    """How many last positions of a left-padded batch hold every labelled token."""
    return max(len(e.labels) - _first_label(e) for e in examples)


def _first_label(example: TokenizedExample) -> int:
    return next(i for i, label in enumerate(example.labels) if label != IGNORE)

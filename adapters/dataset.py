"""Training data: read and validate JSONL (chat or prompt/completion), split off a validation
set, and tokenize each assistant turn as a prompt/completion pair with the chat template."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from engine.types import ChatMessage
from ragtune.errors import InvalidInput, NotFound

# Enough to show the pattern of a broken file without flooding the terminal.
_MAX_REPORTED = 10
Format = Literal["chat", "prompt/completion", "conversational prompt/completion"]
_SHAPES: dict[Format, str] = {
    "chat": '{"messages": [{"role": ..., "content": ...}, ...]}',
    "prompt/completion": '{"prompt": "...", "completion": "..."}',
    "conversational prompt/completion": (
        '{"prompt": [{"role": ..., "content": ...}, ...], '
        '"completion": [{"role": "assistant", "content": ...}]}'
    ),
}
_FORMATS_HELP = (
    f"Each line must be {_SHAPES['chat']} with an assistant answer last, or "
    f"{_SHAPES['prompt/completion']}, or {_SHAPES['conversational prompt/completion']} "
    f'(one format per file; a "metadata" key is ignored)'
)


@dataclass(frozen=True)
class Example:
    """One thing to learn: the prompt as serving sends it, and the assistant turn after it."""

    line: int
    prompt: tuple[ChatMessage, ...]
    completion: ChatMessage


@dataclass(frozen=True)
class ChatRecord:
    """One line: the conversation, its last message an assistant answer; `targets` are the
    indices of the assistant turns to learn (every one with a prompt before it for chat lines,
    only the completion for prompt/completion lines)."""

    line: int
    messages: tuple[ChatMessage, ...]
    targets: tuple[int, ...] = ()

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages[:-1]]

    @property
    def answer(self) -> str:
        return self.messages[-1].content

    def examples(self) -> list[Example]:
        """One prompt/completion pair per target assistant turn."""
        targets = self.targets or (len(self.messages) - 1,)
        return [Example(self.line, self.messages[:i], self.messages[i]) for i in targets]


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of prompt + completion as TRL takes them: `completion_mask` 1 on the tokens
    the loss is computed on (the answer and its end-of-turn token)."""

    line: int
    input_ids: list[int]
    completion_mask: list[int]
    prompt_tokens: int
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        return sum(self.completion_mask)


@dataclass(frozen=True)
class Split:
    train: list[ChatRecord]
    eval: list[ChatRecord]


def invalid_lines(path: Path, problems: list[str], expected: str) -> InvalidInput:
    """One error for a JSONL file's bad lines: how many, the first few ("line N: why"), and
    what a line should be (`expected`)."""
    shown = "; ".join(problems[:_MAX_REPORTED])
    more = len(problems) - _MAX_REPORTED
    suffix = f" (and {more} more)" if more > 0 else ""
    return InvalidInput(
        f"{path} has {len(problems)} invalid line(s): {shown}{suffix}. {expected}; fix those "
        f"lines and run again"
    )


def read_chat_jsonl(path: Path) -> list[ChatRecord]:
    """Read training lines of one format; refuse the file with every problem's line number."""
    if not path.is_file():
        raise NotFound(f"training data {path} does not exist")
    records: list[ChatRecord] = []
    problems: list[str] = []
    first: tuple[int, Format] | None = None
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                kind, record = _parse_line(number, raw)
            except ValueError as exc:
                problems.append(f"line {number}: {exc}")
                continue
            if first is None:
                first = (number, kind)
            elif kind != first[1]:
                problems.append(
                    f"line {number}: a {kind} line, but line {first[0]} is {first[1]}; "
                    f"write one format per file"
                )
                continue
            records.append(record)
    if problems:
        raise invalid_lines(path, problems, _FORMATS_HELP)
    if not records:
        raise InvalidInput(f"{path} holds no examples; write one JSON training record per line")
    return records


def _parse_line(number: int, raw: str) -> tuple[Format, ChatRecord]:
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    has_chat, has_pair = "messages" in data, "prompt" in data or "completion" in data
    if has_chat and has_pair:
        raise ValueError('both "messages" and "prompt"/"completion"; keep one of them')
    if has_chat:
        return "chat", _chat(number, data["messages"])
    if has_pair:
        return _prompt_completion(number, data)
    raise ValueError('missing "messages" (or "prompt" and "completion")')


def _chat(number: int, items: Any) -> ChatRecord:
    if not isinstance(items, list) or not items:
        raise ValueError('"messages" must be a non-empty list')
    messages = _messages(items, "message")
    if messages[-1].role != "assistant":
        raise ValueError(f"the last message is {messages[-1].role!r}; it must be the assistant's")
    if len(messages) < 2:
        raise ValueError("there is no prompt before the assistant's answer")
    # Every assistant turn with something before it is learned; an opening assistant turn
    # (a greeting) stays as context only.
    targets = tuple(i for i, m in enumerate(messages) if m.role == "assistant" and i > 0)
    for i in targets:
        if not messages[i].content.strip():
            raise ValueError(f"message {i}: the assistant's answer is empty")
    return ChatRecord(number, messages, targets)


def _prompt_completion(number: int, data: dict[str, Any]) -> tuple[Format, ChatRecord]:
    if "prompt" not in data or "completion" not in data:
        missing = "prompt" if "prompt" not in data else "completion"
        raise ValueError(f'missing "{missing}"')
    prompt, completion = data["prompt"], data["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not prompt.strip():
            raise ValueError('"prompt" is empty')
        if not completion.strip():
            raise ValueError('"completion" is empty')
        # ragtune serves chat: a text prompt is the user's message, rendered with the chat
        # template, so the adapter learns the prompt it will be served.
        messages: tuple[ChatMessage, ...] = (
            ChatMessage(role="user", content=prompt),
            ChatMessage(role="assistant", content=completion),
        )
        return "prompt/completion", ChatRecord(number, messages, (1,))
    if isinstance(prompt, list) and isinstance(completion, list):
        if not prompt:
            raise ValueError('"prompt" must be a non-empty list of messages')
        turns = _messages(prompt, "prompt message")
        answer = _messages(completion, "completion message")
        if len(answer) != 1 or answer[0].role != "assistant":
            raise ValueError('"completion" must be one assistant message')
        if not answer[0].content.strip():
            raise ValueError("the assistant's answer is empty")
        messages = (*turns, answer[0])
        return "conversational prompt/completion", ChatRecord(
            number, messages, (len(messages) - 1,)
        )
    raise ValueError('"prompt" and "completion" must both be strings or both be lists of messages')


def _messages(items: list[Any], what: str) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = []
    for index, item in enumerate(items):
        try:
            messages.append(ChatMessage.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{what} {index}: {where}: {first['msg']}") from None
    return tuple(messages)


def split_records(records: list[ChatRecord], fraction: float, seed: int, source: Path) -> Split:
    """A seeded split by line (so the turns of one conversation stay on one side): `fraction`
    of the lines, rounded, held out for validation; 0 holds out nothing."""
    if fraction == 0:
        return Split(list(records), [])
    held = math.floor(len(records) * fraction + 0.5)
    if held < 1 or len(records) - held < 2:
        raise InvalidInput(
            f"{source} has {len(records)} example line(s): too few to hold out {fraction:.0%} "
            f"for validation and keep at least 2 to train on; add examples, pass held-out "
            f"examples with --eval-data FILE, or train without validation (--validation 0)"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:held])
    return Split(
        [r for i, r in enumerate(records) if i not in held_out],
        [r for i, r in enumerate(records) if i in held_out],
    )


def tokenize_example(
    tokenizer: Any, example: Example, max_length: int, end_ids: set[int]
) -> TokenizedExample:
    """The prompt exactly as serving renders it (chat template, generation prompt), then the
    answer up to its end-of-turn token; cut at `max_length`."""
    history = [m.model_dump() for m in example.prompt]
    prompt = chat_ids(tokenizer, history, add_generation_prompt=True)
    full = chat_ids(
        tokenizer, [*history, example.completion.model_dump()], add_generation_prompt=False
    )
    if full[: len(prompt)] != prompt:
        raise InvalidInput(
            f"line {example.line}: the chat template renders the prompt differently with and "
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
    mask = [0] * len(prompt) + [1] * len(answer)
    return TokenizedExample(
        example.line,
        input_ids[:max_length],
        mask[:max_length],
        prompt_tokens=len(prompt),
        truncated=len(input_ids) > max_length,
    )


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> Any:
    """Token ids of `messages` through the tokenizer's chat template, as the engines render."""
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def end_of_turn_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> set[int]:
    """The ids that end an answer: the generation config's EOS ids and the tokenizer's."""
    ids = set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}

"""Does a model answer in the trained format? Scores base (zero- and few-shot) and an adapter on
chat JSONL whose assistant messages are JSON answers: valid-format rate and accuracy."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adapters.dataset import ChatRecord, read_chat_jsonl
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.errors import InvalidInput
from ragtune.settings import LLMSettings

ADAPTER_NAME = "eval-adapter"


@dataclass(frozen=True)
class FormatScore:
    """One row of the table; rates are fractions of the scored records."""

    name: str
    records: int
    valid: float  # the output is a JSON object with the gold's keys and a known value
    exact: float  # the output is byte-for-byte the gold answer
    accuracy: float  # the parsed output equals the gold object
    tokens_per_s: float
    mean_tokens: float


def parse_answer(text: str) -> dict[str, Any] | None:
    """The output as a JSON object, or None: anything around the JSON makes it invalid."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def gold_answers(records: list[ChatRecord]) -> list[dict[str, Any]]:
    golds = []
    for record in records:
        gold = parse_answer(record.answer)
        if gold is None:
            raise InvalidInput(
                f"line {record.line}: the assistant's answer is not a JSON object; eval-format "
                f"scores JSON classification answers only"
            )
        golds.append(gold)
    return golds


def few_shot_prompt(record: ChatRecord, shots: list[ChatRecord]) -> list[ChatMessage]:
    """The record's prompt with worked examples appended to its system message."""
    examples = "\n\n".join(f"Input: {_user_text(shot)}\nOutput: {shot.answer}" for shot in shots)
    messages = list(record.messages[:-1])
    block = f"Examples:\n\n{examples}"
    if messages[0].role == "system":
        messages[0] = ChatMessage(role="system", content=f"{messages[0].content}\n\n{block}")
    else:
        messages.insert(0, ChatMessage(role="system", content=block))
    return messages


def _user_text(record: ChatRecord) -> str:
    users = [m.content for m in record.messages[:-1] if m.role == "user"]
    return "\n".join(users)


def pick_shots(records: list[ChatRecord], n: int) -> list[ChatRecord]:
    """`n` records taking turns over the distinct answers, so no label dominates the prompt."""
    by_answer: dict[str, list[ChatRecord]] = {}
    for record in records:
        by_answer.setdefault(record.answer, []).append(record)
    queues = list(by_answer.values())
    shots: list[ChatRecord] = []
    while len(shots) < n and any(queues):
        for queue in queues:
            if queue and len(shots) < n:
                shots.append(queue.pop(0))
    if len(shots) < n:
        raise InvalidInput(f"--few-shot {n} needs {n} example records; only {len(shots)} exist")
    return shots


def score(
    name: str,
    outputs: list[str],
    golds: list[dict[str, Any]],
    answers: list[str],
    tokens: int,
    seconds: float,
) -> FormatScore:
    labels = {json.dumps(g, sort_keys=True) for g in golds}
    valid = exact = correct = 0
    for output, gold, answer in zip(outputs, golds, answers, strict=True):
        parsed = parse_answer(output)
        if parsed is not None and parsed.keys() == gold.keys():
            valid += json.dumps(parsed, sort_keys=True) in labels
            correct += parsed == gold
        exact += output.strip() == answer.strip()
    n = len(outputs)
    return FormatScore(
        name=name,
        records=n,
        valid=valid / n,
        exact=exact / n,
        accuracy=correct / n,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        mean_tokens=tokens / n,
    )


def evaluate_format(
    base_model: str,
    data: Path,
    settings: LLMSettings,
    *,
    adapter: Path | None = None,
    few_shot: int = 0,
    shots_from: Path | None = None,
    max_tokens: int = 16,
    progress: bool = False,
) -> list[FormatScore]:
    """Greedy answers from the base model (and few-shot, and the adapter) scored on `data`.

    Shots come from `shots_from`, else from the first records of `data`, which are then left
    out of every row's scoring so the rows stay comparable.
    """
    from engine.embedded import EmbeddedBackend

    records = read_chat_jsonl(data)
    shots: list[ChatRecord] = []
    if few_shot > 0:
        shots = pick_shots(read_chat_jsonl(shots_from) if shots_from else records, few_shot)
        if shots_from is None:
            used = {s.line for s in shots}
            records = [r for r in records if r.line not in used]
    if not records:
        raise InvalidInput(f"{data} has no records left to score")
    golds = gold_answers(records)
    answers = [r.answer for r in records]
    runs: list[tuple[str, str | None, list[list[ChatMessage]]]] = [
        ("base", None, [list(r.messages[:-1]) for r in records])
    ]
    if shots:
        runs.append((f"base {few_shot}-shot", None, [few_shot_prompt(r, shots) for r in records]))
    if adapter is not None:
        runs.append(("adapter", ADAPTER_NAME, [list(r.messages[:-1]) for r in records]))

    async def run_all() -> list[FormatScore]:
        engine = EmbeddedBackend.load(base_model, settings)
        try:
            if adapter is not None:
                await engine.load_adapter(ADAPTER_NAME, adapter)
            scores = []
            for name, adapter_name, prompts in runs:
                outputs, tokens, seconds = [], 0, 0.0
                for messages in tqdm(prompts, desc=name, disable=not progress):
                    request = GenerationRequest(
                        messages=messages,
                        adapter=adapter_name,
                        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                    )
                    started = time.perf_counter()
                    completion = await engine.generate(request)
                    seconds += time.perf_counter() - started
                    outputs.append(completion.text)
                    tokens += completion.usage.completion_tokens
                scores.append(score(name, outputs, golds, answers, tokens, seconds))
            return scores
        finally:
            await engine.aclose()

    return asyncio.run(run_all())


def format_table(scores: list[FormatScore]) -> str:
    rows = [f"{'model':<16}{'n':>5}{'JSON-valid':>12}{'exact':>8}{'accuracy':>10}{'tok/s':>8}"]
    for s in scores:
        rows.append(
            f"{s.name:<16}{s.records:>5}{s.valid:>11.0%} {s.exact:>7.0%}{s.accuracy:>10.0%}"
            f"{s.tokens_per_s:>8.1f}"
        )
    return "\n".join(rows)

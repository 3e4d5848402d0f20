"""Training data: line-numbered validation of chat and prompt/completion lines, the seeded
split, prompt/completion tokens as serving renders them, and the refusals made before any
model is loaded; the reviews split."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.dataset import (
    ChatRecord,
    Example,
    end_of_turn_ids,
    read_chat_jsonl,
    split_records,
    tokenize_example,
)
from adapters.examples import REVIEWS_SYSTEM, Review, read_reviews, split_reviews
from adapters.train import train_lora
from adapters.train_options import TrainOptions
from engine.embedded import EmbeddedBackend
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.errors import AdapterError, InvalidInput
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel

GOOD = {
    "messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": '{"answer": "yes"}'},
    ]
}
PAIR = {"prompt": "hello world", "completion": '{"answer": "yes"}'}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def test_reads_valid_records_and_skips_blank_lines(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD)])
    records = read_chat_jsonl(data)
    assert [r.line for r in records] == [1, 3]
    assert records[0].answer == '{"answer": "yes"}'
    assert records[0].prompt[-1] == {"role": "user", "content": "hello world"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"text": "hi"}', 'line 2: missing "messages" (or "prompt" and "completion")'),
        ('{"messages": []}', 'line 2: "messages" must be a non-empty list'),
        (
            '{"messages": [{"role": "user", "content": "q"}]}',
            "line 2: the last message is 'user'",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, '
            '{"role": "assistant", "content": "  "}]}',
            "line 2: message 1: the assistant's answer is empty",
        ),
        (
            '{"messages": [{"role": "robot", "content": "q"}, '
            '{"role": "assistant", "content": "a"}]}',
            "line 2: message 0: role",
        ),
        ('{"messages": [{"role": "assistant", "content": "a"}]}', "line 2: there is no prompt"),
        (
            '{"messages": [{"role": "user", "content": "q"}], "prompt": "q", "completion": "a"}',
            'line 2: both "messages" and "prompt"/"completion"',
        ),
    ],
)
def test_bad_chat_lines_are_refused_with_their_line_number(
    tmp_path: Path, line: str, expected: str
) -> None:
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(InvalidInput, match="invalid line") as info:
        read_chat_jsonl(data)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"prompt": "q"}, 'line 2: missing "completion"'),
        ({"completion": "a"}, 'line 2: missing "prompt"'),
        ({"prompt": " ", "completion": "a"}, 'line 2: "prompt" is empty'),
        ({"prompt": "q", "completion": ""}, 'line 2: "completion" is empty'),
        (
            {"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]},
            'line 2: "prompt" and "completion" must both be strings or both be lists',
        ),
    ],
)
def test_bad_prompt_completion_lines_are_refused(
    tmp_path: Path, line: dict[str, Any], expected: str
) -> None:
    data = write_records(tmp_path / "d.jsonl", [PAIR, line])
    with pytest.raises(InvalidInput, match="invalid line") as info:
        read_chat_jsonl(data)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ([{"role": "user", "content": "a"}], '"completion" must be one assistant message'),
        ([], '"completion" must be one assistant message'),
        ([{"role": "assistant", "content": " "}], "the assistant's answer is empty"),
        ([{"role": "assistant"}], "completion message 0: content: Field required"),
    ],
)
def test_bad_conversational_completions_are_refused(
    tmp_path: Path, completion: list[dict[str, str]], expected: str
) -> None:
    line = {"prompt": [{"role": "user", "content": "q"}], "completion": completion}
    with pytest.raises(InvalidInput, match=f"line 1: {expected}"):
        read_chat_jsonl(write_records(tmp_path / "d.jsonl", [line]))


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "d.jsonl", ["nope", json.dumps(GOOD), "{}", "[]"])
    with pytest.raises(InvalidInput, match="has 3 invalid line") as info:
        read_chat_jsonl(data)
    assert all(f"line {n}:" in str(info.value) for n in (1, 3, 4))


def test_mixed_formats_are_refused_naming_the_line(tmp_path: Path) -> None:
    conversational = {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    data = write_records(tmp_path / "d.jsonl", [GOOD, GOOD, PAIR, conversational])
    with pytest.raises(InvalidInput, match="has 2 invalid line") as info:
        read_chat_jsonl(data)
    message = str(info.value)
    assert "line 3: a prompt/completion line, but line 1 is chat; write one format" in message
    assert "line 4: a conversational prompt/completion line, but line 1 is chat" in message


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds no examples"):
        read_chat_jsonl(write_lines(tmp_path / "d.jsonl", [""]))


def test_metadata_is_ignored_and_each_assistant_turn_is_an_example(tmp_path: Path) -> None:
    turns = [
        {"role": "assistant", "content": "Hi, ask me."},  # a greeting: context, not learned
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    line = {"messages": turns, "metadata": {"id": "x", "sources": ["c1"]}}
    (record,) = read_chat_jsonl(write_records(tmp_path / "d.jsonl", [line]))
    examples = record.examples()
    assert [e.completion.content for e in examples] == ["a1", "a2"]
    assert [len(e.prompt) for e in examples] == [2, 4]
    assert examples[1].prompt[-1] == ChatMessage(role="user", content="q2")


def test_prompt_completion_lines_become_chat_examples(tmp_path: Path) -> None:
    (text,) = read_chat_jsonl(write_records(tmp_path / "t.jsonl", [PAIR]))
    (example,) = text.examples()
    # ragtune serves chat: a text prompt is the user's message.
    assert example.prompt == (ChatMessage(role="user", content="hello world"),)
    assert example.completion == ChatMessage(role="assistant", content='{"answer": "yes"}')

    shot = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    line = {
        "prompt": [*shot, {"role": "user", "content": "2+2"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    (conversational,) = read_chat_jsonl(write_records(tmp_path / "c.jsonl", [line]))
    # Only the completion is learned; the assistant turn inside the prompt is a shot.
    (example,) = conversational.examples()
    assert [m.content for m in example.prompt] == ["1+1", "2", "2+2"]
    assert example.completion.content == "4"
    assert conversational.answer == "4"


def chat_records(n: int) -> list[ChatRecord]:
    return [
        ChatRecord(
            i + 1,
            (
                ChatMessage(role="user", content=f"q{i}"),
                ChatMessage(role="assistant", content=f"a{i}"),
            ),
        )
        for i in range(n)
    ]


def test_the_split_is_seeded_by_line_and_holds_out_the_fraction() -> None:
    records = chat_records(10)
    split = split_records(records, 0.2, seed=0, source=Path("d.jsonl"))
    again = split_records(records, 0.2, seed=0, source=Path("d.jsonl"))
    other = split_records(records, 0.2, seed=1, source=Path("d.jsonl"))
    assert (len(split.train), len(split.eval)) == (8, 2)
    assert split == again
    assert split.eval != other.eval
    assert sorted(r.line for r in split.train + split.eval) == list(range(1, 11))
    assert split_records(records, 0.0, seed=0, source=Path("d.jsonl")).eval == []
    assert len(split_records(chat_records(3), 0.2, 0, Path("d.jsonl")).eval) == 1


@pytest.mark.parametrize("lines", [1, 2])
def test_a_dataset_too_small_to_split_is_refused_before_loading(tmp_path: Path, lines: int) -> None:
    data = write_records(tmp_path / "d.jsonl", [GOOD] * lines)
    with pytest.raises(InvalidInput, match=f"has {lines} example line") as info:
        train_lora("/no/such/model", data, tmp_path / "out", TrainOptions())
    assert "--eval-data FILE" in str(info.value)
    assert not (tmp_path / "out").exists()


def example(answer: str, user: str = "hello world") -> Example:
    return Example(
        1,
        (
            ChatMessage(role="system", content="Answer in JSON."),
            ChatMessage(role="user", content=user),
        ),
        ChatMessage(role="assistant", content=answer),
    )


def test_only_the_answer_and_its_end_token_are_learned(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    ends = end_of_turn_ids(tokenizer, None)
    tokens = tokenize_example(tokenizer, example('{"answer": "yes"}'), 256, ends)
    learned = [t for t, m in zip(tokens.input_ids, tokens.completion_mask, strict=True) if m]
    # Qwen's template adds a newline after <|im_end|>: never generated, so never learned.
    assert tokenizer.decode(learned) == '{"answer": "yes"}<|im_end|>'
    assert tokens.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    first = tokens.completion_mask.index(1)
    assert first == tokens.prompt_tokens
    assert all(m == 1 for m in tokens.completion_mask[first:])
    prompt = str(tokenizer.decode(tokens.input_ids[:first]))
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "hello world" in prompt


def test_training_prompts_are_the_tokens_the_engine_serves(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    turns = [
        ChatMessage(role="system", content="Answer in JSON."),
        ChatMessage(role="user", content="The quick brown fox"),
        ChatMessage(role="assistant", content="jumps"),
        ChatMessage(role="user", content="over the lazy dog?"),
    ]
    engine = EmbeddedBackend.load(str(tiny_model.path), LLMSettings())
    served: list[list[int]] = []
    generate = engine._base.generate

    def spy(**kwargs: Any) -> Any:
        served.append(kwargs["input_ids"][0].tolist())
        return generate(**kwargs)

    monkeypatch.setattr(engine._base, "generate", spy)
    request = GenerationRequest(messages=turns, sampling=SamplingParams(max_tokens=2))
    try:
        asyncio.run(engine.generate(request))
    finally:
        asyncio.run(engine.aclose())

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    pair = Example(1, tuple(turns), ChatMessage(role="assistant", content="yes"))
    tokens = tokenize_example(tokenizer, pair, 256, end_of_turn_ids(tokenizer, None))
    assert served == [tokens.input_ids[: tokens.prompt_tokens]]


def test_truncation_keeps_max_length(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    ends = end_of_turn_ids(tokenizer, None)
    long = tokenize_example(tokenizer, example("yes " * 50), 40, ends)
    assert long.truncated
    assert len(long.input_ids) == len(long.completion_mask) == 40
    assert 0 < long.answer_tokens < 50
    short = tokenize_example(tokenizer, example("no"), 40, ends)
    assert not short.truncated
    cut = tokenize_example(tokenizer, example("no", user="word " * 60), 40, ends)
    assert cut.truncated
    assert cut.answer_tokens == 0  # train_lora drops these


def test_unservable_options_are_refused_before_loading(tmp_path: Path) -> None:
    data = write_records(tmp_path / "d.jsonl", [GOOD] * 5)
    with pytest.raises(AdapterError, match="rank 12 cannot be served by vLLM"):
        train_lora("/no/such/model", data, tmp_path / "out", TrainOptions(rank=12))
    with pytest.raises(AdapterError, match="lm_head"):
        TrainOptions(target_modules=("q_proj", "lm_head")).check()
    with pytest.raises(InvalidInput, match=r"lr=0\.0 \(must be in \(0, 1\)\)"):
        TrainOptions(lr=0.0).check()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (TrainOptions(lr_scheduler="cosinus"), "lr_scheduler='cosinus' (must be one of"),
        (TrainOptions(validation=1.0), "validation=1.0 (must be in [0, 1))"),
        (TrainOptions(warmup_ratio=-0.1), "warmup_ratio=-0.1 (must be in [0, 1))"),
        (TrainOptions(early_stopping_patience=-1), "early_stopping_patience=-1 (must be 0"),
        (TrainOptions(device="tpu"), "device='tpu' (must be one of ('auto', 'cpu', 'cuda'))"),
        (TrainOptions(epochs=0, dropout=1.0), "dropout=1.0 (must be in [0, 1)); epochs=0"),
    ],
)
def test_bad_knobs_are_refused_by_name(options: TrainOptions, expected: str) -> None:
    with pytest.raises(InvalidInput, match="invalid training options") as info:
        options.check()
    assert expected in str(info.value)


def test_qlora_and_cuda_without_a_cuda_device_are_refused_before_loading(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    data = write_records(tmp_path / "d.jsonl", [GOOD] * 5)
    with pytest.raises(InvalidInput, match=r"--qlora .* needs CUDA, and torch sees no CUDA"):
        train_lora("/no/such/model", data, tmp_path / "out", TrainOptions(qlora=True))
    with pytest.raises(InvalidInput, match=r"--device cuda: .* sees no CUDA device"):
        train_lora("/no/such/model", data, tmp_path / "out", TrainOptions(device="cuda"))
    assert not (tmp_path / "out").exists()


def reviews(n_per_stratum: int) -> list[Review]:
    rows = []
    line = 0
    for source in ("yelp", "amazon"):
        for label in (0, 1):
            for i in range(n_per_stratum):
                line += 1
                rows.append(Review(line, f"{source} {label} review {i}", label, source))
    return rows


def test_review_split_is_deterministic_balanced_and_disjoint() -> None:
    data = reviews(30)
    split = split_reviews(data, n_train=40, n_eval=20, seed=0)
    again = split_reviews(reviews(30), n_train=40, n_eval=20, seed=0)
    other = split_reviews(reviews(30), n_train=40, n_eval=20, seed=1)
    assert split.train == again.train
    assert split.eval == again.eval
    assert split.train != other.train
    assert len(split.train) == 40
    assert len(split.eval) == 20
    assert set(split.strata.values()) == {(10, 5)}
    train_texts = {r["messages"][1]["content"] for r in split.train}
    eval_texts = {r["messages"][1]["content"] for r in split.eval}
    assert not train_texts & eval_texts
    assert len(train_texts) == 40
    for rec in split.train + split.eval:
        system, user, answer = rec["messages"]
        assert system == {"role": "system", "content": REVIEWS_SYSTEM}
        expected = "positive" if " 1 review" in user["content"] else "negative"
        assert answer == {"role": "assistant", "content": f'{{"sentiment":"{expected}"}}'}
    labels = [r["messages"][2]["content"] for r in split.eval]
    assert labels.count('{"sentiment":"positive"}') == 10


def test_review_split_refuses_too_small_strata() -> None:
    with pytest.raises(InvalidInput, match="has 5 reviews but the split needs 8"):
        split_reviews(reviews(5), n_train=24, n_eval=8, seed=0)


def test_read_reviews_names_the_bad_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "r.jsonl",
        [json.dumps({"text": "ok", "label": 1, "source": "yelp"}), json.dumps({"text": "x"})],
    )
    with pytest.raises(InvalidInput, match="line 2: needs a non-empty string 'text'"):
        read_reviews(path)

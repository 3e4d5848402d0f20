"""Training data: line-numbered validation, answer-only labels, the reviews split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.dataset import (
    IGNORE,
    ChatRecord,
    answer_span,
    end_of_turn_ids,
    pad_batch,
    read_chat_jsonl,
    tokenize_record,
)
from adapters.examples import REVIEWS_SYSTEM, Review, read_reviews, split_reviews
from adapters.train import TrainOptions, train_lora
from engine.types import ChatMessage
from ragtune.errors import AdapterError, InvalidInput
from tests.conftest import TinyModel

GOOD = {
    "messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": '{"answer": "yes"}'},
    ]
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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
        ('{"text": "hi"}', 'line 2: missing "messages"'),
        ('{"messages": []}', 'line 2: "messages" must be a non-empty list'),
        (
            '{"messages": [{"role": "user", "content": "q"}]}',
            "line 2: the last message is 'user'",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, '
            '{"role": "assistant", "content": "  "}]}',
            "line 2: the assistant's answer is empty",
        ),
        (
            '{"messages": [{"role": "robot", "content": "q"}, '
            '{"role": "assistant", "content": "a"}]}',
            "line 2: message 0: role",
        ),
        ('{"messages": [{"role": "assistant", "content": "a"}]}', "line 2: there is no prompt"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(
    tmp_path: Path, line: str, expected: str
) -> None:
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(InvalidInput, match="invalid line") as info:
        read_chat_jsonl(data)
    assert expected in str(info.value)


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "d.jsonl", ["nope", json.dumps(GOOD), "{}", "[]"])
    with pytest.raises(InvalidInput, match="has 3 invalid line") as info:
        read_chat_jsonl(data)
    assert all(f"line {n}:" in str(info.value) for n in (1, 3, 4))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds no examples"):
        read_chat_jsonl(write_lines(tmp_path / "d.jsonl", [""]))


def record(answer: str, user: str = "hello world") -> ChatRecord:
    return ChatRecord(
        1,
        (
            ChatMessage(role="system", content="Answer in JSON."),
            ChatMessage(role="user", content=user),
            ChatMessage(role="assistant", content=answer),
        ),
    )


def test_only_the_answer_and_its_end_token_carry_labels(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    ends = end_of_turn_ids(tokenizer, None)
    example = tokenize_record(tokenizer, record('{"answer": "yes"}'), 256, ends)
    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(labelled) == '{"answer": "yes"}<|im_end|>'
    # Labels are the input ids themselves (the model shifts them), prompt masked.
    first = example.labels.index(labelled[0])
    assert all(label == IGNORE for label in example.labels[:first])
    assert example.labels[first:] == example.input_ids[first:]
    prompt = str(tokenizer.decode(example.input_ids[:first]))
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "hello world" in prompt


def test_truncation_keeps_max_length_and_left_padding_aligns_answers(
    tiny_model: TinyModel,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    ends = end_of_turn_ids(tokenizer, None)
    long = tokenize_record(tokenizer, record("yes " * 50), 40, ends)
    assert long.truncated
    assert len(long.input_ids) == len(long.labels) == 40
    short = tokenize_record(tokenizer, record("no"), 40, ends)
    cut = tokenize_record(tokenizer, record("no", user="word " * 60), 40, ends)
    assert cut.answer_tokens == 0  # train_lora drops these

    batch = pad_batch([long, short], pad_id=0)
    assert batch["input_ids"].shape == (2, 40)
    assert batch["attention_mask"][1].sum() == len(short.input_ids)
    assert batch["position_ids"][1, -1] == len(short.input_ids) - 1
    span = answer_span([long, short])
    labelled = (batch["labels"] != IGNORE).nonzero()[:, 1]
    assert int(labelled.min()) == 40 - span


def test_unservable_options_are_refused_before_loading(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    with pytest.raises(AdapterError, match="rank 12 cannot be served by vLLM"):
        train_lora("/no/such/model", data, tmp_path / "out", TrainOptions(rank=12))
    with pytest.raises(AdapterError, match="lm_head"):
        TrainOptions(target_modules=("q_proj", "lm_head")).check()
    with pytest.raises(InvalidInput, match=r"lr=0\.0"):
        TrainOptions(lr=0.0).check()
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

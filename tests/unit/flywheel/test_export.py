"""Which captures become training examples and how: feedback filters, corrections, cut-off
answers, the leakage guard, deduplication, and the prompt rendered for the target route."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flywheel.export import Selection, select_examples
from flywheel.leakage import normalize
from ragtune.errors import InvalidInput
from service.routes.schemas import RouteSpec

VERBOSE = RouteSpec.model_validate(
    {
        "kind": "chat",
        "retrieval": {"collection": "docs"},
        "prompt": {
            "system": "You are a careful assistant. Answer from the sources.\n{context}",
            "user": "{question}",
        },
    }
)
TUNED = RouteSpec.model_validate(
    {
        "kind": "chat",
        "retrieval": {"collection": "docs"},
        "prompt": {"user": "{context}\n\nQ: {question}"},
    }
)


def capture(n: int, question: str | None = None, **fields: Any) -> dict[str, Any]:
    question = question or f"question {n}?"
    record: dict[str, Any] = {
        "id": f"chatcmpl-{n}",
        "time": f"2025-01-01T00:00:{n:02d}+00:00",
        "route": "qa",
        "messages": [{"role": "user", "content": question}],
        "question": question,
        "context": f"[1] doc{n}\ntext {n}",
        "prompt": [],
        "sources": [{"id": f"chunk-{n}", "document": f"doc{n}", "score": 0.5}],
        "answer": f"answer {n}",
        "adapter": None,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        "latency_ms": 5.0,
        "finish_reason": "stop",
    }
    return record | fields


def feedback(n: int, rating: int, correction: str | None = None) -> dict[str, Any]:
    return {"id": f"chatcmpl-{n}", "rating": rating, "correction": correction, "comment": None}


def select(
    captures: list[dict[str, Any]],
    given: list[dict[str, Any]] = (),  # type: ignore[assignment]
    target: tuple[str, RouteSpec] = ("qa", VERBOSE),
    **selection: Any,
) -> tuple[list[Any], Any]:
    by_id = {f["id"]: f for f in given}
    return select_examples(captures, by_id, target, Selection(**selection), "qa")


def answers(examples: list[Any]) -> list[str]:
    return [e.answer for e in examples]


def test_a_capture_becomes_the_prompt_the_route_renders_and_its_answer() -> None:
    examples, counts = select([capture(1)])
    (example,) = examples
    assert example.prompt == [
        {
            "role": "system",
            "content": "You are a careful assistant. Answer from the sources.\n[1] doc1\ntext 1",
        },
        {"role": "user", "content": "question 1?"},
    ]
    line = json.loads(example.line())
    assert line["messages"][-1] == {"role": "assistant", "content": "answer 1"}
    assert line["metadata"] == {
        "id": "chatcmpl-1",
        "route": "qa",
        "time": "2025-01-01T00:00:01+00:00",
        "sources": ["chunk-1"],
        "rating": None,
        "corrected": False,
    }
    assert (counts.read, counts.written) == (1, 1)


def test_as_route_renders_the_served_prompt_without_the_captured_instructions() -> None:
    examples, _ = select([capture(1)], target=("qa-tuned", TUNED))
    assert examples[0].prompt == [{"role": "user", "content": "[1] doc1\ntext 1\n\nQ: question 1?"}]
    assert "careful" not in examples[0].line()
    assert examples[0].metadata["captured_on"] == "qa"


def test_the_callers_history_and_system_messages_are_kept_as_serving_keeps_them() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "question 1?"},
    ]
    examples, _ = select([capture(1, messages=messages)], target=("qa-tuned", TUNED))
    assert examples[0].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "[1] doc1\ntext 1\n\nQ: question 1?"},
    ]


def test_by_default_answers_rated_bad_are_left_out_and_unrated_kept() -> None:
    captures = [capture(1), capture(2), capture(3)]
    examples, counts = select(captures, [feedback(1, -1), feedback(2, 0)])
    assert answers(examples) == ["answer 2", "answer 3"]
    assert counts.rated_out == 1


def test_min_rating_keeps_only_rated_answers_at_or_above_it() -> None:
    captures = [capture(1), capture(2), capture(3)]
    examples, counts = select(captures, [feedback(1, 1), feedback(2, 0)], min_rating=1)
    assert answers(examples) == ["answer 1"]
    assert counts.rated_out == 2  # one rated 0, one unrated


def test_a_correction_replaces_the_answer_and_counts_as_good() -> None:
    captures = [capture(1), capture(2)]
    examples, _ = select(captures, [feedback(1, -1, correction="the right answer")], min_rating=1)
    assert answers(examples) == ["the right answer"]
    assert examples[0].metadata["corrected"] is True
    assert examples[0].metadata["rating"] == 1


def test_corrected_only_keeps_the_corrections() -> None:
    captures = [capture(1), capture(2)]
    examples, counts = select(
        captures, [feedback(1, 1), feedback(2, -1, correction="fixed")], corrected_only=True
    )
    assert answers(examples) == ["fixed"]
    assert counts.rated_out == 1


def test_an_answer_cut_at_max_tokens_is_left_out_unless_corrected() -> None:
    captures = [capture(1, finish_reason="length"), capture(2, finish_reason="length")]
    examples, counts = select(captures, [feedback(2, 0, correction="whole answer")])
    assert answers(examples) == ["whole answer"]
    assert counts.cut == 1


def test_an_empty_answer_is_left_out() -> None:
    examples, counts = select([capture(1, answer="  "), capture(2)])
    assert answers(examples) == ["answer 2"]
    assert counts.empty == 1


def test_the_leakage_guard_drops_a_suites_question_whatever_its_case_and_spacing() -> None:
    held = frozenset({normalize("What is  Voyager?")})
    captures = [capture(1, question="what is voyager?\n"), capture(2)]
    examples, counts = select(captures, held_out=held)
    assert answers(examples) == ["answer 2"]
    assert counts.leaked == 1


def test_duplicates_keep_the_latest_answer() -> None:
    captures = [capture(1, question="same?"), capture(2, question="same?")]
    captures[1]["context"] = captures[0]["context"]
    examples, counts = select(captures)
    assert answers(examples) == ["answer 2"]
    assert counts.duplicates == 1


def test_duplicates_keep_a_corrected_answer_over_a_later_one() -> None:
    captures = [capture(1, question="same?"), capture(2, question="same?")]
    captures[1]["context"] = captures[0]["context"]
    examples, _ = select(captures, [feedback(1, 1, correction="corrected")])
    assert answers(examples) == ["corrected"]


def test_the_same_question_with_other_sources_is_another_example() -> None:
    captures = [capture(1, question="same?"), capture(2, question="same?")]
    examples, counts = select(captures)
    assert len(examples) == 2
    assert counts.duplicates == 0


def test_every_capture_is_counted_once() -> None:
    captures = [
        capture(1),
        capture(2, finish_reason="length"),
        capture(3, answer=""),
        capture(4, question="Held out?"),
        capture(5),
        capture(6),
    ]
    captures[5]["question"] = captures[5]["messages"][0]["content"] = "question 5?"
    captures[5]["context"] = captures[4]["context"]
    _, counts = select(captures, [feedback(1, -1)], held_out=frozenset({"held out?"}))
    assert counts.read == 6
    assert (counts.rated_out, counts.cut, counts.empty, counts.leaked) == (1, 1, 1, 1)
    assert (counts.duplicates, counts.written) == (1, 1)


def test_a_record_that_is_not_a_capture_is_refused_naming_it() -> None:
    broken = capture(1)
    del broken["question"]
    with pytest.raises(InvalidInput, match=r"capture 'chatcmpl-1': field 'question'"):
        select([broken])

"""The leakage guard's held-out questions: what a suite renders for each case, and the case
variables that make up its question."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flywheel.leakage import normalize, suite_questions


def write_suite(folder: Path, cases: list[dict[str, Any]], **keys: Any) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    suite = {"cases": "cases.jsonl", "strategies": [{"name": "s", "route": "chat"}], **keys}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_normalize_folds_case_and_collapses_whitespace() -> None:
    assert normalize("  What IS\n the  answer? ") == "what is the answer?"


def test_a_suite_holds_out_each_rendered_question_and_the_vars_it_is_made_of(
    tmp_path: Path,
) -> None:
    cases = [
        {"vars": {"text": "Great film!", "label": "positive"}},
        {"vars": {"text": "Dull.", "label": "negative"}},
    ]
    path = write_suite(tmp_path / "a", cases, prompt="Review: {text}")
    assert suite_questions([path]) == {
        "review: great film!",
        "great film!",
        "review: dull.",
        "dull.",
    }


def test_messages_suites_hold_out_the_last_user_turn_and_several_suites_add_up(
    tmp_path: Path,
) -> None:
    first = write_suite(
        tmp_path / "a",
        [{"vars": {"q": "Where do tails point?"}}],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "{q}"},
        ],
    )
    second = write_suite(tmp_path / "b", [{"vars": {"q": "What is Voyager?"}}], prompt="{q}")
    assert suite_questions([first, second]) == {"where do tails point?", "what is voyager?"}

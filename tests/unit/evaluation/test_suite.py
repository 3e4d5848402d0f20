"""The suite file: loading the issue's example, refusing bad suites with FILE:LINE and field,
few-shot examples and the messages a case sends."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from evaluation.suite import Suite, SuiteError, examples_for, load_suite, render_messages
from ragtune.errors import InvalidInput

SUITE = """\
description: Review sentiment as JSON
cases: cases.jsonl
prompt: "Review: {text}"
strategies:
  - name: zero-shot
    route: chat-plain
  - name: few-shot
    route: chat-plain
    few_shot: {k: 4, from: train.jsonl, input: text, output: label_json}
  - name: adapter
    route: chat-plain
    adapter: review-json
  - name: rag+adapter
    route: chat
    adapter: grounded-qa
    top_k: 3
assert:
  - type: is-json
    value: {type: object, required: [sentiment]}
  - type: equals
    value: "{label_json}"
gates:
  - {strategy: adapter, metric: pass_rate, min: 0.95}
  - {strategy: adapter, metric: prompt_tokens, max_ratio_of: few-shot, value: 0.5}
"""

CASES: list[dict[str, Any]] = [
    {"vars": {"text": "great film", "label_json": '{"sentiment": "positive"}'}},
    {"vars": {"text": "dull film", "label_json": '{"sentiment": "negative"}'}, "id": "dull"},
]


def make(tmp_path: Path, suite: str = SUITE, cases: list[dict[str, Any]] | None = None) -> Path:
    (tmp_path / "cases.jsonl").write_text(
        "\n".join(json.dumps(c) for c in (CASES if cases is None else cases)) + "\n"
    )
    train = [
        {"text": f"film {i}", "label_json": {"sentiment": ["positive", "negative"][i % 2]}}
        for i in range(8)
    ]
    train.append({"text": "great film", "label_json": {"sentiment": "positive"}})  # a scored case
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n")
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(suite))
    return path


def load_error(tmp_path: Path, suite: str, cases: list[dict[str, Any]] | None = None) -> str:
    path = make(tmp_path, suite, cases)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert isinstance(info.value, InvalidInput)
    return str(info.value).replace(str(path), "suite.yaml")


def test_the_issue_example_loads(tmp_path: Path) -> None:
    suite = load_suite(make(tmp_path))
    assert isinstance(suite, Suite)
    assert suite.name == "suite"
    assert [s.name for s in suite.strategies] == ["zero-shot", "few-shot", "adapter", "rag+adapter"]
    assert suite.strategy("rag+adapter").overrides() == {"top_k": 3}
    assert suite.strategy("adapter").adapter == "review-json"
    assert [c.id for c in suite.case_list] == ["1", "dull"]
    assert suite.judge.route == "chat-plain"
    assert [g.metric for g in suite.gates] == ["pass_rate", "prompt_tokens"]
    assert suite.metrics() == {"is-json", "equals"}
    assert [a.type for a in suite.assertions_for(suite.case_list[0])] == ["is-json", "equals"]
    assert len(suite.examples["few-shot"]) == 9


def replace(old: str, new: str) -> str:
    assert old in SUITE
    return SUITE.replace(old, new)


@pytest.mark.parametrize(
    ("suite", "expected"),
    [
        (
            replace("    top_k: 3", "    top_kk: 3"),
            "suite.yaml:16: strategy 'rag+adapter': field 'top_kk': unknown key 'top_kk'; "
            "allowed: adapter, few_shot, filters,",
        ),
        (
            replace("description:", "descripton:"),
            "suite.yaml:1: field 'descripton': unknown key 'descripton'; allowed: assert, cases,",
        ),
        (
            replace("    top_k: 3", "    top_k: 0"),
            "suite.yaml:16: strategy 'rag+adapter': field 'top_k': Input should be greater",
        ),
        (
            replace("k: 4, from", "k: 4, form"),
            "suite.yaml:9: strategy 'few-shot': field 'few_shot.form': unknown key 'form'",
        ),
        (
            replace("  - name: adapter\n    route: chat-plain\n", "  - name: adapter\n"),
            "suite.yaml:10: strategy 'adapter': field 'route': missing; this field is required",
        ),
        (
            replace("name: adapter", "name: zero-shot"),
            "suite.yaml:10: strategy 'zero-shot': field 'name': duplicate strategy name",
        ),
        (
            replace("type: is-json", "type: is-jsn"),
            "suite.yaml:18: field 'assert[0].type': unknown assertion type 'is-jsn'; known types: ",
        ),
        (
            replace('value: "{label_json}"', 'value: "{label}"'),
            "suite.yaml:21: field 'assert[1].value': uses {label}, which no case defines",
        ),
        (
            replace("Review: {text}", "Review: {txt}"),
            "suite.yaml:3: field 'prompt': uses {txt}, which no case defines in its vars",
        ),
        (
            replace("Review: {text}", "Review: {text"),
            "suite.yaml:3: field 'prompt': not a valid template",
        ),
        (
            replace(
                "{strategy: adapter, metric: pass_rate", "{strategy: adaptor, metric: pass_rate"
            ),
            "suite.yaml:23: field 'gates[0].strategy': no strategy 'adaptor'; the suite has ",
        ),
        (
            replace("max_ratio_of: few-shot", "max_ratio_of: fewshot"),
            "suite.yaml:24: field 'gates[1].max_ratio_of': no strategy 'fewshot'",
        ),
        (
            replace("metric: pass_rate", "metric: pass-rate"),
            "suite.yaml:23: field 'gates[0].metric': unknown metric 'pass-rate'; known: ",
        ),
        (
            replace("max_ratio_of: few-shot, value: 0.5", "max_ratio_of: few-shot"),
            "suite.yaml:24: field 'gates[1]': max_ratio_of needs 'value'",
        ),
        (
            replace("from: train.jsonl", "from: missing.jsonl"),
            "suite.yaml:9: strategy 'few-shot': field 'few_shot.from': no few-shot file",
        ),
        (
            replace("input: text,", "input: review,"),
            "suite.yaml:9: strategy 'few-shot': field 'few_shot.input': 'review' is not a variable",
        ),
        (
            replace("k: 4", "k: 9"),
            "suite.yaml:9: strategy 'few-shot': field 'few_shot.k': k is 9 but train.jsonl has "
            "only 8 rows that are not scored cases",
        ),
        (
            replace("cases: cases.jsonl", "cases: nope.jsonl"),
            "suite.yaml:2: field 'cases': no cases file",
        ),
        (
            replace('prompt: "Review: {text}"', ""),
            "suite.yaml:1: a suite needs exactly one of prompt: TEMPLATE or messages",
        ),
        (
            SUITE + "judge: {url: 'http://x/v1'}\n",
            "suite.yaml:25: field 'judge': a judge url needs 'model'",
        ),
        (SUITE + "concurrency: 0\n", "suite.yaml:25: field 'concurrency': Input should be"),
        ("strategies: [\n", "suite.yaml:2: not valid YAML"),
        ("- a list\n", "suite.yaml:1: a suite is a YAML mapping"),
    ],
)
def test_bad_suites_name_file_line_strategy_and_field(
    tmp_path: Path, suite: str, expected: str
) -> None:
    assert load_error(tmp_path, suite).startswith(expected)


def test_a_variable_missing_from_some_cases_names_the_first_case(tmp_path: Path) -> None:
    cases = [*CASES, {"vars": {"label_json": "{}"}, "id": "no-text"}]
    message = load_error(tmp_path, SUITE, cases)
    assert message.startswith("suite.yaml:3: field 'prompt': uses {text}, which case 'no-text'")
    assert "(cases.jsonl:3)" in message


def test_a_case_assert_var_must_be_in_that_case(tmp_path: Path) -> None:
    cases = [*CASES, {"vars": {"text": "x", "label_json": "{}"}, "assert": [
        {"type": "contains", "value": "{city}"}]}]  # fmt: skip
    message = load_error(tmp_path, SUITE, cases)
    assert message.startswith(f"{tmp_path / 'cases.jsonl'}:3: assert[0]: value uses {{city}}")


def test_few_shot_rows_must_have_the_fields(tmp_path: Path) -> None:
    path = make(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label_json": "x"}\n{"text": "b"}\n')
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{tmp_path / 'train.jsonl'}:2: the row has no field")


def test_few_shot_rows_must_supply_the_template_vars(tmp_path: Path) -> None:
    suite = replace('prompt: "Review: {text}"', 'prompt: "{lang} review: {text}"')
    cases = [{"vars": {**c["vars"], "lang": "en"}} for c in CASES]
    message = load_error(tmp_path, suite, cases)
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:1: the row lacks 'lang'")
    assert "'few-shot'" in message


def test_few_shot_examples_come_before_the_case_and_skip_scored_cases(tmp_path: Path) -> None:
    suite = load_suite(make(tmp_path))
    strategy = suite.strategy("few-shot")
    for seed in range(8):
        examples = examples_for(suite, strategy, seed)
        assert len(examples) == 4
        assert "great film" not in {e.input for e in examples}
        assert sorted(e.output for e in examples).count('{"sentiment": "positive"}') == 2
    examples = examples_for(suite, strategy, 3)
    assert examples == examples_for(suite, strategy, 3)
    messages = render_messages(suite, suite.case_list[1], examples)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4 + ["user"]
    assert messages[0]["content"] == f"Review: {examples[0].input}"
    assert messages[1]["content"] == examples[0].output
    assert messages[-1] == {"role": "user", "content": "Review: dull film"}
    assert examples_for(suite, suite.strategy("zero-shot"), 3) == []
    assert render_messages(suite, suite.case_list[0]) == [
        {"role": "user", "content": "Review: great film"}
    ]


def test_messages_suites_put_examples_after_the_system_turns(tmp_path: Path) -> None:
    suite_text = replace(
        'prompt: "Review: {text}"',
        "messages:\n"
        "  - {role: system, content: 'Label reviews. {{json}}'}\n"
        "  - {role: user, content: 'Review: {text}'}\n",
    )
    suite = load_suite(make(tmp_path, suite_text))
    examples = examples_for(suite, suite.strategy("few-shot"), 0)
    messages = render_messages(suite, suite.case_list[0], examples)
    assert messages[0] == {"role": "system", "content": "Label reviews. {json}"}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 4 + ["user"]
    assert messages[1]["content"].startswith("Review: film ")
    assert messages[-1]["content"] == "Review: great film"


def test_messages_errors_name_the_message(tmp_path: Path) -> None:
    suite_text = replace(
        'prompt: "Review: {text}"',
        "messages:\n  - {role: system, content: 'Label.'}\n  - {role: user, content: '{txt}'}\n",
    )
    assert load_error(tmp_path, suite_text).startswith(
        "suite.yaml:5: field 'messages[1].content': uses {txt}, which no case defines"
    )
    no_user = replace('prompt: "Review: {text}"', "messages: [{role: system, content: x}]")
    assert "needs at least one user message" in load_error(tmp_path, no_user)


def test_structured_vars_render_as_json(tmp_path: Path) -> None:
    cases = [{"vars": {"text": {"title": "T", "ok": True}, "label_json": "{}"}}]
    suite = load_suite(make(tmp_path, replace("k: 4", "k: 2"), cases))
    assert render_messages(suite, suite.case_list[0])[0]["content"] == (
        'Review: {"title": "T", "ok": true}'
    )


def test_judge_url_and_overrides(tmp_path: Path) -> None:
    text = SUITE + "judge: {url: 'http://judge/v1', model: m, api_key_env: JUDGE_KEY}\n"
    text = text.replace("    top_k: 3", '    top_k: 3\n    temperature: 0\n    stop: ["\\n"]')
    suite = load_suite(make(tmp_path, text))
    assert (suite.judge.url, suite.judge.model, suite.judge.route) == ("http://judge/v1", "m", None)
    assert suite.strategy("rag+adapter").overrides() == {
        "top_k": 3,
        "temperature": 0.0,
        "stop": ["\n"],
    }

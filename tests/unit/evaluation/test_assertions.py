"""Every assertion type, passing and failing, with the `not-` prefix, vars and weights."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from evaluation.assertions import (
    KNOWN_TYPES,
    case_verdict,
    check_spec,
    evaluate,
    evaluate_all,
    evaluate_async,
    needs_fresh_latency,
    needs_judge,
    parse_verdict,
    rouge_n,
    rubric_messages,
    substitute,
    value_vars,
)
from evaluation.results import AssertionResult, AssertionSpec, CaseOutput, Retrieved


def out(answer: str, **kw: Any) -> CaseOutput:
    return CaseOutput(answer=answer, **kw)


def spec(type_: str, value: Any = None, **kw: Any) -> AssertionSpec:
    return AssertionSpec(type=type_, value=value, **kw)


def check(type_: str, value: Any, answer: str | CaseOutput, **kw: Any) -> AssertionResult:
    output = answer if isinstance(answer, CaseOutput) else out(answer)
    s = spec(type_, value, **kw)
    check_spec(s)
    return evaluate(s, output, {})


def doc(doc_id: str) -> Retrieved:
    return Retrieved(doc_id=doc_id, chunk_index=0, score=0.5, source="s", title="t", snippet="x")


# (type, value, extra spec fields, passing output, failing output)
CASES: list[tuple[str, Any, dict[str, Any], str | CaseOutput, str | CaseOutput]] = [
    ("equals", "Paris", {}, "Paris", "Paris, France"),
    ("equals", {"a": 1}, {}, '{"a": 1}', '{"a": 2}'),
    ("equals", '{"a": 1}', {}, '{"a":1}', '{"a":2}'),
    ("contains", "Par", {}, "It is Paris.", "It is Rome."),
    ("icontains", "PARIS", {}, "it is paris", "it is rome"),
    ("contains-any", ["Paris", "Lyon"], {}, "Lyon", "Rome"),
    ("contains-any", "Paris, Lyon", {}, "Lyon", "Rome"),
    ("contains-all", ["Paris", "Lyon"], {}, "Paris and Lyon", "Paris only"),
    ("icontains-any", ["PARIS"], {}, "paris", "rome"),
    ("icontains-all", ["PARIS", "lyon"], {}, "Paris, LYON", "Paris"),
    ("starts-with", "Yes", {}, "Yes, it is.", "No, yes."),
    ("regex", r"^\d{3}-\d{2}$", {}, "123-45", "12-345"),
    ("is-json", None, {}, '{"a": 1}', "{a: 1}"),
    (
        "is-json",
        {"type": "object", "required": ["sentiment"]},
        {},
        '{"sentiment": "positive"}',
        '{"mood": "positive"}',
    ),
    ("json-field", {"field": "a.b", "equals": 2}, {}, '{"a": {"b": 2}}', '{"a": {"b": 3}}'),
    (
        "json-field",
        {"field": "items.1", "equals": "y"},
        {},
        '{"items": ["x", "y"]}',
        '{"items": []}',
    ),
    ("levenshtein", "kitten", {}, "sitting", "a completely different answer"),
    ("levenshtein", "kitten", {"threshold": 1}, "kitten!", "sitting"),
    ("rouge-n", "the cat sat on the mat", {}, "the cat sat on a mat", "dogs bark loudly"),
    ("latency", None, {"threshold": 500}, out("x", latency_ms=120), out("x", latency_ms=900)),
    ("word-count", 3, {}, "one two three", "one two"),
    ("word-count", {"min": 2, "max": 3}, {}, "one two", "one two three four"),
    ("refusal", None, {}, "I don't know.", "Paris."),
    (
        "refusal",
        None,
        {},
        out("  no ANSWER! ", refusal="No answer"),
        out("Paris", refusal="No answer"),
    ),
    ("refusal", "Cannot say", {}, "cannot say", "I don't know"),
    ("cites", None, {}, out("A [1]", cited=[1]), out("A [9]", cited=[1], removed_citations=1)),
    ("cites", None, {}, out("A [2]", cited=[2]), out("A", cited=[])),
    (
        "context-overlap",
        None,
        {},
        out("The Eiffel tower is in Paris", context_text="Paris has the Eiffel tower."),
        out("Rome has the Colosseum", context_text="Paris has the Eiffel tower."),
    ),
    (
        "retrieved",
        "d2",
        {},
        out("x", retrieved=[doc("d1"), doc("d2")]),
        out("x", retrieved=[doc("d1")]),
    ),
    ("retrieved", ["d7", "d1"], {}, out("x", retrieved=[doc("d1")]), out("x", retrieved=[])),
]


@pytest.mark.parametrize(
    ("type_", "value", "extra", "good", "bad"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_each_type_passes_and_fails(
    type_: str, value: Any, extra: dict[str, Any], good: str | CaseOutput, bad: str | CaseOutput
) -> None:
    passed = check(type_, value, good, **extra)
    failed = check(type_, value, bad, **extra)
    assert passed.passed, passed.reason
    assert passed.score > 0
    assert not failed.passed, failed.reason
    assert failed.score < passed.score
    assert failed.reason


def test_every_known_type_is_covered() -> None:
    covered = {c[0] for c in CASES} | {"llm-rubric"}
    assert covered == KNOWN_TYPES


@pytest.mark.parametrize(
    ("type_", "value", "good", "bad"),
    [
        ("not-contains", "sorry", "Paris", "sorry, no"),
        ("not-icontains", "SORRY", "Paris", "Sorry"),
        ("not-equals", "x", "y", "x"),
        ("not-regex", r"\d", "abc", "a1c"),
        ("not-is-json", None, "plain", "[1]"),
        ("not-starts-with", "I ", "Paris", "I think"),
        ("not-refusal", None, "Paris", "I don't know"),
    ],
)
def test_not_prefix_negates(type_: str, value: Any, good: str, bad: str) -> None:
    passed, failed = check(type_, value, good), check(type_, value, bad)
    assert passed.passed
    assert passed.score == 1.0
    assert not failed.passed
    assert failed.score == 0.0
    assert failed.type == type_
    assert failed.metric == type_


def test_not_prefix_inverts_a_graded_score() -> None:
    result = check("not-rouge-n", "the cat sat", "the cat sat")
    assert not result.passed
    assert result.score == 0.0
    assert check("not-rouge-n", "the cat sat", "dogs").passed


def test_vars_are_substituted_recursively() -> None:
    vars_ = {"city": "Paris", "label": {"sentiment": "positive"}, "n": 2}
    value = {"list": ["{city}", {"deep": "in {city}"}], "json": "{label}", "keep": r"\d{2,3}"}
    assert substitute(value, vars_) == {
        "list": ["Paris", {"deep": "in Paris"}],
        "json": '{"sentiment": "positive"}',
        "keep": r"\d{2,3}",
    }
    assert substitute("{{city}} {n}", vars_) == "{city} 2"
    nested = '{"a": {"b": "{city}"}}'
    assert substitute(nested, vars_) == '{"a": {"b": "Paris"}}'
    assert evaluate(spec("equals", nested), out('{"a":{"b":"Paris"}}'), vars_).passed
    assert value_vars(value) == {"city", "label"}
    result = evaluate(spec("contains-all", ["{city}", "x"]), out("Paris x"), vars_)
    assert result.passed
    assert evaluate(spec("equals", "{label}"), out('{"sentiment":"positive"}'), vars_).passed
    assert not evaluate(spec("equals", "{label}"), out('{"sentiment":"negative"}'), vars_).passed


def test_a_whole_value_list_var_stays_a_list() -> None:
    vars_ = {"gold": ["d1", "d2"], "words": ["cat", "mat"]}
    assert substitute("{gold}", vars_) == ["d1", "d2"]
    assert substitute("ids: {gold}", vars_) == 'ids: ["d1", "d2"]'
    assert substitute("{{gold}}", vars_) == "{gold}"
    assert evaluate(spec("contains-any", "{words}"), out("on the mat"), vars_).passed
    assert not evaluate(spec("contains-all", "{words}"), out("on the mat"), vars_).passed
    hits = out("", retrieved=[doc("d9"), doc("d2")])
    assert evaluate(spec("retrieved", "{gold}"), hits, vars_).passed
    assert not evaluate(spec("retrieved", "{gold}"), out("", retrieved=[doc("d9")]), vars_).passed


def test_non_string_values_compare_as_json_text() -> None:
    assert check("equals", True, "true").passed
    assert check("equals", 42, "42").passed
    assert not check("equals", 42, "42.0").passed


def test_a_regex_with_a_quantifier_and_a_var() -> None:
    result = evaluate(spec("regex", r"^{word}\d{2}$"), out("ab12"), {"word": "ab"})
    assert result.passed, result.reason


def test_weight_and_metric_carry_through_to_the_case_score() -> None:
    specs = [
        spec("contains", "a", weight=3, metric="has_a"),
        spec("contains", "z", weight=1),
    ]
    results = asyncio.run(evaluate_all(specs, out("abc"), {}))
    assert [(r.metric, r.weight, r.passed) for r in results] == [
        ("has_a", 3.0, True),
        ("contains", 1.0, False),
    ]
    assert case_verdict(results) == (False, 0.75)
    assert case_verdict(results[:1]) == (True, 1.0)
    assert case_verdict(results, error="timeout") == (False, 0.0)
    assert case_verdict([]) == (True, 1.0)


def test_rouge_n_is_promptfoos_recall() -> None:
    # js-rouge `n`: distinct candidate unigrams found in the reference / reference unigrams.
    assert rouge_n("the cat", "the cat sat on the mat") == pytest.approx(2 / 6)
    assert rouge_n("The cat sat on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_n("anything", "") == 0.0
    assert check("rouge-n", "a b c d", "a b c", threshold=0.7).passed
    assert not check("rouge-n", "a b c d", "a b").passed


def test_context_overlap_scores_the_share_of_content_words() -> None:
    result = check(
        "context-overlap",
        None,
        out("The tower is tall and red", context_text="a tall tower"),
        threshold=0.6,
    )
    assert result.score == pytest.approx(2 / 3)  # tower, tall of tower, tall, red
    assert result.passed
    assert not check("context-overlap", None, out("the and of", context_text="the")).passed


def test_retrieved_reason_gives_the_rank() -> None:
    result = check("retrieved", "d3", out("x", retrieved=[doc("d1"), doc("d2"), doc("d3")]))
    assert "rank 3" in result.reason


def test_json_field_on_a_non_json_answer_fails_with_a_reason() -> None:
    result = check("json-field", {"field": "a", "equals": 1}, "not json")
    assert not result.passed
    assert "not JSON" in result.reason
    assert "no field" in check("json-field", {"field": "b", "equals": 1}, '{"a": 1}').reason


def test_is_json_schema_failure_names_the_path() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    result = check("is-json", schema, '{"n": "one"}')
    assert not result.passed
    assert "n" in result.reason


def test_latency_is_marked_as_never_cached() -> None:
    assert needs_fresh_latency(spec("latency", threshold=5))
    assert needs_fresh_latency(spec("not-latency", threshold=5))
    assert not needs_fresh_latency(spec("contains", "x"))
    assert needs_judge(spec("llm-rubric", "polite"))
    assert not needs_judge(spec("equals", "x"))


@pytest.mark.parametrize(
    ("s", "message"),
    [
        (spec("contain", "x"), "unknown assertion type 'contain'; known types: "),
        (spec("equals"), "needs a 'value'"),
        (spec("contains-any", 3), "list of strings"),
        (spec("regex", "("), "does not compile"),
        (spec("json-field", {"field": "a"}), "json-field"),
        (spec("word-count", "three"), "word-count"),
        (spec("latency"), "threshold"),
        (spec("is-json", {"type": "nonsense"}), "not a valid JSON schema"),
        (spec("llm-rubric", ["x"]), "rubric text"),
        (spec("contains", "x", weight=-1), "weight must be 0 or more"),
    ],
)
def test_check_spec_refuses_bad_assertions(s: AssertionSpec, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_spec(s)


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="contains-any") as info:
        check_spec(spec("not-bogus", "x"))
    assert "'not-' prefix" in str(info.value)


# --- llm-rubric --------------------------------------------------------------------------------


def judge_answering(text: str) -> Any:
    seen: list[list[dict[str, str]]] = []

    async def judge(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return text

    judge.seen = seen  # type: ignore[attr-defined]
    return judge


def rubric(answer: str, judge: Any, **kw: Any) -> AssertionResult:
    s = spec(kw.pop("type_", "llm-rubric"), "Answers about {city}", **kw)
    return asyncio.run(evaluate_async(s, out(answer), {"city": "Paris"}, judge))


def test_llm_rubric_asks_the_judge_with_the_rubric_and_answer() -> None:
    judge = judge_answering('{"reason": "on topic", "pass": true, "score": 0.9}')
    result = rubric("Paris is big", judge)
    assert result.passed
    assert result.score == pytest.approx(0.9)
    assert result.reason == "on topic"
    user = judge.seen[0][-1]["content"]
    assert "Answers about Paris" in user
    assert "Paris is big" in user


def test_llm_rubric_parses_json_inside_prose_and_fences() -> None:
    text = 'Sure! ```json\n{"reason": "off topic", "pass": false}\n``` hope that helps {oops'
    result = rubric("Rome", judge_answering(text))
    assert not result.passed
    assert result.score == 0.0
    assert result.reason == "off topic"


def test_llm_rubric_fails_on_a_garbage_judge_answer() -> None:
    result = rubric("Paris", judge_answering("I think it is fine"))
    assert not result.passed
    assert "judge failed" in result.reason
    assert "did not answer" in result.reason
    negated = rubric("Paris", judge_answering("garbage"), type_="not-llm-rubric")
    assert not negated.passed  # a broken judge never passes, negated or not


def test_llm_rubric_threshold_and_negation() -> None:
    verdict = '{"reason": "meh", "pass": true, "score": 0.4}'
    assert not rubric("x", judge_answering(verdict), threshold=0.5).passed
    assert not rubric("x", judge_answering(verdict), type_="not-llm-rubric").passed


def test_llm_rubric_without_a_judge_fails_clearly() -> None:
    result = evaluate(spec("llm-rubric", "polite"), out("hi"), {})
    assert not result.passed
    assert "judge" in result.reason
    assert not asyncio.run(evaluate_async(spec("llm-rubric", "p"), out("hi"), {}, None)).passed


def test_parse_verdict_and_grading_prompt() -> None:
    assert parse_verdict('{"pass": true}').score == 1.0
    assert parse_verdict('{"pass": false, "score": 7}').score == 1.0  # clamped to 0..1
    with pytest.raises(ValueError, match="did not answer"):
        parse_verdict('{"pass": "yes"}')
    messages = rubric_messages("is polite", "hello")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert '"pass"' in messages[0]["content"]
    json.dumps(messages)

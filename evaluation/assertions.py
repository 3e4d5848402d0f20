"""Every assertion type a suite may use: promptfoo's names and meanings, plus ragtune's own.

Pure functions over a `CaseOutput`. Any type may carry a `not-` prefix, which negates it:
the verdict flips and the score becomes `1 - score`. `llm-rubric` needs a judge: the runner
passes an async `Judge` (chat messages in, the judge's text out) to `evaluate_async`.

Values: `json-field` takes `{field: "a.b.0", equals: VALUE}` (dotted path, list indexes as
numbers); `word-count` an int (exact) or `{min, max}`; `retrieved` a doc id or a list of them.
`threshold`: levenshtein's max distance (5), rouge-n's and context-overlap's min score (0.75,
0.5), latency's max milliseconds (required), llm-rubric's min judge score (optional).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import Levenshtein

from evaluation.results import AssertionResult, AssertionSpec, CaseOutput

Judge = Callable[[list[dict[str, str]]], Awaitable[str]]
"""Sends the grading messages to the judge (a route or an OpenAI-compatible endpoint) and
returns its answer's text; the runner provides it."""

DEFAULT_REFUSAL = "I don't know"
LEVENSHTEIN_DEFAULT = 5.0  # promptfoo's default maximum edit distance
ROUGE_DEFAULT = 0.75  # promptfoo's default rouge-n threshold
OVERLAP_DEFAULT = 0.5

_VALUE_REQUIRED = {
    "equals", "contains", "icontains", "contains-any", "contains-all", "icontains-any",
    "icontains-all", "starts-with", "regex", "json-field", "levenshtein", "rouge-n",
    "word-count", "retrieved", "llm-rubric",
}  # fmt: skip
_VALUE_OPTIONAL = {"is-json", "refusal", "latency", "cites", "context-overlap"}
KNOWN_TYPES: frozenset[str] = frozenset(_VALUE_REQUIRED | _VALUE_OPTIONAL)
"""The base assertion types; each may also be written with a `not-` prefix."""

# Assertion values substitute `{name}` from the case's vars and write `{{name}}` as a literal
# `{name}`; every other brace (a regex's `{2,3}`, a JSON text's `{"a": {"b": 1}}`) stays as it is.
_VAR = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")

# A small English stopword list: the words that say nothing about grounding.
_STOPWORD_TEXT = """
    a an the and or but if then else of to in on at by for with from as is are was were be
    been being am do does did doing have has had having it its it's this that these those
    there here i me my we our you your he him his she her they them their what which who
    whom when where why how not no nor so than too very can could should would will shall
    may might must s t just also about into over under again further once only own same
    such both each few more most other some any all up down out off"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def split_type(type_: str) -> tuple[str, bool]:
    """`not-contains` -> ("contains", True); `contains` -> ("contains", False)."""
    if type_.startswith("not-"):
        return type_[4:], True
    return type_, False


def needs_fresh_latency(spec: AssertionSpec) -> bool:
    """Whether the assertion measures latency, so a cached answer cannot answer it."""
    return split_type(spec.type)[0] == "latency"


def needs_judge(spec: AssertionSpec) -> bool:
    """Whether the assertion is graded by a judge model (`llm-rubric`)."""
    return split_type(spec.type)[0] == "llm-rubric"


def value_vars(value: Any) -> set[str]:
    """The `{name}` variables an assertion value uses, in strings nested in lists and dicts."""
    if isinstance(value, str):
        return {m.group(2) for m in _VAR.finditer(value) if m.group(2)}
    if isinstance(value, Mapping):
        return set().union(*(value_vars(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(value_vars(v) for v in value))
    return set()


def substitute(value: Any, vars: Mapping[str, Any]) -> Any:
    """`value` with each `{name}` replaced by the case's var, recursively in lists and dicts.
    A value that is exactly `{name}` of a list var becomes that list (`retrieved`, `contains-any`
    and `contains-all` take lists); elsewhere a structured var is written as JSON text."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and whole.group(2) and isinstance(vars.get(whole.group(2)), list):
            return list(vars[whole.group(2)])

        def repl(m: re.Match[str]) -> str:
            name = m.group(2)
            if name is None:
                return "{" + m.group(1) + "}"
            if name not in vars:
                return m.group(0)
            var = vars[name]
            return var if isinstance(var, str) else json.dumps(var, ensure_ascii=False)

        return _VAR.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: substitute(v, vars) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, vars) for v in value]
    return value


def check_spec(spec: AssertionSpec) -> None:
    """Refuse an assertion whose type or value cannot work; raise ValueError saying why."""
    base, _ = split_type(spec.type)
    if base not in KNOWN_TYPES:
        raise ValueError(
            f"unknown assertion type {spec.type!r}; known types: {', '.join(sorted(KNOWN_TYPES))}"
            " (each may take a 'not-' prefix)"
        )
    value = spec.value
    if base in _VALUE_REQUIRED and value is None:
        raise ValueError(f"assertion {spec.type!r} needs a 'value'")
    if base in {"contains-any", "contains-all", "icontains-any", "icontains-all"}:
        if not isinstance(value, str | list) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"assertion {spec.type!r} needs a list of strings as its value")
    elif base in {"contains", "icontains", "starts-with", "regex", "levenshtein", "rouge-n"}:
        if not isinstance(value, str | int | float):
            raise ValueError(f"assertion {spec.type!r} needs a string value")
        if base == "regex" and not value_vars(value):
            try:
                re.compile(str(value))
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from exc
    elif base == "llm-rubric" and not isinstance(value, str):
        raise ValueError("assertion 'llm-rubric' needs the rubric text as its value")
    elif base == "json-field":
        if not isinstance(value, Mapping) or set(value) != {"field", "equals"}:
            raise ValueError(
                "assertion 'json-field' needs value: {field: 'a.b', equals: VALUE} "
                "(the JSON answer's field a.b equals VALUE)"
            )
    elif base == "word-count":
        ok_range = isinstance(value, Mapping) and set(value) <= {"min", "max"} and value
        if not (isinstance(value, int) or ok_range):
            raise ValueError("assertion 'word-count' needs an int (exact) or {min, max}")
    elif base == "retrieved":
        if not isinstance(value, str | list):
            raise ValueError("assertion 'retrieved' needs a doc id or a list of doc ids")
    elif base == "is-json" and value is not None:
        if not isinstance(value, Mapping):
            raise ValueError("assertion 'is-json' takes an optional JSON schema (a mapping)")
        try:
            jsonschema.Draft202012Validator.check_schema(dict(value))
        except jsonschema.SchemaError as exc:
            raise ValueError(f"is-json's schema is not a valid JSON schema: {exc.message}") from exc
    elif base == "refusal" and value is not None and not isinstance(value, str):
        raise ValueError("assertion 'refusal' takes an optional refusal text")
    if spec.weight < 0:
        raise ValueError(f"assertion {spec.type!r}: weight must be 0 or more")
    if base == "latency" and spec.threshold is None:
        raise ValueError("assertion 'latency' needs a 'threshold' in milliseconds")


class JudgeVerdict(BaseModel):
    """What the judge answers for an llm-rubric assertion."""

    model_config = ConfigDict(populate_by_name=True)

    reason: str = ""
    passed: bool = Field(alias="pass")
    score: float | None = None


def rubric_messages(rubric: str, answer: str) -> list[dict[str, str]]:
    """The chat messages that ask a judge to grade `answer` against `rubric` (promptfoo's)."""
    system = (
        "You are grading output according to a user-specified rubric. If the statement in the "
        "rubric is true, then the output passes the test. You respond with a JSON object with "
        'this structure: {"reason": string, "pass": boolean, "score": number} where score is '
        "from 0.0 to 1.0. Answer with the JSON object only.\n\n"
        "Examples:\n\n<Output>Hello world</Output>\n<Rubric>Content contains a greeting</Rubric>\n"
        '{"reason": "the content contains the word \'Hello\'", "pass": true, "score": 1.0}\n\n'
        "<Output>Avast ye swabs, repel the invaders!</Output>\n"
        "<Rubric>Does not speak like a pirate</Rubric>\n"
        '{"reason": "\'avast ye\' is a common pirate term", "pass": false, "score": 0.0}'
    )
    user = f"<Output>\n{answer}\n</Output>\n<Rubric>\n{rubric}\n</Rubric>"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> JudgeVerdict:
    """The judge's JSON verdict, found in `text` even inside prose or a code fence."""
    decoder = json.JSONDecoder()
    for start in [i for i, c in enumerate(text) if c == "{"]:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("pass"), bool):
            verdict = JudgeVerdict.model_validate(obj)
            if verdict.score is None:
                verdict.score = 1.0 if verdict.passed else 0.0
            verdict.score = min(1.0, max(0.0, verdict.score))
            return verdict
    raise ValueError(f'the judge did not answer {{"pass": bool, ...}} JSON: {text[:200]!r}')


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _normalise(text: str) -> str:
    table = str.maketrans("", "", string.punctuation + "\u2019\u2018")
    return "".join(text.lower().translate(table).split())


def _rouge_tokens(text: str) -> list[str]:
    # An approximation of js-rouge's Penn Treebank tokenizer (which promptfoo uses): words with
    # inner apostrophes, numbers with separators, and each punctuation mark on its own.
    return re.findall(r"\w+(?:[.,']\w+)*|[^\w\s]", text)


def rouge_n(candidate: str, reference: str, n: int = 1) -> float:
    """ROUGE-N as promptfoo computes it (js-rouge `n`): distinct candidate n-grams that occur in
    the reference, over the reference's n-gram count; case-sensitive. No kept Python package
    computes this exact recall variant, so it is written out here."""
    cand, ref = _rouge_tokens(candidate), _rouge_tokens(reference)
    ref_grams = [" ".join(ref[i : i + n]) for i in range(len(ref) - n + 1)]
    if not ref_grams:
        return 0.0
    cand_grams = {" ".join(cand[i : i + n]) for i in range(len(cand) - n + 1)}
    return len(cand_grams & set(ref_grams)) / len(ref_grams)


def _json_answer(output: CaseOutput) -> Any:
    return json.loads(output.answer.strip())


def _field(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
        elif (
            isinstance(obj, list)
            and part.lstrip("-").isdigit()
            and -len(obj) <= int(part) < len(obj)
        ):
            obj = obj[int(part)]
        else:
            raise KeyError(part)
    return obj


def _same_json(answer: str, expected: str) -> bool:
    # A JSON label written `{"a": 1}` equals an answer written `{"a":1}`: both are parsed and
    # compared when both are JSON objects or arrays (promptfoo compares the text only).
    try:
        got, want = json.loads(answer), json.loads(expected)
    except ValueError:
        return False
    return isinstance(want, dict | list) and got == want


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


Verdict = tuple[bool, float, str]


def _binary(ok: bool, reason: str) -> Verdict:
    return ok, 1.0 if ok else 0.0, reason


def _check(base: str, spec: AssertionSpec, value: Any, output: CaseOutput) -> Verdict:
    answer = output.answer
    text = "" if value is None else (value if isinstance(value, str) else json.dumps(value))
    if base == "equals":
        if isinstance(value, Mapping | list):
            try:
                got = _json_answer(output)
            except ValueError:
                return _binary(False, "the answer is not JSON, expected a JSON value")
            return _binary(
                got == value, f"JSON answer {'equals' if got == value else '!='} {value!r}"
            )
        ok = answer.strip() == text.strip() or _same_json(answer, text)
        return _binary(ok, f"answer {'equals' if ok else 'differs from'} {text!r}")
    if base in {"contains", "icontains"}:
        fold = base == "icontains"
        ok = (text.lower() in answer.lower()) if fold else (text in answer)
        return _binary(ok, f"answer {'contains' if ok else 'lacks'} {text!r}")
    if base in {"contains-any", "contains-all", "icontains-any", "icontains-all"}:
        fold = base.startswith("i")
        hay = answer.lower() if fold else answer
        items = _as_list(value)
        found = [v for v in items if (v.lower() if fold else v) in hay]
        if base.endswith("any"):
            return _binary(bool(found), f"found {found!r}" if found else f"none of {items!r}")
        missing = [v for v in items if v not in found]
        return _binary(not missing, f"missing {missing!r}" if missing else "contains them all")
    if base == "starts-with":
        ok = answer.startswith(text)
        return _binary(ok, f"answer {'starts' if ok else 'does not start'} with {text!r}")
    if base == "regex":
        try:
            ok = re.search(text, answer) is not None
        except re.error as exc:
            return _binary(False, f"regex {text!r} does not compile: {exc}")
        return _binary(ok, f"regex {text!r} {'matches' if ok else 'does not match'}")
    if base == "is-json":
        try:
            got = _json_answer(output)
        except ValueError as exc:
            return _binary(False, f"the answer is not JSON: {exc}")
        if value is not None:
            error = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(dict(value)).iter_errors(got)
            )
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return _binary(False, f"JSON fails the schema at {where}: {error.message}")
        return _binary(True, "the answer is JSON" + (" matching the schema" if value else ""))
    if base == "json-field":
        try:
            got = _field(_json_answer(output), str(value["field"]))
        except ValueError:
            return _binary(False, "the answer is not JSON")
        except KeyError:
            return _binary(False, f"the JSON answer has no field {value['field']!r}")
        ok = got == value["equals"]
        return _binary(ok, f"{value['field']} = {got!r}, expected {value['equals']!r}")
    if base == "levenshtein":
        limit = spec.threshold if spec.threshold is not None else LEVENSHTEIN_DEFAULT
        dist = Levenshtein.distance(answer, text)
        return _binary(dist <= limit, f"edit distance {dist} (max {limit:g})")
    if base == "rouge-n":
        limit = spec.threshold if spec.threshold is not None else ROUGE_DEFAULT
        score = rouge_n(answer, text)
        return score >= limit, score, f"ROUGE-N {score:.2f} (min {limit:g})"
    if base == "latency":
        limit = spec.threshold or 0.0
        ok = output.latency_ms <= limit
        return _binary(ok, f"latency {output.latency_ms:.0f} ms (max {limit:g} ms)")
    if base == "word-count":
        count = len(answer.split())
        if isinstance(value, Mapping):
            lo, hi = value.get("min"), value.get("max")
            ok = (lo is None or count >= lo) and (hi is None or count <= hi)
            return _binary(ok, f"{count} words (min {lo}, max {hi})")
        return _binary(count == value, f"{count} words, expected {value}")
    if base == "refusal":
        refusal = text or output.refusal or DEFAULT_REFUSAL
        ok = _normalise(answer) == _normalise(refusal)
        return _binary(ok, f"answer {'is' if ok else 'is not'} the refusal {refusal!r}")
    if base == "cites":
        ok = bool(output.cited) and output.removed_citations == 0
        return _binary(
            ok, f"cites {output.cited or 'no source'}, {output.removed_citations} removed markers"
        )
    if base == "context-overlap":
        limit = spec.threshold if spec.threshold is not None else OVERLAP_DEFAULT
        content = [w for w in _words(answer) if w not in _STOPWORDS]
        if not content:
            return False, 0.0, "the answer has no content words"
        context = set(_words(output.context_text))
        share = sum(w in context for w in content) / len(content)
        return share >= limit, share, f"{share:.0%} of the answer's content words in the sources"
    if base == "retrieved":
        gold = _as_list(value) if isinstance(value, list) else [text]
        ids = [r.doc_id for r in output.retrieved]
        rank = next((i for i, d in enumerate(ids, 1) if d in gold), None)
        if rank is None:
            return _binary(False, f"{gold!r} not among the {len(ids)} retrieved sources")
        return _binary(True, f"{ids[rank - 1]!r} retrieved at rank {rank}")
    raise ValueError(f"assertion {spec.type!r} cannot be evaluated here")


def _result(spec: AssertionSpec, verdict: Verdict, negated: bool) -> AssertionResult:
    ok, score, reason = verdict
    if negated:
        ok, score, reason = not ok, 1.0 - score, f"negated: {reason}"
    return AssertionResult(
        type=spec.type,
        metric=spec.metric or spec.type,
        passed=ok,
        score=score,
        weight=spec.weight,
        reason=reason,
    )


def evaluate(spec: AssertionSpec, output: CaseOutput, vars: Mapping[str, Any]) -> AssertionResult:
    """Grade one case's output; `llm-rubric` fails here for want of a judge (use evaluate_async)."""
    base, negated = split_type(spec.type)
    if base == "llm-rubric":
        return _result(spec, (False, 0.0, "llm-rubric needs a judge"), False)
    return _result(spec, _check(base, spec, substitute(spec.value, vars), output), negated)


async def evaluate_async(
    spec: AssertionSpec, output: CaseOutput, vars: Mapping[str, Any], judge: Judge | None
) -> AssertionResult:
    """Grade one case's output, asking `judge` for llm-rubric; a judge error fails the assertion."""
    base, negated = split_type(spec.type)
    if base != "llm-rubric":
        return evaluate(spec, output, vars)
    if judge is None:
        return evaluate(spec, output, vars)
    rubric = str(substitute(spec.value, vars))
    try:
        verdict = parse_verdict(await judge(rubric_messages(rubric, output.answer)))
    except Exception as exc:  # a judge that fails or answers garbage fails the assertion
        return _result(spec, (False, 0.0, f"judge failed: {exc}"), False)
    score = 1.0 if verdict.score is None else verdict.score
    if spec.threshold is not None:
        ok = verdict.passed and score >= spec.threshold
    else:
        ok = verdict.passed
    return _result(spec, (ok, score, verdict.reason or "(the judge gave no reason)"), negated)


async def evaluate_all(
    specs: Sequence[AssertionSpec],
    output: CaseOutput,
    vars: Mapping[str, Any],
    judge: Judge | None = None,
) -> list[AssertionResult]:
    """Grade one case's output against every assertion, in order."""
    return [await evaluate_async(spec, output, vars, judge) for spec in specs]


def case_verdict(
    results: Sequence[AssertionResult], error: str | None = None
) -> tuple[bool, float]:
    """A case's (passed, score): all assertions pass, and the weighted mean of their scores."""
    if error is not None:
        return False, 0.0
    total = sum(r.weight for r in results)
    passed = all(r.passed for r in results)
    if total <= 0:
        return passed, 1.0 if passed else 0.0
    return passed, sum(r.score * r.weight for r in results) / total

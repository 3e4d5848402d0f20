"""The suite file: its pydantic models, `load_suite`, few-shot drawing and message rendering.

Every error is a `SuiteError` whose message starts `FILE:LINE:` and names the strategy and the
field, so a bad suite stops before any case runs. Checks that need the server (the route, the
adapter, the route's overrides) are the runner's, through its target.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluation.assertions import check_spec, value_vars
from evaluation.cases import (
    Case,
    Example,
    SuiteError,
    draw_examples,
    excluded,
    read_cases,
    read_examples,
    render_template,
    scored_inputs,
)
from evaluation.results import AssertionSpec

__all__ = [
    "FewShot", "Gate", "JudgeSpec", "Message", "Strategy", "Suite", "SuiteError", "SuiteFile",
    "draw_examples", "examples_for", "load_suite", "render_messages",
]  # fmt: skip

GATE_METRICS = frozenset(
    {"pass_rate", "score", "prompt_tokens", "completion_tokens", "latency_p50", "latency_p95",
     "errors"}
)  # fmt: skip
OVERRIDE_FIELDS = ("top_k", "mode", "filters", "max_tokens", "temperature", "top_p", "seed", "stop")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Message(_Strict):
    """One turn of a `messages:` template; `content` is a str.format template over the vars."""

    role: Literal["system", "user", "assistant"]
    content: str


class FewShot(_Strict):
    """`k` examples drawn from the JSONL file `from`: the `input` field (a variable of the prompt
    template; the row supplies the template's vars) and the `output` field (the answer)."""

    k: int = Field(ge=1)
    from_: str = Field(alias="from", min_length=1)
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class Strategy(_Strict):
    """One way of answering: a route, optionally an adapter, few-shot examples and overrides."""

    name: str = Field(min_length=1)
    route: str = Field(min_length=1)
    adapter: str | None = None
    few_shot: FewShot | None = None
    top_k: int | None = Field(default=None, ge=1)
    mode: str | None = None
    filters: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None

    def overrides(self) -> dict[str, Any]:
        """The per-request overrides this strategy sets (unset ones left out)."""
        return {f: getattr(self, f) for f in OVERRIDE_FIELDS if getattr(self, f) is not None}


class Gate(_Strict):
    """A condition the run must meet: a bound (`min`/`max`) or a ratio to another strategy."""

    strategy: str
    metric: str
    min: float | None = None
    max: float | None = None
    max_ratio_of: str | None = None
    min_ratio_of: str | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Gate:
        kinds = [k for k in ("min", "max", "max_ratio_of", "min_ratio_of") if getattr(self, k)
                 is not None]  # fmt: skip
        if len(kinds) != 1:
            raise ValueError(
                "a gate needs exactly one of min, max, max_ratio_of, min_ratio_of "
                f"(got {', '.join(kinds) or 'none'})"
            )
        ratio = kinds[0].endswith("_ratio_of")
        if ratio and self.value is None:
            raise ValueError(f"{kinds[0]} needs 'value': the ratio to the other strategy")
        if not ratio and self.value is not None:
            raise ValueError("'value' goes with max_ratio_of or min_ratio_of only")
        return self


class JudgeSpec(_Strict):
    """Who grades llm-rubric: a route of this ragtune, or any OpenAI-compatible endpoint."""

    route: str | None = None
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> JudgeSpec:
        if (self.route is None) == (self.url is None):
            raise ValueError("the judge needs exactly one of route: NAME or url: URL")
        if self.url is not None and not self.model:
            raise ValueError("a judge url needs 'model': the model name the endpoint serves")
        if self.route is not None and (self.model or self.api_key_env):
            raise ValueError("model and api_key_env go with a judge url, not a route")
        return self


class SuiteFile(_Strict):
    """The suite YAML as written."""

    description: str = ""
    cases: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    strategies: list[Strategy] = Field(min_length=1)
    asserts: list[AssertionSpec] = Field(default_factory=list, alias="assert")
    gates: list[Gate] = Field(default_factory=list)
    judge: JudgeSpec = Field(default_factory=lambda: JudgeSpec(route="chat-plain"))
    concurrency: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _prompt_xor_messages(self) -> SuiteFile:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a suite needs exactly one of prompt: TEMPLATE or messages: [...]")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("messages needs at least one user message")
        return self


class Suite(SuiteFile):
    """A loaded suite: the file's models plus its cases and each strategy's few-shot rows."""

    path: Path
    case_list: list[Case]
    examples: dict[str, list[Example]] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        """The suite's name in summaries: its file name without the extension."""
        return self.path.stem

    def strategy(self, name: str) -> Strategy:
        """The strategy called `name`."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise SuiteError(f"{self.path}: no strategy {name!r}; the suite has {self._names()}")

    def _names(self) -> str:
        return ", ".join(s.name for s in self.strategies)

    def assertions_for(self, case: Case) -> list[AssertionSpec]:
        """The assertions a case is graded by: its own, then the suite's."""
        return [*case.asserts, *self.asserts]

    def metrics(self) -> set[str]:
        """Every assertion metric name the suite reports (an assertion's metric, else its type)."""
        specs = [*self.asserts, *(a for c in self.case_list for a in c.asserts)]
        return {s.metric or s.type for s in specs}


_ALLOWED: dict[tuple[str, ...], type[BaseModel]] = {
    (): SuiteFile, ("strategies",): Strategy, ("strategies", "few_shot"): FewShot,
    ("gates",): Gate, ("judge",): JudgeSpec, ("messages",): Message, ("assert",): AssertionSpec,
}  # fmt: skip


class _Doc:
    """The composed YAML: node marks for line numbers, and the data for strategy names."""

    def __init__(self, path: Path, root: yaml.Node, data: Any) -> None:
        self.path, self.root, self.data = path, root, data
        self.cases_name = "cases"

    def error(self, loc: Sequence[str | int], message: str, absent: bool = False) -> SuiteError:
        """A SuiteError at `loc`'s YAML line; `absent`: loc's last key is missing from the YAML."""
        node, line, parts = self.root, self.root.start_mark.line + 1, []
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
            parts.append(part)
        if absent and len(parts) == len(loc) - 1:
            parts.append(loc[-1])
        where = f"{self.path}:{line}:"
        if len(parts) >= 2 and parts[0] == "strategies" and isinstance(parts[1], int):
            raw = self.data["strategies"][parts[1]]
            name = raw.get("name") if isinstance(raw, dict) else None
            where += f" strategy {name or '#' + str(parts[1] + 1)!r}:"
            parts = parts[2:]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
        return SuiteError(f"{where} field {field!r}: {message}" if field else f"{where} {message}")


def _pydantic_error(doc: _Doc, exc: ValidationError) -> SuiteError:
    errors = exc.errors()
    # An unknown key is the likelier cause of a "missing" one beside it (a misspelt `from`).
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        key = loc[-1]
        shape = tuple(p for p in loc[:-1] if isinstance(p, str))
        model = _ALLOWED.get(shape)
        allowed = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        message = f"unknown key {key!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif first["type"] == "missing":
        message = "missing; this field is required"
    return doc.error(loc, message, absent=first["type"] == "missing")


def _compose(path: Path) -> _Doc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such suite file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SuiteError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        raise SuiteError(f"{path}:1: a suite is a YAML mapping (description, cases, strategies...)")
    return _Doc(path, root, data)


def _template_vars(doc: _Doc, loc: Sequence[str | int], template: str) -> set[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        message = f"not a valid template ({exc}); write literal braces as {{{{ }}}}"
        raise doc.error(loc, message) from None
    names = set()
    for field in fields:
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name.isidentifier():
            raise doc.error(loc, f"{{{field}}} is not a case variable; name one, e.g. {{text}}")
        names.add(name)
    return names


def _check_defined(doc: _Doc, loc: Sequence[str | int], names: set[str], cases: list[Case]) -> None:
    for name in sorted(names):
        lacking = next((c for c in cases if name not in c.vars), None)
        if lacking is None:
            continue
        if all(name not in c.vars for c in cases):
            raise doc.error(loc, f"uses {{{name}}}, which no case defines in its vars")
        raise doc.error(
            loc,
            f"uses {{{name}}}, which case {lacking.id!r} ({doc.cases_name}:{lacking.line}) "
            "does not define in its vars; every case needs it",
        )


def _user_template(file: SuiteFile) -> str:
    if file.prompt is not None:
        return file.prompt
    assert file.messages is not None
    return [m for m in file.messages if m.role == "user"][-1].content


def load_suite(path: Path) -> Suite:
    """Load and check the suite at `path` with its cases and few-shot files."""
    doc = _compose(path)
    try:
        file = SuiteFile.model_validate(doc.data)
    except ValidationError as exc:
        raise _pydantic_error(doc, exc) from None

    names: dict[str, int] = {}
    for i, s in enumerate(file.strategies):
        if s.name in names:
            raise doc.error(["strategies", i, "name"], f"duplicate strategy name {s.name!r}")
        names[s.name] = i
    for i, spec in enumerate(file.asserts):
        try:
            check_spec(spec)
        except ValueError as exc:
            raise doc.error(["assert", i, "type"], str(exc)) from None

    cases_path = path.parent / file.cases
    if not cases_path.is_file():
        raise doc.error(["cases"], f"no cases file {cases_path}; the path is relative to the suite")
    cases = read_cases(cases_path)
    doc.cases_name = file.cases

    known_metrics = GATE_METRICS | {s.metric or s.type for s in file.asserts}
    known_metrics |= {a.metric or a.type for c in cases for a in c.asserts}
    for i, gate in enumerate(file.gates):
        for key in ("strategy", "max_ratio_of", "min_ratio_of"):
            other = getattr(gate, key)
            if other is not None and other not in names:
                raise doc.error(
                    ["gates", i, key], f"no strategy {other!r}; the suite has {', '.join(names)}"
                )
        if gate.metric not in known_metrics:
            raise doc.error(
                ["gates", i, "metric"],
                f"unknown metric {gate.metric!r}; known: {', '.join(sorted(known_metrics))}",
            )

    if file.prompt is not None:
        _check_defined(doc, ["prompt"], _template_vars(doc, ["prompt"], file.prompt), cases)
    for i, m in enumerate(file.messages or []):
        loc: list[str | int] = ["messages", i, "content"]
        _check_defined(doc, loc, _template_vars(doc, loc, m.content), cases)
    for i, spec in enumerate(file.asserts):
        _check_defined(doc, ["assert", i, "value"], value_vars(spec.value), cases)
    for case in cases:
        for j, spec in enumerate(case.asserts):
            missing = sorted(value_vars(spec.value) - set(case.vars))
            if missing:
                raise SuiteError(
                    f"{cases_path}:{case.line}: assert[{j}]: value uses {{{missing[0]}}}, "
                    "which this case's vars do not define"
                )

    template = _user_template(file)
    template_names = _template_vars(doc, ["prompt"], template)
    examples: dict[str, list[Example]] = {}
    for i, s in enumerate(file.strategies):
        if s.few_shot is not None:
            examples[s.name] = _load_examples(doc, i, s.few_shot, template, template_names, cases)
    return Suite(
        **{name: getattr(file, name) for name in SuiteFile.model_fields},
        path=path,
        case_list=cases,
        examples=examples,
    )


def _load_examples(
    doc: _Doc, index: int, few: FewShot, template: str, names: set[str], cases: list[Case]
) -> list[Example]:
    loc: list[str | int] = ["strategies", index, "few_shot"]
    if few.input not in names:
        raise doc.error(
            [*loc, "input"],
            f"{few.input!r} is not a variable of the user prompt template "
            f"({', '.join('{' + n + '}' for n in sorted(names)) or 'none'})",
        )
    source = doc.path.parent / few.from_
    if not source.is_file():
        raise doc.error(
            [*loc, "from"], f"no few-shot file {source}; the path is relative to the suite"
        )
    rows = read_examples(source, few.input, few.output)
    for row in rows:
        try:
            row.prompt = render_template(template, row.vars)
        except (KeyError, IndexError) as exc:
            raise SuiteError(
                f"{source}:{row.line}: the row lacks {exc}, which the prompt template uses "
                f"(few-shot source of strategy {doc.data['strategies'][index]['name']!r})"
            ) from None
    usable = [r for r in rows if not excluded(r, scored_inputs(cases, template, few.input))]
    if len(usable) < few.k:
        raise doc.error(
            [*loc, "k"],
            f"k is {few.k} but {source.name} has only {len(usable)} rows that are not scored cases",
        )
    return rows


def examples_for(suite: Suite, strategy: Strategy, seed: int) -> list[Example]:
    """The few-shot examples `strategy` uses for every case of the run (none without few_shot)."""
    if strategy.few_shot is None:
        return []
    exclude = scored_inputs(suite.case_list, _user_template(suite), strategy.few_shot.input)
    return draw_examples(suite.examples[strategy.name], strategy.few_shot.k, seed, exclude)


def render_messages(
    suite: SuiteFile, case: Case, examples: Sequence[Example] = ()
) -> list[dict[str, str]]:
    """The chat messages for one case: the suite's leading system messages, then each example as
    a user turn (its rendered prompt) and an assistant turn (its output), then the case's turns."""
    if suite.prompt is not None:
        turns = [Message(role="user", content=suite.prompt)]
    else:
        assert suite.messages is not None
        turns = list(suite.messages)
    lead = 0
    while lead < len(turns) and turns[lead].role == "system":
        lead += 1
    out = [{"role": m.role, "content": render_template(m.content, case.vars)} for m in turns[:lead]]
    for ex in examples:
        out.append({"role": "user", "content": ex.prompt})
        out.append({"role": "assistant", "content": ex.output})
    out += [
        {"role": m.role, "content": render_template(m.content, case.vars)} for m in turns[lead:]
    ]
    return out

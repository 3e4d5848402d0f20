"""The sweep file of `ragtune adapters sweep`: which data, which suite judges, and the grid of
training options; each combination of the grid is one run, named by its options.

    name: grounded-qa          # adapter name the runs are registered under
    alias: grounded-qa         # the alias the best run gets, if the suite's gates pass
    data: train.jsonl          # chat JSONL (paths relative to this file)
    eval_data: val.jsonl       # optional: else each run holds out options.validation
    suite: suite.yaml          # the eval suite; one of its strategies is answered by the alias
    strategy: tuned            # optional: that strategy (default: the first the alias answers)
    metric: pass_rate          # optional: the quality compared (pass_rate or an assert metric)
    cases: 100                 # optional: score on the suite's first N cases (default: all)
    options: {epochs: 3}       # training options every run shares
    grid: {rank: [8, 16], lr: [1e-4, 2e-4]}
    out: runs                  # optional: default <this file's name>-runs beside it
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from adapters.records import check_name
from adapters.train_options import TrainOptions
from ragtune.errors import InvalidInput, NotFound

_OPTIONS = TypeAdapter(TrainOptions)
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainOptions))
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class SweepFile(BaseModel):
    """The sweep file as written; `retrain` fills in what it leaves out."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    alias: str | None = None
    data: str | None = None
    eval_data: str | None = None
    suite: str | None = None
    strategy: str | None = None
    metric: str = "pass_rate"
    cases: int | None = Field(default=None, ge=1)
    base_model: str | None = None
    description: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    out: str | None = None


@dataclass(frozen=True)
class Run:
    """One combination of the grid: its id (stable for its options and data) and options."""

    id: str
    grid: dict[str, Any]
    options: TrainOptions

    def options_json(self) -> dict[str, Any]:
        values: dict[str, Any] = _plain(dataclasses.asdict(self.options))
        return values


@dataclass(frozen=True)
class SweepConfig:
    """A checked sweep: every path resolved, every run's options valid."""

    path: Path
    name: str
    alias: str
    data: Path
    eval_data: Path | None
    suite: Path
    strategy: str | None
    metric: str
    base_model: str | None
    description: str
    options: dict[str, Any]
    grid: dict[str, list[Any]]
    out: Path
    # Score on the suite's first N cases (the suites interleave labels, so a prefix is balanced).
    cases: int | None = None


def read_sweep_file(path: Path) -> SweepFile:
    """The sweep file at `path`, its keys checked (not yet its paths)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"sweep file {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"sweep file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"sweep file {path}: a YAML mapping (name, alias, data, suite, grid)")
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {', '.join(SweepFile.model_fields)}"
        raise InvalidInput(f"sweep file {path}: field {where!r}: {message}") from None


def resolve(file: SweepFile, path: Path, **given: Any) -> SweepConfig:
    """The sweep `file` (read from `path`) with `given` fields in place of the file's, its
    paths made relative to the file's folder and checked, and its option names checked."""
    values = file.model_dump() | {k: v for k, v in given.items() if v is not None}
    missing = [k for k in ("name", "alias", "data", "suite") if not values.get(k)]
    if missing:
        raise InvalidInput(f"sweep file {path}: missing {', '.join(map(repr, missing))}")
    check_name(values["name"], "name")
    check_name(values["alias"], "alias")
    folder = path.parent
    data = _existing(folder, values["data"], "data", path)
    suite = _existing(folder, values["suite"], "suite", path)
    eval_data = (
        _existing(folder, values["eval_data"], "eval_data", path) if values["eval_data"] else None
    )
    _check_option_names(values["options"], values["grid"], path)
    out = folder / (values["out"] or f"{path.stem}-runs")
    return SweepConfig(
        path=path,
        name=values["name"],
        alias=values["alias"],
        data=data,
        eval_data=eval_data,
        suite=suite,
        strategy=values["strategy"],
        metric=values["metric"],
        base_model=values["base_model"],
        description=values["description"],
        options=dict(values["options"]),
        grid={k: list(v) for k, v in values["grid"].items()},
        out=out,
        cases=values["cases"],
    )


def _existing(folder: Path, value: str | Path, field: str, path: Path) -> Path:
    found = folder / value
    if not found.is_file():
        raise NotFound(f"sweep file {path}: {field} {found} is not a file (paths are relative)")
    return found


def _check_option_names(options: dict[str, Any], grid: dict[str, list[Any]], path: Path) -> None:
    for where, keys in (("options", options), ("grid", grid)):
        unknown = sorted(set(keys) - set(OPTION_NAMES))
        if unknown:
            raise InvalidInput(
                f"sweep file {path}: {where}.{unknown[0]} is not a training option; the "
                f"options: {', '.join(OPTION_NAMES)}"
            )
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise InvalidInput(f"sweep file {path}: grid.{empty[0]} is empty; list its values")
    both = sorted(set(options) & set(grid))
    if both:
        raise InvalidInput(
            f"sweep file {path}: {both[0]} is in both options and grid; keep it in one"
        )


def plan_runs(config: SweepConfig, base_model: str, max_rank: int) -> list[Run]:
    """Every combination of the grid, in the file's order, its options checked as training
    checks them (a rank vLLM cannot serve stops the sweep before anything trains)."""
    keys = list(config.grid)
    fingerprint = _data_fingerprint(config, base_model)
    runs: list[Run] = []
    for combo in itertools.product(*(config.grid[k] for k in keys)):
        grid = dict(zip(keys, combo, strict=True))
        label = "-".join(f"{k}{_label(v)}" for k, v in grid.items()) or "run"
        try:
            options = _OPTIONS.validate_python(config.options | grid)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(
                f"sweep file {config.path}: run {label}: {where}: {first['msg']}"
            ) from None
        options.check(max_rank, name=f"run {label}")
        digest = hashlib.sha256(
            json.dumps([_plain(dataclasses.asdict(options)), fingerprint], sort_keys=True).encode()
        ).hexdigest()[:8]
        runs.append(Run(f"{label}-{digest}", grid, options))
    return runs


def _data_fingerprint(config: SweepConfig, base_model: str) -> list[str]:
    """What else a run's result depends on: the base model and the data's bytes."""
    files = [config.data, *([config.eval_data] if config.eval_data else [])]
    return [base_model, *(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)]


def _label(value: Any) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return _UNSAFE.sub("_", text)[:40]


def _plain(value: Any) -> Any:
    """Tuples and mappings as JSON has them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

"""`ragtune adapters retrain`: one command from a route's captured traffic to a better adapter,
or to "not better: kept the old one". Export (the suite's cases held out), train (one run, or
a sweep's grid), register, run the suite with each new version in the alias's place, and move
the alias only if the suite's gates hold.

Everything lands in one folder (default `<data_dir>/retrain/<alias>/<UTC time>/`):
`data.jsonl`, `retrain.yaml` (the sweep it ran: `ragtune adapters sweep` reruns it) and the
sweep's runs under `runs/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from adapters.registry_cli import audited
from flywheel.export import ExportCounts, Selection, export_dataset
from flywheel.sweep import SweepOutcome, run_sweep
from flywheel.sweep_config import SweepFile, read_sweep_file, resolve
from ragtune.errors import GateFailed, InvalidInput, NotFound, RagtuneError
from ragtune.settings import Settings
from service.routes.loader import load_served_routes, routes_path
from service.routes.policy import find_route

if TYPE_CHECKING:
    from service.app import BackendFactory

DATA_FILE = "data.jsonl"
CONFIG_FILE = "retrain.yaml"


class NotEnoughData(RagtuneError):
    """Too few examples to train on: nothing changed (exit 1, not a usage error)."""


class NotBetter(GateFailed):
    """No new version passed the suite's gates: the alias still serves the old one."""

    def __init__(self, message: str, outcome: RetrainOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class RetrainRequest:
    """What `ragtune adapters retrain` was asked for."""

    route: str
    suite: Path
    alias: str | None = None
    name: str | None = None
    sweep: Path | None = None
    min_examples: int = 20
    since: date | None = None
    selection: Selection = field(default_factory=Selection)
    # Training options given on the command line (over the sweep file's `options`).
    options: Mapping[str, Any] = field(default_factory=dict)
    out: Path | None = None


@dataclass(frozen=True)
class RetrainOutcome:
    alias: str
    out: Path
    counts: ExportCounts
    sweep: SweepOutcome


def retrain(
    settings: Settings,
    request: RetrainRequest,
    *,
    progress: bool = False,
    backends: BackendFactory | None = None,
) -> RetrainOutcome:
    """Export, train, score and flip the alias to the best new version whose gates hold;
    raises NotEnoughData below `min_examples`, NotBetter when no version passed."""
    alias = _alias(settings, request)
    name = request.name or alias
    if not request.suite.is_file():
        raise NotFound(f"--suite: {request.suite} is not a file")
    sweep_file = read_sweep_file(request.sweep) if request.sweep else SweepFile()
    out = request.out or _default_out(settings, alias)
    with audited(settings, "retrain", alias) as audit:
        counts = export_dataset(
            settings,
            request.route,
            out / DATA_FILE,
            since=request.since,
            selection=request.selection,
            exclude_suites=[request.suite],
        )
        if counts.written < request.min_examples:
            raise NotEnoughData(
                f"route {request.route!r} gave {counts.written} examples (read "
                f"{counts.read} captures), fewer than --min-examples {request.min_examples}: "
                f"nothing was trained and alias {alias!r} is unchanged; capture more traffic "
                f"or lower --min-examples"
            )
        config_path = _write_config(out, sweep_file, request, name, alias)
        config = resolve(read_sweep_file(config_path), config_path)
        outcome = run_sweep(config, settings, progress=progress, backends=backends)
        result = RetrainOutcome(alias, out, counts, outcome)
        runs = f"route {request.route}: {counts.written} examples, {len(outcome.results)} run(s)"
        if outcome.winner is None:
            raise NotBetter(f"not better: kept {outcome.previous or 'no version'}; {runs}", result)
        audit["detail"] = f"{runs}; {outcome.previous} -> {outcome.winner.ref}"
    return result


def _alias(settings: Settings, request: RetrainRequest) -> str:
    spec = find_route(load_served_routes(settings), request.route, "chat")
    alias = request.alias or spec.adapter
    if alias is None:
        raise InvalidInput(
            f"route {request.route!r} serves no adapter, so there is no alias to retrain; "
            f"pass --alias NAME (and set `adapter: NAME` on the route in "
            f"{routes_path(settings)} for it to serve the result)"
        )
    return alias


def _default_out(settings: Settings, alias: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_dir / "retrain" / alias / stamp


def _write_config(
    out: Path, file: SweepFile, request: RetrainRequest, name: str, alias: str
) -> Path:
    """The sweep this retrain runs, written beside its data: the exported data, the suite,
    the alias; the sweep file's grid and options with the command line's options over them."""
    values = file.model_dump(exclude_none=True)
    if request.sweep is not None and file.eval_data:
        values["eval_data"] = str((request.sweep.parent / file.eval_data).resolve())
    values.update(
        name=name,
        alias=alias,
        data=DATA_FILE,
        suite=str(request.suite.resolve()),
        options={**file.options, **request.options},
        out="runs",
    )
    path = out / CONFIG_FILE
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path

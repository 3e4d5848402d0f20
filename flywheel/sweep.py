"""`ragtune adapters sweep`: train every run of a grid, register each as a version, score each
with the eval suite (the version answering in the alias's place), and point the alias at the
best run whose gates all hold.

Layout under the sweep's `out`: `<run>/adapter/` (the trained PEFT folder and training.json),
`<run>/result.json` (its version and scores) and `sweep.json` (every run and the verdict). A
run with result.json is done: running the sweep again trains and scores only the others (a
failed run is tried again)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapters.gating import record_verdict
from adapters.registry import Registry
from adapters.registry_cli import audited, open_registry
from adapters.train import train_lora
from adapters.train_options import REPORT_FILE
from engine.model import resolve_base_model
from evaluation.suite import Suite, load_suite
from flywheel.scoring import Scorer, judged_strategy, quality
from flywheel.sweep_config import Run, SweepConfig, plan_runs
from ragtune.errors import RagtuneError
from ragtune.settings import Settings
from service.routes.loader import load_served_routes

if TYPE_CHECKING:
    from service.app import BackendFactory

RESULT_FILE = "result.json"
SUMMARY_FILE = "sweep.json"


@dataclass
class RunResult:
    """One run's outcome: its version, quality, validation loss, time, size and gates."""

    run: str
    grid: dict[str, Any]
    options: dict[str, Any]
    status: Literal["ok", "failed"] = "ok"
    ref: str | None = None
    quality: float | None = None
    val_loss: float | None = None
    train_seconds: float | None = None
    size_bytes: int | None = None
    gates_passed: bool = False
    failing: list[str] = field(default_factory=list)
    error: str | None = None
    # The suite's files' digest: a result scored by another suite (or version of it) is
    # scored again, its adapter reused.
    scored_with: str | None = None

    def rank(self) -> tuple[float, float]:
        """Higher is better: the quality, then the lower validation loss."""
        loss = self.val_loss if self.val_loss is not None else math.inf
        return (self.quality if self.quality is not None else -math.inf, -loss)


@dataclass
class SweepOutcome:
    """The runs, the winner (the best run whose gates hold) and what happened to the alias."""

    config: SweepConfig
    strategy: str
    results: list[RunResult]
    winner: RunResult | None
    previous: str | None  # the alias's target before the sweep (None: no such alias)

    @property
    def flipped(self) -> bool:
        return self.winner is not None and self.winner.ref != self.previous

    def to_json(self) -> dict[str, Any]:
        config = self.config
        return {
            "config": str(config.path),
            "name": config.name,
            "alias": config.alias,
            "suite": str(config.suite),
            "strategy": self.strategy,
            "metric": config.metric,
            "runs": [asdict(r) for r in self.results],
            "winner": None if self.winner is None else self.winner.run,
            "alias_target": self.winner.ref if self.winner else self.previous,
            "previous": self.previous,
            "flipped": self.flipped,
        }


@dataclass(frozen=True)
class _Plan:
    config: SweepConfig
    suite: Suite
    strategy: str
    base_model: str
    runs: list[Run]
    scoring: str  # what a run's scores depend on besides its adapter (RunResult.scored_with)


def plan_sweep(config: SweepConfig, settings: Settings) -> _Plan:
    """Check everything before anything trains: the suite judges the alias, every run's
    options are valid and servable."""
    suite = load_suite(config.suite)
    routes = load_served_routes(settings)
    strategy = judged_strategy(suite, routes, config.alias, config.strategy, config.metric)
    base_model = config.base_model or resolve_base_model(settings)
    runs = plan_runs(config, base_model, settings.llm.max_lora_rank)
    return _Plan(config, suite, strategy, base_model, runs, _scoring_key(config, suite, strategy))


def _scoring_key(config: SweepConfig, suite: Suite, strategy: str) -> str:
    digest = hashlib.sha256(
        f"{config.alias}\0{strategy}\0{config.metric}\0{config.cases}\0".encode()
    )
    for path in (suite.path, suite.path.parent / suite.cases):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_sweep(
    config: SweepConfig,
    settings: Settings,
    *,
    progress: bool = False,
    backends: BackendFactory | None = None,
) -> SweepOutcome:
    """Train, register and score every run not done yet, then alias the winner (if any)."""
    plan = plan_sweep(config, settings)
    registry = open_registry(settings, with_model=True)
    previous = _alias_target(registry, config.alias)
    done = {run.id: _finished(config.out / run.id, plan.scoring) for run in plan.runs}
    trained: dict[str, RunResult] = {}
    for run in plan.runs:
        if done[run.id] is None:
            trained[run.id] = _train(plan, run, registry, settings, progress)
    scorable = [r for r in trained.values() if r.status == "ok"]
    if scorable:
        asyncio.run(_score_all(plan, scorable, registry, settings, backends))
    results = [done[run.id] or trained[run.id] for run in plan.runs]
    winner = choose(results)
    if winner is not None and winner.ref != previous:
        _flip(settings, registry, config, winner)
    outcome = SweepOutcome(config, plan.strategy, results, winner, previous)
    _write_json(config.out / SUMMARY_FILE, outcome.to_json())
    return outcome


def choose(results: list[RunResult]) -> RunResult | None:
    """The best run (quality, then validation loss) among those whose gates all hold."""
    passed = [r for r in results if r.status == "ok" and r.gates_passed]
    return max(passed, key=RunResult.rank, default=None)


def _alias_target(registry: Registry, alias: str) -> str | None:
    found = registry.aliases().get(alias)
    return None if found is None else found.target


def _finished(folder: Path, scoring: str) -> RunResult | None:
    """The result of a run done earlier with the same suite, None if it is not done."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = RunResult(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None  # torn or from another version: run it again
    return result if result.scored_with == scoring else None


def _train(
    plan: _Plan, run: Run, registry: Registry, settings: Settings, progress: bool
) -> RunResult:
    """Train (unless an earlier attempt left the adapter) and register one run; a failure is
    the run's result, not the sweep's end."""
    config = plan.config
    result = RunResult(run.id, run.grid, run.options_json())
    adapter = config.out / run.id / "adapter"
    try:
        if not (adapter / REPORT_FILE).is_file():
            train_lora(
                plan.base_model,
                config.data,
                adapter,
                run.options,
                eval_data=config.eval_data,
                progress=progress,
            )
        report = json.loads((adapter / REPORT_FILE).read_text(encoding="utf-8"))
        with audited(settings, "register", config.name) as outcome:
            description = config.description or f"sweep {config.path.name}, run {run.id}"
            record = registry.register(adapter, config.name, description)
            outcome["detail"] = f"{record.ref} (sweep run {run.id})"
    except Exception as exc:  # a run that fails is reported; the others go on
        result.status, result.error = "failed", _describe(exc)
        return result
    result.ref, result.size_bytes = record.ref, record.size_bytes
    result.val_loss = report.get("best_eval_loss")
    result.train_seconds = report.get("seconds")
    return result


async def _score_all(
    plan: _Plan,
    results: list[RunResult],
    registry: Registry,
    settings: Settings,
    backends: BackendFactory | None,
) -> None:
    """Score each trained run on one set of the app's services; write each result.json."""
    config = plan.config
    async with Scorer(settings, backends) as scorer:
        for result in results:
            assert result.ref is not None, "a trained run has a version"
            try:
                verdict = await scorer.score(
                    plan.suite, config.alias, result.ref, limit=config.cases
                )
            except RagtuneError as exc:
                result.status, result.error = "failed", _describe(exc)
                continue
            await asyncio.to_thread(record_verdict, registry, result.ref, verdict)
            result.quality = quality(verdict, plan.strategy, config.metric)
            result.gates_passed, result.failing = verdict.passed, verdict.failing
            result.scored_with = plan.scoring
            _write_json(config.out / result.run / RESULT_FILE, asdict(result))


def _flip(settings: Settings, registry: Registry, config: SweepConfig, winner: RunResult) -> None:
    assert winner.ref is not None, "the winner has a version"
    with audited(settings, "alias", config.alias) as outcome:
        moved = registry.set_alias(config.alias, winner.ref)
        outcome["detail"] = (
            f"{moved.previous} -> {moved.target}; sweep {config.path.name}: run {winner.run} "
            f"is the best whose gates hold ({config.metric} {winner.quality})"
        )


def _describe(exc: Exception) -> str:
    if isinstance(exc, RagtuneError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)

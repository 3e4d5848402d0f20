"""`ragtune dataset build|export` and `ragtune adapters sweep|retrain` (cli/main.py puts the
last two in the `adapters` group)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.console import plain_table, print_table
from ragtune.errors import InvalidInput

if TYPE_CHECKING:
    from flywheel.export import ExportCounts
    from flywheel.sweep import SweepOutcome

NoProgress = Annotated[bool, typer.Option("--no-progress", help="no progress bar")]
Route = Annotated[str, typer.Option(metavar="NAME", help="the chat route")]
Since = Annotated[
    str | None,
    typer.Option(metavar="YYYY-MM-DD", help="only captures of this UTC day and later"),
]
MinRating = Annotated[
    int | None,
    typer.Option(
        min=-1,
        max=1,
        help="only answers rated at least this (-1 bad, 0, 1 good; a correction counts as 1); "
        "default: all but those rated -1",
    ),
]
CorrectedOnly = Annotated[
    bool, typer.Option("--corrected-only", help="only answers a user corrected (the corrections)")
]


def dataset_commands() -> typer.Typer:
    """The `dataset` group."""
    group = typer.Typer(
        help="Training data rendered through a route's own templates: from cases, or from "
        "captured traffic and its feedback.",
        no_args_is_help=True,
    )
    group.command("build", no_args_is_help=True)(build)
    group.command("export", no_args_is_help=True)(export)
    app = typer.Typer()
    app.add_typer(group, name="dataset", rich_help_panel="Adapters")
    return app


def add_adapter_commands(group: typer.Typer) -> None:
    """Add `sweep` and `retrain` to the `adapters` group."""
    group.command("sweep", no_args_is_help=True)(sweep)
    group.command("retrain", no_args_is_help=True)(retrain)


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


def _date(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{flag}: {value!r} is not a date; write YYYY-MM-DD") from None


def build(
    route: Route,
    cases: Annotated[
        Path,
        typer.Option(
            metavar="FILE.jsonl", help='cases: {"question": ..., "answer": ..., "id"?: ...} a line'
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="FILE.jsonl", help="chat JSONL to write")],
    no_progress: NoProgress = False,
) -> int:
    """Chat JSONL from cases, each prompt retrieved and rendered as ROUTE serves it.

    For each case, retrieves as the route would at serving time, renders the prompt with the
    route's templates, and writes it with the case's answer as the assistant's turn."""
    from flywheel.build import build_dataset
    from ragtune.settings import Settings

    result = build_dataset(Settings(), route, cases, out, progress=_progress(no_progress))
    print(f"{result.written} examples for route {route} in {result.out}")
    if result.without_sources:
        print(
            f"note: {result.without_sources} of them retrieved no source; their prompts say "
            f"so, as serving would (is the route's collection ingested?)"
        )
    return 0


def export(
    route: Route,
    out: Annotated[Path, typer.Option(metavar="FILE.jsonl", help="chat JSONL to write")],
    since: Since = None,
    min_rating: MinRating = None,
    corrected_only: CorrectedOnly = False,
    as_route: Annotated[
        str | None,
        typer.Option(
            metavar="TARGET",
            help="render the prompts with this route's templates (default: ROUTE's): the route "
            "the adapter will serve",
        ),
    ] = None,
    exclude_suite: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="SUITE.yaml",
            help="leave out questions this eval suite scores (repeatable)",
        ),
    ] = None,
) -> int:
    """Chat JSONL from ROUTE's captured answers and their feedback.

    Prompts are rendered again with the target route's templates, corrections replace the
    captured answers, answers rated bad are left out, one example per prompt, and no question
    an eval suite scores (--exclude-suite)."""
    from flywheel.export import Selection, export_dataset
    from ragtune.settings import Settings

    settings = Settings()
    counts = export_dataset(
        settings,
        route,
        out,
        as_route=as_route,
        since=_date(since, "--since"),
        selection=Selection(min_rating, corrected_only),
        exclude_suites=list(exclude_suite or []),
    )
    print(_counts_line(counts))
    if not counts.read:
        print(
            f"note: no captures of route {route} under {settings.data_dir / 'captures'}; set "
            f"`capture: {{sample: 0.1}}` on the route and serve some traffic"
        )
    return 0


def _counts_line(counts: ExportCounts) -> str:
    parts = [
        f"read {counts.read}",
        f"rated out {counts.rated_out}",
        f"cut off {counts.cut}",
        f"empty {counts.empty}",
        f"leaked {counts.leaked}",
        f"duplicates {counts.duplicates}",
        f"written {counts.written}",
    ]
    return ", ".join(parts) + f" -> {counts.out}"


def sweep(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG.yaml", help="the sweep: data, suite, alias, grid")
    ],
    no_progress: NoProgress = False,
) -> int:
    """Train a grid of runs, score each with a suite, alias the best whose gates hold.

    Each run is registered as a version and scored with the suite, answering in the alias's
    place (the alias untouched meanwhile). Resumable: a finished run is not trained again.

    Exits 0 when the alias serves the winner, 1 when no run passed the gates, 2 for a bad
    config."""
    from flywheel.sweep import run_sweep
    from flywheel.sweep_config import read_sweep_file, resolve
    from ragtune.settings import Settings

    resolved = resolve(read_sweep_file(config), config)
    outcome = run_sweep(resolved, Settings(), progress=_progress(no_progress))
    print_table(sweep_table(outcome))
    print(_verdict(outcome))
    return 0 if outcome.winner is not None else 1


def _verdict(outcome: SweepOutcome) -> str:
    alias = outcome.config.alias
    summary = f"(runs and scores in {outcome.config.out / 'sweep.json'})"
    winner = outcome.winner
    if winner is None:
        return f"no run passed the suite's gates: {alias} still serves {outcome.previous} {summary}"
    if outcome.flipped:
        return f"{alias} -> {winner.ref} (run {winner.run}; was {outcome.previous}) {summary}"
    return f"{alias} already serves {winner.ref} (run {winner.run}) {summary}"


def sweep_table(outcome: SweepOutcome) -> Table:
    """One row per run: its grid values, quality, validation loss, training time, size, gates."""
    keys = list(outcome.config.grid)
    table = plain_table()
    table.add_column("RUN", style="cyan")
    for key in keys:
        table.add_column(key.upper(), justify="right")
    headers = (outcome.config.metric.upper(), "VAL LOSS", "TRAIN S", "SIZE", "GATES")
    for header in headers:
        table.add_column(header, justify="right" if header != "GATES" else "left")
    for r in outcome.results:
        mark = " *" if outcome.winner is not None and r.run == outcome.winner.run else ""
        table.add_row(
            r.run + mark,
            *(str(r.grid.get(k)) for k in keys),
            _number(r.quality, ".3f"),
            _number(r.val_loss, ".4f"),
            _number(r.train_seconds, ".0f"),
            "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f} MB",
            _gates(r.status, r.gates_passed, r.failing, r.error),
        )
    return table


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _gates(status: str, passed: bool, failing: list[str], error: str | None) -> str:
    if status == "failed":
        return f"error: {error}"
    return "pass" if passed else "fail: " + "; ".join(failing)


def retrain(
    route: Route,
    suite: Annotated[
        Path,
        typer.Option(
            metavar="SUITE.yaml",
            help="the eval suite that decides (its cases are held out of the data)",
        ),
    ],
    alias: Annotated[
        str | None, typer.Option(help="the alias to improve (default: the route's adapter)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="adapter name of the new versions (default: the alias)")
    ] = None,
    sweep: Annotated[
        Path | None,
        typer.Option(
            "--sweep",
            metavar="CONFIG.yaml",
            help="train the sweep's grid (its options and grid; data, suite, alias from here)",
        ),
    ] = None,
    min_examples: Annotated[
        int, typer.Option(min=1, help="train only with at least this many examples")
    ] = 20,
    since: Since = None,
    min_rating: MinRating = None,
    corrected_only: CorrectedOnly = False,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="the work folder (default: <data_dir>/retrain/ALIAS/<UTC time>)"
        ),
    ] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    alpha: Annotated[int | None, typer.Option(help="LoRA alpha")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps")] = None,
    batch_size: Annotated[int | None, typer.Option(help="examples per step")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the split and the training")] = None,
    no_progress: NoProgress = False,
) -> int:
    """Captured traffic to a better adapter: export, train, gate, flip (or keep the old).

    Exports the route's captures (the suite's cases held out), trains (or sweeps), registers,
    runs the suite with each new version in the alias's place, and moves the alias only if the
    suite's gates hold.

    Exits 0 when the alias moved (or already served the winner), 1 when nothing passed ("not
    better: kept ...") or there were fewer examples than --min-examples, 2 for bad input."""
    from flywheel.export import Selection
    from flywheel.retrain import NotBetter, RetrainRequest
    from flywheel.retrain import retrain as run_retrain
    from ragtune.settings import Settings

    knobs: dict[str, Any] = {
        "rank": rank,
        "alpha": alpha,
        "lr": lr,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
    }
    request = RetrainRequest(
        route=route,
        suite=suite,
        alias=alias,
        name=name,
        sweep=sweep,
        min_examples=min_examples,
        since=_date(since, "--since"),
        selection=Selection(min_rating, corrected_only),
        options={k: v for k, v in knobs.items() if v is not None},
        out=out,
    )
    try:
        outcome = run_retrain(Settings(), request, progress=_progress(no_progress))
    except NotBetter as exc:
        print(_counts_line(exc.outcome.counts))
        print_table(sweep_table(exc.outcome.sweep))
        print(str(exc))
        return 1
    print(_counts_line(outcome.counts))
    print_table(sweep_table(outcome.sweep))
    print(_verdict(outcome.sweep))
    return 0

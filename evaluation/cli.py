"""`ragtune eval run` and `ragtune eval compare` (composed into the `eval` group by cli/main.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from ragtune.console import stderr_console

_EXIT_INTERRUPTED = 130


def register(group: typer.Typer) -> None:
    """Add `run` and `compare` to the `eval` group."""
    group.command("run", no_args_is_help=True)(run)
    group.command("compare", no_args_is_help=True)(compare)


def run(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE.yaml", help="the suite to run")],
    url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="a running ragtune to evaluate (default: in-process)"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="the server's API key (with --url)")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="cases in flight (default: 8 on vLLM or --url, else 1)"),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="run every case; read and write no cache")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N cases")] = None,
    filter_strategy: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="only this strategy (repeatable)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the few-shot draws")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="write results.jsonl, summary.json, report.md, report.html"
        ),
    ] = None,
) -> int:
    """Run a suite's cases through each of its strategies and check its gates.

    Exits 0 when every gate holds, 1 when one fails, 2 for a bad suite, 130 on Ctrl-C.
    """
    from evaluation.runner import RunOptions, run_suite, suite_name
    from evaluation.suite import load_suite
    from ragtune.settings import Settings

    suite = load_suite(suite_file)
    options = RunOptions(
        url=url,
        api_key=api_key,
        concurrency=concurrency,
        use_cache=not no_cache,
        limit=limit,
        strategies=list(filter_strategy or []),
        seed=seed,
        progress=not as_json,
    )
    settings = Settings()
    outcome = asyncio.run(run_suite(suite, settings, options))
    from evaluation import report

    if out is not None:
        report.write_outputs(out, suite_name(suite), outcome.results, outcome.summary)
    if outcome.interrupted:
        where = f"; they are in {out}" if out is not None else ""
        stderr_console().print(
            f"ragtune: interrupted after {len(outcome.results)} results{where}; run the same "
            f"command again: the cache answers what already ran"
        )
        raise typer.Exit(_EXIT_INTERRUPTED)
    if as_json:
        print(json.dumps(outcome.summary, ensure_ascii=False))
    else:
        report.print_table(outcome.summary)
    return 0 if all(gate["passed"] for gate in outcome.summary["gates"]) else 1


def compare(
    a: Annotated[Path, typer.Argument(metavar="A/summary.json", help="the earlier run")],
    b: Annotated[Path, typer.Argument(metavar="B/summary.json", help="the later run")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> int:
    """What changed between two runs, per strategy and metric: did the new adapter help?"""
    from evaluation import compare as comparing

    result = comparing.compare(a, b)
    if as_json:
        print(json.dumps(dataclasses.asdict(result), ensure_ascii=False, default=str))
    else:
        comparing.print_comparison(result)
    return 0

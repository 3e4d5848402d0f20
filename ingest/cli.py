"""`ragtune ingest`, `ragtune search` and `ragtune eval retrieval`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Literal, TextIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ingest import store_cli
from ragtune.console import plain_table, print_table, stderr_console
from ragtune.settings import Settings

if TYPE_CHECKING:
    from ingest.pipeline import IngestReport
    from ingest.search import Hit

# Qdrant's client takes a second to import: the commands import what uses it when they run, so
# every other `ragtune` command (and --help) starts without it.
# ingest.search.Mode, spelled out for that reason; tests/unit/cli checks that they agree.
Mode = Literal["dense", "sparse", "hybrid"]

_PANEL = "Documents"
_SHOWN = 20
_SNIPPET = 240

CollectionOption = Annotated[
    str | None, typer.Option(help="the collection (default: RAGTUNE_INGEST__DEFAULT_COLLECTION)")
]
SearchMode = Annotated[Mode, typer.Option(help="dense, sparse (BM25) or hybrid (both, fused)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


def commands(evals: typer.Typer | None = None) -> typer.Typer:
    """`ingest`, `search` and the `eval` group (`evals`, when the caller composes it with
    other packages' eval commands), with `eval retrieval` added."""
    app = typer.Typer()
    app.command("ingest", no_args_is_help=True, rich_help_panel=_PANEL)(ingest)
    app.command("search", no_args_is_help=True, rich_help_panel=_PANEL)(search)
    evals = evals or typer.Typer(help="Measure quality.", no_args_is_help=True)
    evals.command("retrieval", no_args_is_help=True)(eval_retrieval)
    app.add_typer(evals, name="eval", rich_help_panel=_PANEL)
    app.add_typer(store_cli.commands(), name="store", rich_help_panel=_PANEL)
    return app


def ingest(
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="files or directories")],
    collection: CollectionOption = None,
    include: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="only files matching GLOB (repeatable)"),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="skip files matching GLOB (repeatable)"),
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="remove documents under PATH that no longer exist")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="print what would be added, replaced and removed; write nothing"
        ),
    ] = False,
    reindex: Annotated[
        bool,
        typer.Option(
            "--reindex",
            help="rebuild the collection (needed after changing embedder or chunking)",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
) -> int:
    """Load, chunk, embed and upsert documents into Qdrant.

    A re-run writes only what changed; --prune also removes documents whose files are gone.
    """
    from ingest.components import open_components
    from ingest.pipeline import Ingester, IngestOptions

    settings = Settings()
    opts = IngestOptions(
        collection=collection or settings.ingest.default_collection,
        include=include or [],
        exclude=exclude or [],
        prune=prune,
        dry_run=dry_run,
        reindex=reindex,
        progress=not no_progress and sys.stderr.isatty(),
    )
    with open_components(settings) as parts:
        ingester = Ingester(
            parts.store,
            parts.embedder,
            parts.sparse,
            parts.chunker(settings),
            settings.ingest.write_batch,
        )
        report = ingester.run(paths, opts)
        if not report.dry_run and not report.wrote_nothing:
            # Here, in the ingest process: building the index holds the interpreter for as
            # long as it takes (97-146 s at 100k points here), which serving cannot afford.
            parts.store.optimize(
                opts.collection, progress=lambda line: print(line, file=sys.stderr)
            )
    print_report(report, sys.stdout)
    return 1 if report.has_errors else 0


def print_report(report: IngestReport, out: TextIO) -> None:
    """The closing summary of an ingest run."""
    verb = "would be" if report.dry_run else "were"
    name = report.collection
    if report.reindexed:
        print(
            f"collection {name!r} {'would be' if report.dry_run else 'was'} rebuilt (--reindex)",
            file=out,
        )
    if report.wrote_nothing:
        print(
            f"collection {name!r}: nothing to write; all {report.unchanged} documents are "
            f"unchanged",
            file=out,
        )
    else:
        rate = report.chunks_written / report.seconds if report.seconds else 0.0
        print(
            f"collection {name!r}: {len(report.added)} added, {len(report.replaced)} replaced, "
            f"{len(report.removed)} removed, {report.unchanged} unchanged documents; "
            f"{report.chunks_written} chunks {verb} written and {report.points_deleted} "
            f"points {verb} deleted"
            + ("" if report.dry_run else f" in {report.seconds:.1f}s ({rate:.1f} chunks/s)"),
            file=out,
        )
        if report.migrated:
            print(
                f"  {len(report.migrated)} unchanged documents {verb} moved from absolute-path "
                f"ids to ids relative to the ingest root (nothing embedded again)",
                file=out,
            )
        if report.dry_run:
            for label, ids in (
                ("add", report.added),
                ("replace", report.replaced),
                ("remove", report.removed),
            ):
                for doc_id in ids[:_SHOWN]:
                    print(f"  {label}: {doc_id}", file=out)
                if len(ids) > _SHOWN:
                    print(f"  ... and {len(ids) - _SHOWN} more to {label}", file=out)
    load = report.load
    _listing(
        out, f"skipped {len(load.skipped)} files", [f"{s.path}: {s.reason}" for s in load.skipped]
    )
    _listing(
        out,
        f"{len(load.line_errors)} malformed JSONL lines",
        [f"{e.path}:{e.line}: {e.reason}" for e in load.line_errors],
    )
    _listing(
        out,
        f"{len(load.duplicate_ids)} duplicate document ids (first kept)",
        [f"{d!r} in {src} (first in {first})" for d, src, first in load.duplicate_ids],
    )
    _listing(
        out, "--prune kept the documents of partly unreadable files", list(report.kept_damaged)
    )
    if load.unsupported:
        kinds = ", ".join(f"{ext} x{n}" for ext, n in sorted(load.unsupported.items()))
        print(f"ignored files of unsupported types: {kinds}", file=out)


def _listing(out: TextIO, title: str, lines: list[str]) -> None:
    if not lines:
        return
    print(f"{title}:", file=out)
    for line in lines[:_SHOWN]:
        print(f"  {line}", file=out)
    if len(lines) > _SHOWN:
        print(f"  ... and {len(lines) - _SHOWN} more", file=out)


def search(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="what to look for")],
    collection: CollectionOption = None,
    mode: SearchMode = "hybrid",
    top_k: Annotated[int, typer.Option(help="how many chunks")] = 5,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="KEY=VALUE",
            help="exact payload match, e.g. file_type=md or meta.year=2020 (repeatable)",
        ),
    ] = None,
    as_json: Json = False,
) -> int:
    """Print the chunks that best match a query."""
    from ingest.components import open_components
    from ingest.search import Retriever, parse_filters

    settings = Settings()
    filters = parse_filters(filter_ or [])
    collection = collection or settings.ingest.default_collection
    with open_components(settings) as parts:
        retriever = Retriever(parts.store, parts.embedder, parts.sparse, collection)
        hits = retriever.search(query, mode=mode, top_k=top_k, filters=filters)
    if as_json:
        print(
            json.dumps(
                [{"id": h.id, "score": h.score, **h.payload} for h in hits],
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    if not hits:
        print("no results")
        return 0
    print_table(hits_table(hits))
    return 0


def hits_table(hits: list[Hit]) -> Table:
    """Rank, score, source, chunk and the start of each hit's text (its section first)."""
    # Dimmed every other hit: wrapped texts on a terminal stay told apart.
    table = plain_table()
    table.row_styles = ["", "dim"]
    table.add_column("#", justify="right")
    table.add_column("SCORE", justify="right")
    table.add_column("SOURCE", style="cyan", overflow="fold")
    table.add_column("CHUNK", justify="right")
    table.add_column("TEXT")
    for rank, hit in enumerate(hits, start=1):
        p = hit.payload
        where = " > ".join(p.get("headers") or []) or p.get("title", "")
        snippet = " ".join(hit.text.split())
        if len(snippet) > _SNIPPET:
            snippet = snippet[:_SNIPPET] + "..."
        text = Text.assemble((f"{where}: ", "bold") if where else "", snippet)
        table.add_row(
            str(rank), f"{hit.score:.4f}", str(p.get("source")), str(p.get("chunk_index")), text
        )
    return table


def eval_retrieval(
    beir: Annotated[
        str, typer.Option(metavar="DIR", help="BEIR folder with queries.jsonl and qrels/")
    ],
    collection: CollectionOption = None,
    mode: SearchMode = "hybrid",
    split: Annotated[str, typer.Option(help="the qrels split: qrels/SPLIT.tsv")] = "test",
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="KEY=VALUE",
            help="only chunks matching (chunk_index=0: one chunk per document, the protocol "
            "of published figures)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> int:
    """BEIR retrieval metrics (nDCG@10, recall, MRR) on an ingested collection."""
    from ingest.components import open_components
    from ingest.evaluation import evaluate, load_beir
    from ingest.search import Retriever, parse_filters

    settings = Settings()
    queries = load_beir(beir, split)
    filters = parse_filters(filter_ or [])
    collection = collection or settings.ingest.default_collection
    with open_components(settings) as parts:
        retriever = Retriever(parts.store, parts.embedder, parts.sparse, collection)
        with Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            disable=as_json or not sys.stderr.isatty(),
        ) as progress:
            task = progress.add_task("queries", total=len(queries.queries))

            def rank(text: str) -> list[str]:
                progress.advance(task)
                hits = retriever.search(
                    text, mode=mode, top_k=100, filters=filters, per_document=True
                )
                return [h.doc_id for h in hits]

            metrics = evaluate(queries, rank)
    if as_json:
        print(json.dumps(metrics))
        return 0
    print(f"collection {collection!r}, mode {mode}, {len(queries.queries)} {split} queries")
    table = plain_table()
    table.add_column("METRIC")
    table.add_column("VALUE", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    print_table(table)
    return 0

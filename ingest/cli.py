"""`ragtune ingest`, `ragtune search` and `ragtune eval retrieval`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tqdm import tqdm

from ingest.components import open_components
from ingest.evaluation import evaluate, load_beir
from ingest.pipeline import Ingester, IngestOptions, IngestReport
from ingest.search import MODES, Retriever, parse_filters
from ingest.store import qdrant_errors
from ragtune.settings import Settings

_SHOWN = 20


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="load, chunk, embed and upsert documents into Qdrant")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    p.add_argument("--collection", help="target collection (default: settings)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--prune", action="store_true", help="remove documents under PATH that no longer exist"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be added, replaced and removed; write nothing",
    )
    p.add_argument(
        "--reindex",
        action="store_true",
        help="rebuild the collection (needed after changing embedder or chunking)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_ingest)

    s = sub.add_parser("search", help="print the chunks that best match a query")
    s.add_argument("query")
    s.add_argument("--collection")
    s.add_argument("--mode", choices=MODES, default="hybrid")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="exact payload match, e.g. file_type=md or meta.year=2020 (repeatable)",
    )
    s.add_argument("--json", action="store_true", help="print the hits as JSON")
    s.set_defaults(handler=run_search)

    e = sub.add_parser("eval", help="measure quality")
    esub = e.add_subparsers(dest="eval_command", required=True, metavar="{retrieval}")
    r = esub.add_parser("retrieval", help="BEIR retrieval metrics on an ingested collection")
    r.add_argument(
        "--beir", required=True, metavar="DIR", help="BEIR folder with queries.jsonl and qrels/"
    )
    r.add_argument("--collection")
    r.add_argument("--mode", choices=MODES, default="hybrid")
    r.add_argument("--split", default="test")
    r.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only chunks matching (chunk_index=0: one chunk per document, the protocol "
        "of published figures)",
    )
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(handler=run_eval_retrieval)


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    opts = IngestOptions(
        collection=args.collection or settings.ingest.default_collection,
        include=args.include,
        exclude=args.exclude,
        prune=args.prune,
        dry_run=args.dry_run,
        reindex=args.reindex,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    with qdrant_errors(settings), open_components(settings) as parts:
        ingester = Ingester(
            parts.client,
            parts.embedder,
            parts.sparse,
            parts.chunker(settings),
            settings.ingest.write_batch,
        )
        report = ingester.run(args.paths, opts)
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


def run_search(args: argparse.Namespace, settings: Settings) -> int:
    filters = parse_filters(args.filter)
    collection = args.collection or settings.ingest.default_collection
    with qdrant_errors(settings), open_components(settings) as parts:
        retriever = Retriever(parts.client, parts.embedder, parts.sparse, collection)
        hits = retriever.search(args.query, mode=args.mode, top_k=args.top_k, filters=filters)
    if args.json:
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
    for rank, hit in enumerate(hits, start=1):
        p = hit.payload
        where = " > ".join(p.get("headers") or []) or p.get("title", "")
        print(
            f"{rank:>2}. {hit.score:.4f}  {p.get('source')}  [chunk {p.get('chunk_index')}]"
            + (f"  {where}" if where else "")
        )
        snippet = " ".join(hit.text.split())
        print(f"    {snippet[:240]}{'...' if len(snippet) > 240 else ''}")
    return 0


def run_eval_retrieval(args: argparse.Namespace, settings: Settings) -> int:
    split = load_beir(args.beir, args.split)
    filters = parse_filters(args.filter)
    collection = args.collection or settings.ingest.default_collection
    with qdrant_errors(settings), open_components(settings) as parts:
        retriever = Retriever(parts.client, parts.embedder, parts.sparse, collection)
        bar: tqdm[Any] = tqdm(
            total=len(split.queries), unit="query", disable=args.json or not sys.stderr.isatty()
        )

        def rank(text: str) -> list[str]:
            bar.update(1)
            hits = retriever.search(
                text, mode=args.mode, top_k=100, filters=filters, per_document=True
            )
            return [h.doc_id for h in hits]

        metrics = evaluate(split, rank)
        bar.close()
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"collection {collection!r}, mode {args.mode}, {len(split.queries)} "
            f"{args.split} queries"
        )
        for name, value in metrics.items():
            print(f"  {name:<11}{value:.4f}")
    return 0

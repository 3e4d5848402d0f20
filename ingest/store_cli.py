"""`ragtune store`: the embedded store's housekeeping (status, migrate, optimize)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from ragtune.console import print_table
from ragtune.errors import InvalidInput
from ragtune.settings import Settings

_PANEL = "Documents"


def commands() -> typer.Typer:
    app = typer.Typer(help="The vector store: status, migrate, optimize.", no_args_is_help=True)
    app.command("status")(status)
    app.command("migrate")(migrate)
    app.command("optimize", no_args_is_help=True)(optimize)
    return app


def _progress(line: str) -> None:
    print(line, file=sys.stderr)


def status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> int:
    """The store in use and its collections: points, and how much the vector index covers."""
    from ingest.store import open_store

    settings = Settings()
    store = open_store(settings)
    try:
        rows = []
        for name in store.names():
            index = store.index_status(name)
            rows.append(
                {
                    "collection": name,
                    "points": store.count(name),
                    "dense_indexed": index.dense_indexed if index else None,
                    "segments": index.segments if index else None,
                }
            )
        summary = {"store": store.kind, "where": store.where, "collections": rows}
        if store.legacy:
            summary["not_migrated"] = list(store.legacy)
    finally:
        store.close()
    if as_json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['store']} store at {summary['where']}")
    table = Table("collection", "points", "in the HNSW index", "segments")
    for row in rows:
        table.add_row(*(str("-" if v is None else v) for v in row.values()))
    print_table(table)
    if store.legacy:
        print(
            f"not migrated from qdrant-client's local mode: {', '.join(store.legacy)}; "
            f"run `ragtune store migrate`"
        )
    return 0


def migrate(
    collection: Annotated[
        list[str] | None,
        typer.Option(help="only these collections (repeatable; default: all of them)"),
    ] = None,
) -> int:
    """Copy the collections that qdrant-client's local mode wrote (ragtune's embedded store
    before Qdrant Edge) into Qdrant Edge: points, vectors and payloads, nothing embedded again;
    counts and ids are checked before a collection is switched over."""
    from ingest.backends.edge import EdgeStore
    from ingest.store_migration import migrate_local_store

    settings = Settings()
    q = settings.qdrant
    if q.url or q.embedded != "edge":
        raise InvalidInput(
            "`ragtune store migrate` copies the embedded store into Qdrant Edge: unset "
            "RAGTUNE_QDRANT__URL and RAGTUNE_QDRANT__EMBEDDED (a server is migrated with "
            "Qdrant's own snapshots)"
        )
    location = settings.qdrant_location()
    edge = EdgeStore(location, hnsw_ef=q.hnsw_ef, index_threshold=q.index_threshold)
    try:
        results = migrate_local_store(location, edge, collection or [], _progress)
    finally:
        edge.close()
    for r in results:
        print(f"{r.name}: {r.points} points, {r.outcome}")
    return 0 if all(not r.outcome.startswith("skipped") for r in results) else 1


def optimize(
    collection: Annotated[str, typer.Argument(help="the collection")],
) -> int:
    """Build the vector index of an embedded collection now (ingest does it when a collection
    grows past RAGTUNE_QDRANT__INDEX_THRESHOLD points; never while serving)."""
    from ingest.store import Collection, open_store

    store = open_store(Settings())
    try:
        Collection(store, collection).require()
        if not store.optimize(collection, _progress):
            print(f"{collection}: nothing to do (exact search, or already indexed)")
    finally:
        store.close()
    return 0

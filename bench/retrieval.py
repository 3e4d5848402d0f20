"""Retrieval latency: Qdrant Edge against qdrant-client's local mode, same points, same queries.

The points are SciFact's: its abstracts ingested once by ragtune's Ingester (the real
embedder, dense + BM25) into a temporary Edge store and read back. They are cached, with the
embedded queries, in .ragtune/bench-cache/ under the sha256 of the data and the embedder,
chunker and BM25 settings, so later runs embed nothing. Larger sizes add seeded copies: a
real point's dense vector plus gaussian noise (`--noise` per dimension, then renormalised;
cosine ~0.89 to its original), its BM25 vector and payload, under a new doc_id. Every
document's `file_type` is relabelled to one of five (SciFact is all JSONL), so that a
file_type filter keeps a fifth of the points, as in a mixed folder. Queries are SciFact's
300 test claims, embedded once and BM25-encoded by ragtune's SparseEncoder.

At each size both stores get the same points (upserted in the ingester's batches) and the
same searches, timed around `VectorStore.search` (the search stage: no embedding): dense,
sparse, hybrid (RRF), dense filtered by file_type and by doc_id (any of 100 documents), and
hybrid through ragtune's Retriever (dense vector given, so that figure adds ragtune's own
overhead). Edge is timed exact, then, above its index threshold, after `optimize()` built
HNSW; recall@10 of HNSW is measured against Edge's exact results on the same points (below
the threshold, on a second Edge store with a low threshold). Reopen time and resident memory
come from a fresh process that opens the store and runs a few searches.

    python -m bench.retrieval [--scifact ../shared/data/scifact] [--sizes scifact,100k]
                              [--skip-local-above N] [--queries N] [--budget-s 30]
                              [--out .ragtune/bench/retrieval.json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.retrieval_data import (
    DEFAULT_SCIFACT,
    REPO,
    Context,
    Data,
    Points,
    grow,
    load_data,
    log,
)
from ingest.backends.base import ScoredPoint, Search, VectorStore
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.embedder import Embedder, cpu_flags
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from ragtune.settings import Settings

DEFAULT_OUT = REPO / ".ragtune/bench/retrieval.json"
NAME = "bench"
TOP_K = 10
DEPTH = TOP_K * 3  # hybrid candidates a side, what the Retriever asks for at top_k=10
FILTER_DOCS = 100
MODES = ("dense", "sparse", "hybrid", "filtered-type", "filtered-doc")
EXTRA_EF = (64, 128)  # besides the configured hnsw_ef, for context
SMALL_THRESHOLD = 1_000  # forces HNSW on the SciFact-sized Edge store, for its recall
WARMUP = 5
MIN_QUERIES = 20
PROBE_QUERIES = 20
TARGET_RECALL = 0.99


def target_ms(size: int) -> float | None:
    """Issue #15's search-stage p50 targets for Edge."""
    return 5.0 if size <= 10_000 else 10.0 if size <= 100_000 else None


def workloads(
    points: Points, data: Data, sparse: SparseEncoder, seed: int
) -> dict[str, list[Search]]:
    """The same searches for every store at this size, one list per mode."""
    docs = sorted({str(p["doc_id"]) for p in points.payloads})
    rng = np.random.default_rng(seed)
    out: dict[str, list[Search]] = {m: [] for m in MODES}
    for text, row in zip(data.query_texts, data.query_dense.tolist(), strict=True):
        sv = sparse.encode_query(text)
        picked = [docs[i] for i in rng.choice(len(docs), FILTER_DOCS, replace=False)]
        out["dense"].append(Search("dense", TOP_K, dense=row))
        out["sparse"].append(Search("sparse", TOP_K, sparse=sv))
        out["hybrid"].append(Search("hybrid", TOP_K, dense=row, sparse=sv, depth=DEPTH))
        out["filtered-type"].append(Search("dense", TOP_K, dense=row, filters={"file_type": "pdf"}))
        out["filtered-doc"].append(Search("dense", TOP_K, dense=row, filters={"doc_id": picked}))
    return out


@dataclass
class Timed:
    """Latencies of one block of calls, and what each returned (point ids)."""

    seconds: list[float]
    results: list[list[str]]
    load: float

    def summary(self) -> dict[str, float]:
        ms = np.asarray(self.seconds) * 1000
        return {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "queries": len(ms),
            "load": round(self.load, 2),
        }


def time_calls(calls: Sequence[Callable[[], list[str]]], budget_s: float) -> Timed:
    """Each call timed once, after a warm-up. Over `budget_s`, stops once MIN_QUERIES are
    timed; a block of seconds-long calls (local mode at 100k) stops at 4x the budget."""
    warm = time.perf_counter()
    for call in calls[:WARMUP]:
        call()
        if time.perf_counter() - warm > 1.0:
            break
    gc.collect()
    seconds: list[float] = []
    results: list[list[str]] = []
    started = time.perf_counter()
    for call in calls:
        t = time.perf_counter()
        results.append(call())
        seconds.append(time.perf_counter() - t)
        spent = time.perf_counter() - started
        if (spent > budget_s and len(seconds) >= MIN_QUERIES) or spent > 4 * budget_s:
            break
    return Timed(seconds, results, os.getloadavg()[0])


def _search(store: VectorStore, search: Search) -> list[str]:
    return [p.id for p in store.search(NAME, search)]


def time_modes(
    store: VectorStore, work: dict[str, list[Search]], budget_s: float, label: str
) -> dict[str, Timed]:
    out: dict[str, Timed] = {}
    for mode in MODES:
        out[mode] = time_calls([functools.partial(_search, store, s) for s in work[mode]], budget_s)
        log(f"  {label} {mode}: p50 {out[mode].summary()['p50_ms']} ms")
    return out


def time_retriever(store: VectorStore, ctx: Context, budget_s: float) -> dict[str, float]:
    """Hybrid through ragtune's Retriever (dense vector given), and its own share: the time
    of each call outside `store.search`."""
    retriever = Retriever(store, ctx.embedder, ctx.sparse, NAME)
    search = store.search
    inner: list[float] = []
    own: list[float] = []

    def timed_search(name: str, request: Search) -> list[ScoredPoint]:
        started = time.perf_counter()
        try:
            return search(name, request)
        finally:
            inner.append(time.perf_counter() - started)

    def ask(text: str, dense: list[float]) -> list[str]:
        inner.clear()
        started = time.perf_counter()
        hits = retriever.search(text, mode="hybrid", top_k=TOP_K, dense_vector=dense)
        own.append(time.perf_counter() - started - sum(inner))
        return [h.id for h in hits]

    rows = ctx.data.query_dense.tolist()
    calls = [functools.partial(ask, t, v) for t, v in zip(ctx.data.query_texts, rows, strict=True)]
    store.search = timed_search  # type: ignore[method-assign,assignment]
    try:
        timed = time_calls(calls, budget_s)
    finally:
        del store.search
    own_ms = np.asarray(own[-len(timed.seconds) :]) * 1000
    return {
        **timed.summary(),
        "own_p50_ms": round(float(np.percentile(own_ms, 50)), 3),
        "own_mean_ms": round(float(own_ms.mean()), 3),
    }


def overlap(found: Sequence[list[str]], truth: Sequence[list[str]]) -> float:
    """Mean share of the true top-k found (recall@k), over the queries both answered."""
    shares = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=False) if t]
    return round(float(np.mean(shares)), 4)


def fill(store: VectorStore, points: Points, ctx: Context, label: str) -> float:
    """Create the collection and upsert every point; seconds spent in `upsert`."""
    store.create(NAME, points.dense.shape[1], ctx.data.manifest)
    spent, done = 0.0, 0
    for batch in points.batches(ctx.settings.ingest.write_batch):
        t = time.perf_counter()
        store.upsert(NAME, batch)
        spent += time.perf_counter() - t
        done += len(batch)
        if done % 20_000 < len(batch) or done == len(points):
            log(f"  {label}: {done:,} points upserted ({spent:.1f} s)")
    return round(spent, 2)


def hnsw_recall(
    store: EdgeStore, work: dict[str, list[Search]], exact: dict[str, Timed], budget_s: float
) -> dict[str, dict[str, float]]:
    """recall@10 against exact search, and dense p50, at the configured hnsw_ef and others."""
    configured = store.hnsw_ef
    out: dict[str, dict[str, float]] = {}
    for ef in sorted({*EXTRA_EF, configured}):
        store.hnsw_ef = ef
        row: dict[str, float] = {}
        for mode in ("dense", "filtered-type"):
            timed = time_calls([functools.partial(_search, store, s) for s in work[mode]], budget_s)
            row[f"{mode}_recall@10"] = overlap(timed.results, exact[mode].results)
            row[f"{mode}_p50_ms"] = timed.summary()["p50_ms"]
        out[str(ef)] = row
        log(f"  hnsw_ef {ef}: {row}")
    store.hnsw_ef = configured
    return out


def bench_size(points: Points, ctx: Context, tmp: Path, local: bool, seed: int) -> dict[str, Any]:
    size = len(points)
    q = ctx.settings.qdrant
    work = workloads(points, ctx.data, ctx.sparse, seed)
    probe_vectors = ctx.data.query_dense[:PROBE_QUERIES].tolist()
    out: dict[str, Any] = {"points": size}

    log(f"{size:,} points: Edge (index threshold {q.index_threshold:,}, hnsw_ef {q.hnsw_ef})")
    store = EdgeStore(str(tmp / "edge"), hnsw_ef=q.hnsw_ef, index_threshold=q.index_threshold)
    edge: dict[str, Any] = {"upsert_s": fill(store, points, ctx, "Edge")}
    edge["index_before"] = vars(store.index_status(NAME))
    exact = time_modes(store, work, ctx.budget_s, "Edge exact")
    edge["exact"] = {m: t.summary() for m, t in exact.items()}
    truth = _numpy_top(points, ctx.data.query_dense)
    edge["exact_dense_vs_numpy"] = overlap(exact["dense"].results, truth)
    if size >= q.index_threshold:
        edge.update(_optimize(store, work, exact, ctx))
    edge["retriever_hybrid"] = time_retriever(store, ctx, ctx.budget_s)
    store.close()
    edge["reopen"] = probe("edge", tmp / "edge", probe_vectors)
    log(f"  Edge reopen: {edge['reopen']}")
    out["edge"] = edge

    if size < q.index_threshold:
        threshold = max(1, min(SMALL_THRESHOLD, size // 4))
        small = EdgeStore(str(tmp / "edge-hnsw"), hnsw_ef=q.hnsw_ef, index_threshold=threshold)
        log(f"{size:,} points: Edge with index threshold {threshold:,}, for HNSW recall")
        upsert_s = fill(small, points, ctx, "Edge (HNSW)")
        out["edge_small_threshold"] = {
            "index_threshold": threshold,
            "upsert_s": upsert_s,
            **_optimize(small, work, exact, ctx),
        }
        small.close()

    if local:
        log(f"{size:,} points: qdrant-client local mode")
        client = ClientStore.local(str(tmp / "local"))
        lm: dict[str, Any] = {"upsert_s": fill(client, points, ctx, "local mode")}
        timed = time_modes(client, work, ctx.budget_s, "local mode")
        lm["search"] = {m: t.summary() for m, t in timed.items()}
        lm["dense_vs_edge_exact"] = overlap(timed["dense"].results, exact["dense"].results)
        lm["retriever_hybrid"] = time_retriever(client, ctx, ctx.budget_s)
        client.close()
        lm["reopen"] = probe("local", tmp / "local", probe_vectors)
        log(f"  local mode reopen: {lm['reopen']}")
        out["local"] = lm
    return out


def _optimize(
    store: EdgeStore, work: dict[str, list[Search]], exact: dict[str, Timed], ctx: Context
) -> dict[str, Any]:
    started = time.perf_counter()
    store.optimize(NAME, progress=lambda m: log(f"  {m}"))
    out: dict[str, Any] = {"optimize_s": round(time.perf_counter() - started, 1)}
    out["index_after"] = vars(store.index_status(NAME))
    out["hnsw"] = {
        m: t.summary() for m, t in time_modes(store, work, ctx.budget_s, "Edge HNSW").items()
    }
    out["recall"] = hnsw_recall(store, work, exact, ctx.budget_s)
    return out


def _numpy_top(points: Points, queries: npt.NDArray[np.float32]) -> list[list[str]]:
    """Exact dense top-k by cosine (the rows are unit length), as a check on Edge's exact."""
    scores = queries @ points.dense.T
    top = np.argsort(-scores, axis=1)[:, :TOP_K]
    return [[points.ids[i] for i in row] for row in top.tolist()]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe(kind: str, path: Path, vectors: list[list[float]]) -> dict[str, float]:
    """Reopen the store in a fresh process: open time and resident memory it adds."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(vectors, fh)
    command = [sys.executable, "-m", "bench.retrieval", "--probe", kind, str(path), fh.name]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    Path(fh.name).unlink()
    if done.returncode != 0:
        raise SystemExit(f"reopening the {kind} store failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_probe(kind: str, path: str, vector_file: str) -> None:
    vectors: list[list[float]] = json.loads(Path(vector_file).read_text())
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    store: VectorStore = EdgeStore(path) if kind == "edge" else ClientStore.local(path)
    store.count(NAME)  # Edge loads a shard on first use
    open_s = time.perf_counter() - started
    opened = _rss_mb()
    started = time.perf_counter()
    for vector in vectors:
        store.search(NAME, Search("dense", TOP_K, dense=vector))
    search_ms = (time.perf_counter() - started) * 1000 / len(vectors)
    searched = _rss_mb()
    store.close()
    figures = {
        "open_s": round(open_s, 3),
        "rss_open_mb": round(opened - before, 1),
        "rss_searched_mb": round(searched - before, 1),
        "first_searches_mean_ms": round(search_ms, 2),
    }
    print(json.dumps(figures))


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor(),
    )
    flags = cpu_flags(cpuinfo)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "python": platform.python_version(),
        "qdrant_edge": version("qdrant-edge-py"),
        "qdrant_client": version("qdrant-client"),
        "load_at_start": round(os.getloadavg()[0], 2),
    }


def targets(sizes: dict[str, Any], hnsw_ef: int) -> list[dict[str, Any]]:
    """Issue #15's targets, each with its figure: Edge's serving p50 and HNSW recall@10."""
    out: list[dict[str, Any]] = []
    for result in sizes.values():
        size, edge = result["points"], result["edge"]
        limit = target_ms(size)
        state = "HNSW" if "hnsw" in edge else "exact"
        for mode in MODES if limit is not None else ():
            p50 = float(edge.get("hnsw", edge["exact"])[mode]["p50_ms"])
            out.append(
                {
                    "target": f"Edge {mode} p50 at {size:,} points ({state}) <= {limit:g} ms",
                    "value": p50,
                    "pass": limit is not None and p50 <= limit,
                }
            )
        recall = edge.get("recall") or result.get("edge_small_threshold", {}).get("recall")
        if recall:
            value = float(recall[str(hnsw_ef)]["dense_recall@10"])
            out.append(
                {
                    "target": f"HNSW recall@10 at {size:,} points (hnsw_ef {hnsw_ef}) "
                    f">= {TARGET_RECALL}",
                    "value": value,
                    "pass": value >= TARGET_RECALL,
                }
            )
    return out


def _cell(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "-"
    return f"{figures['p50_ms']:.2f} / {figures['p95_ms']:.2f}"


def report(figures: dict[str, Any]) -> None:
    data = figures["data"]
    print(
        f"SciFact: {data['chunks']:,} chunks of {data['documents']:,} abstracts, "
        f"{data['queries']} queries; {figures['machine']['cpu']}, "
        f"{figures['machine']['cores']} cores, load {figures['machine']['load_at_start']} "
        f"at start, {figures['load_at_end']} at end"
    )
    print(f"\nsearch stage, ms p50 / p95 (top {TOP_K}; hybrid fuses {DEPTH} a side)")
    header = ("points", "mode", "Edge exact", "Edge HNSW", "local mode", "local/Edge")
    print(
        f"{header[0]:>9}  {header[1]:<17}{header[2]:>16}{header[3]:>16}{header[4]:>18}"
        f"{header[5]:>12}"
    )
    for result in figures["sizes"].values():
        edge, local = result["edge"], result.get("local", {})
        hnsw = edge.get("hnsw") or result.get("edge_small_threshold", {}).get("hnsw", {})
        serving = edge.get("hnsw", edge["exact"])
        rows = [
            (m, edge["exact"][m], hnsw.get(m), local.get("search", {}).get(m), serving[m])
            for m in MODES
        ]
        rows.append(
            (
                "Retriever hybrid",
                None,
                None,
                local.get("retriever_hybrid"),
                edge["retriever_hybrid"],
            )
        )
        for mode, exact, indexed, brute, edge_serving in rows:
            if mode == "Retriever hybrid":
                exact, indexed = (None, edge_serving) if "hnsw" in edge else (edge_serving, None)
            ratio = f"{brute['p50_ms'] / edge_serving['p50_ms']:.0f}x" if brute else "-"
            print(
                f"{result['points']:>9,}  {mode:<17}{_cell(exact):>16}{_cell(indexed):>16}"
                f"{_cell(brute):>18}{ratio:>12}"
            )
    print(
        "(below the index threshold, Edge serves exact; its HNSW column is a second Edge store "
        "with a low threshold, and local/Edge compares with what Edge serves)"
    )
    print("\nstores: upsert all, build the index, reopen in a fresh process")
    print(
        f"{'points':>9}  {'store':<12}{'upsert s':>10}{'optimize s':>12}{'reopen s':>10}"
        f"{'RSS MB open':>13}{'+ searches':>12}"
    )
    for result in figures["sizes"].values():
        for label, key in (
            ("Edge", "edge"),
            ("Edge (HNSW)", "edge_small_threshold"),
            ("local mode", "local"),
        ):
            store = result.get(key)
            if store is None:
                continue
            reopen = store.get("reopen", {})
            print(
                f"{result['points']:>9,}  {label:<12}{store['upsert_s']:>10}"
                f"{store.get('optimize_s', '-'):>12}{reopen.get('open_s', '-'):>10}"
                f"{reopen.get('rss_open_mb', '-'):>13}{reopen.get('rss_searched_mb', '-'):>12}"
            )
    print("\nHNSW recall@10 against exact search (Edge, same points)")
    print(f"{'points':>9}  {'hnsw_ef':>8}{'dense':>10}{'file_type filter':>18}{'dense p50 ms':>14}")
    for result in figures["sizes"].values():
        edge = result["edge"]
        recall = edge.get("recall") or result.get("edge_small_threshold", {}).get("recall", {})
        for ef, row in recall.items():
            print(
                f"{result['points']:>9,}  {ef:>8}{row['dense_recall@10']:>10.4f}"
                f"{row['filtered-type_recall@10']:>18.4f}{row['dense_p50_ms']:>14.2f}"
            )
    for result in figures["sizes"].values():
        edge, local = result["edge"], result.get("local")
        line = f"{result['points']:,} points: Edge exact dense top-{TOP_K} = numpy's on "
        line += f"{edge['exact_dense_vs_numpy']:.4f}"
        if local:
            line += f", local mode's = Edge exact's on {local['dense_vs_edge_exact']:.4f}"
        print(line)
    for result in figures["sizes"].values():
        parts = [
            f"{label} {result[key]['retriever_hybrid']['own_p50_ms']:.3f} ms"
            for label, key in (("Edge", "edge"), ("local mode", "local"))
            if "own_p50_ms" in result.get(key, {}).get("retriever_hybrid", {})
        ]
        if parts:
            print(
                f"{result['points']:,} points: the Retriever's own p50 (outside store.search): "
                + ", ".join(parts)
            )
    print()
    for target in figures["targets"]:
        print(f"{'PASS' if target['pass'] else 'FAIL'}  {target['target']}: {target['value']}")


def parse_sizes(text: str) -> list[int | None]:
    """`scifact,100k` -> [None (all SciFact's chunks), 100000]."""
    out: list[int | None] = []
    for token in text.split(","):
        token = token.strip().lower()
        if token == "scifact":
            out.append(None)
        elif token.endswith("k") and token[:-1].isdigit():
            out.append(int(token[:-1]) * 1000)
        elif token.isdigit():
            out.append(int(token))
        else:
            raise argparse.ArgumentTypeError(f"size {token!r}: give a number, 100k, or scifact")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("scifact,100k"))
    parser.add_argument(
        "--skip-local-above",
        type=int,
        default=None,
        metavar="N",
        help="leave local mode out at sizes above N points (its upsert takes ~5 min at 100k)",
    )
    parser.add_argument("--queries", type=int, default=None, help="first N test queries only")
    parser.add_argument("--docs", type=int, default=None, help="first N abstracts only (quick)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help=f"seconds per timed block, after at least {MIN_QUERIES} queries",
    )
    parser.add_argument("--noise", type=float, default=0.025, help="per-dimension sigma")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        run_probe(*args.probe)
        return
    if not (args.scifact / "corpus.jsonl").is_file():
        raise SystemExit(f"SciFact not found in {args.scifact} (pass --scifact)")

    settings = Settings()
    started = time.perf_counter()
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    embedder = Embedder.load(settings.embedding)
    data = load_data(args.scifact, settings, embedder, args.docs, args.queries)
    ctx = Context(settings, embedder, SparseEncoder(settings.sparse), data, args.budget_s)
    figures["data"] = {
        "documents": data.documents,
        "chunks": len(data.points),
        "queries": len(data.query_texts),
        "embedder": embedder.info(),
        "ingest_s": round(data.ingest_s, 1),
        "cache": data.cache,
    }
    figures["settings"] = {
        "hnsw_ef": settings.qdrant.hnsw_ef,
        "index_threshold": settings.qdrant.index_threshold,
        "top_k": TOP_K,
        "hybrid_depth": DEPTH,
        "noise": args.noise,
        "seed": args.seed,
        "budget_s": args.budget_s,
        "write_batch": settings.ingest.write_batch,
    }
    figures["sizes"] = {}
    for size in args.sizes:
        points = grow(data.points, size or len(data.points), args.noise, args.seed)
        local = args.skip_local_above is None or len(points) <= args.skip_local_above
        with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
            result = bench_size(points, ctx, Path(tmp), local, args.seed)
        figures["sizes"][str(len(points))] = result
        del points
        gc.collect()
    figures["targets"] = targets(figures["sizes"], settings.qdrant.hnsw_ef)
    figures["load_at_end"] = round(os.getloadavg()[0], 2)
    figures["seconds"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    report(figures)
    print(f"\nfigures in {args.out} ({figures['seconds']} s)")


if __name__ == "__main__":
    main()

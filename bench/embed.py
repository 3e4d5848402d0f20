"""The embed stage: float32 vs bfloat16, 1 vs 2 torch threads, 1 vs 8 concurrent clients.

One run, side by side on the same texts with the configured model:

- ingest: the chunks `ragtune ingest` embeds for the first N SciFact abstracts, in batches of
  32: float32 with 1 and 2 torch threads and bfloat16 with the default threads, taking turns
  batch by batch so that a shared machine's load falls on each alike; documents/s, chunks/s
  (bare encode: the ceiling of ingestion) and each chunk's cosine between the two dtypes;
- one question at a time: SciFact questions embedded alone, the settings taking turns by
  rounds; p50 and p90;
- the embed stage as the service runs it: questions through the service's `Batcher` on one
  embedder thread (as `service.workers.Workers`), 1 client against 8 concurrent clients, each
  waiting for its answer before sending its next question, per thread count. Target: the
  8-client p50 no worse than twice the 1-client p50.

The machine's load average is printed with the figures: on shared cores they are only as
quiet as it was.

    python -m bench.embed [--scifact ../shared/data/scifact] [--docs 1000] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.chunking import Chunker
from ingest.documents import LoadReport
from ingest.embedder import Dtype, Embedder, default_threads, detect_dtype
from ingest.loaders import discover, load
from ragtune.settings import Settings
from service.rag.batching import Batcher

DEFAULT_SCIFACT = Path(__file__).resolve().parents[2] / "shared/data/scifact"
BATCH = 32
CLIENTS = 8
THREADS = (1, 2)
ROUNDS = 4

Setting = tuple[Dtype, int]  # an embedder's dtype and torch threads


def chunk_texts(corpus: Path, docs: int, settings: Settings, embedder: Embedder) -> list[str]:
    """What `ragtune ingest` embeds for the first `docs` documents of `corpus`."""
    lines = corpus.read_text(encoding="utf-8").splitlines()[:docs]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        chunker = Chunker(embedder.tokenizer, embedder.token_limit, settings.chunking)
        return [
            c.embed_text for d in load(discover([path]), LoadReport()) for c in chunker.split(d)
        ]


def questions(scifact: Path, n: int) -> list[str]:
    lines = (scifact / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [str(json.loads(line)["text"]) for line in lines]


def _use(embedders: dict[Dtype, Embedder], setting: Setting) -> Embedder:
    """The embedder for `setting`, warmed up: a thread count's first call pays for resizing
    OpenMP's team, which a serving embedder (one count, always) never does."""
    embedder = embedders[setting[0]]
    embedder.threads = setting[1]
    embedder.encode(["warm-up", "a second, longer warm-up text"])
    return embedder


def _turns(settings: Sequence[Setting], i: int) -> list[Setting]:
    return list(settings) if i % 2 == 0 else list(reversed(settings))


def ingest_rates(
    embedders: dict[Dtype, Embedder], settings: Sequence[Setting], texts: Sequence[str]
) -> tuple[dict[Setting, float], npt.NDArray[np.float32]]:
    """Seconds each setting took over `texts`, batch by batch in turns, and each text's
    cosine between its float32 and bfloat16 vectors."""
    seconds = dict.fromkeys(settings, 0.0)
    vectors: dict[Dtype, list[npt.NDArray[np.float32]]] = {"float32": [], "bfloat16": []}
    for i, start in enumerate(range(0, len(texts), BATCH)):
        batch = texts[start : start + BATCH]
        kept: set[Dtype] = set()
        for setting in _turns(settings, i):
            embedder = _use(embedders, setting)
            started = time.perf_counter()
            rows = embedder.encode(batch)
            seconds[setting] += time.perf_counter() - started
            if setting[0] not in kept:
                vectors[setting[0]].append(rows)
                kept.add(setting[0])
    fp32, bf16 = (np.concatenate(vectors[d]) for d in ("float32", "bfloat16"))
    cosines: npt.NDArray[np.float32] = np.sum(fp32 * bf16, axis=1)
    return seconds, cosines


def single_query_ms(
    embedders: dict[Dtype, Embedder], settings: Sequence[Setting], texts: Sequence[str]
) -> dict[Setting, list[float]]:
    """Each question embedded alone (ms), the settings taking turns by rounds, on a thread of
    its own as the service's embedder is (on this machine torch ran 2 threads slower on the
    main thread than on a later one; `ragtune ingest` embeds on the main thread)."""
    times: dict[Setting, list[float]] = {s: [] for s in settings}

    def block(setting: Setting, part: Sequence[str]) -> None:
        embedder = _use(embedders, setting)
        for text in part:
            started = time.perf_counter()
            embedder.encode([text])
            times[setting].append(1000 * (time.perf_counter() - started))

    with ThreadPoolExecutor(1, thread_name_prefix="bench-embedder") as pool:
        for r in range(ROUNDS):
            for setting in _turns(settings, r):
                pool.submit(block, setting, texts[r::ROUNDS]).result()
    return times


async def _clients(
    embedder: Embedder, texts: Sequence[str], clients: int
) -> tuple[list[float], int, int]:
    """`clients` callers sharing `texts`, each waiting for its answer before its next one:
    each question's latency (ms), and the batches and questions the Batcher ran."""
    with ThreadPoolExecutor(1, thread_name_prefix="bench-embedder") as pool:
        batcher: Batcher[str, npt.NDArray[np.float32]] = Batcher(
            lambda batch: list(embedder.encode(batch)), BATCH, executor=pool
        )
        latencies: list[float] = []

        async def client(mine: Sequence[str]) -> None:
            for text in mine:
                started = time.perf_counter()
                await batcher.submit(text)
                latencies.append(1000 * (time.perf_counter() - started))

        for text in ("warm-up", "a second, longer warm-up text"):  # the pool's new thread
            await batcher.submit(text)
        batcher.batches = batcher.items = 0
        await asyncio.gather(*(client(texts[c::clients]) for c in range(clients)))
    return latencies, batcher.batches, batcher.items


def embed_stage(
    embedders: dict[Dtype, Embedder], settings: Sequence[Setting], texts: Sequence[str]
) -> dict[Setting, dict[str, Any]]:
    """1 client and `CLIENTS` clients per setting, the settings taking turns by rounds."""
    latencies: dict[tuple[Setting, int], list[float]] = {}
    counts: dict[tuple[Setting, int], list[int]] = {}
    for r in range(ROUNDS):
        for setting in _turns(settings, r):
            embedder = _use(embedders, setting)
            for c in (1, CLIENTS):
                ms, batches, items = asyncio.run(_clients(embedder, texts[r::ROUNDS], c))
                latencies.setdefault((setting, c), []).extend(ms)
                total = counts.setdefault((setting, c), [0, 0])
                total[0] += batches
                total[1] += items
    result: dict[Setting, dict[str, Any]] = {}
    for setting in settings:
        row: dict[str, Any] = {}
        for c in (1, CLIENTS):
            ms = latencies[setting, c]
            batches, items = counts[setting, c]
            row[f"{c}_client{'s' if c > 1 else ''}"] = {
                "p50_ms": _r(statistics.median(ms), 2),
                "p90_ms": _r(_quantile(ms, 0.9), 2),
                "mean_batch": _r(items / max(batches, 1), 2),
            }
        row["ratio"] = _r(row[f"{CLIENTS}_clients"]["p50_ms"] / row["1_client"]["p50_ms"], 2)
        result[setting] = row
    return result


def _quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _r(value: float, digits: int = 1) -> float:
    return round(value, digits)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _name(setting: Setting) -> str:
    return f"{setting[0]}, {setting[1]} thread{'s' if setting[1] > 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument(
        "--docs", type=int, default=1000, help="abstracts to ingest (first N; 0: skip ingest)"
    )
    parser.add_argument("--queries", type=int, default=200, help="questions per measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    corpus = args.scifact / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"SciFact not found: {corpus} (pass --scifact)")
    if args.queries < ROUNDS * CLIENTS:  # every client asks in every round
        raise SystemExit(f"--queries must be at least {ROUNDS * CLIENTS}")

    settings = Settings()
    auto = detect_dtype(settings.embedding.dtype, settings.embedding.device)
    default = settings.embedding.threads or default_threads()
    embedders: dict[Dtype, Embedder] = {
        d: Embedder.load(settings.embedding.model_copy(update={"dtype": d, "batch_size": BATCH}))
        for d in ("float32", "bfloat16")
    }
    asked = questions(args.scifact, args.queries)
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "default_threads": default,
        "load_average_before": _load(),
        "auto_dtype": auto.dtype,
        "auto_why": auto.why,
    }
    if args.docs > 0:
        texts = chunk_texts(corpus, args.docs, settings, embedders["float32"])
        runs: list[Setting] = [*(("float32", t) for t in THREADS), ("bfloat16", default)]
        seconds, cosines = ingest_rates(embedders, runs, texts)
        figures |= {
            "documents": args.docs,
            "chunks": len(texts),
            "ingest": {
                _name(s): {
                    "docs_per_s": _r(args.docs / took),
                    "chunks_per_s": _r(len(texts) / took),
                    "seconds": _r(took),
                }
                for s, took in seconds.items()
            },
            "bf16_speed_vs_fp32": _r(seconds["float32", default] / seconds["bfloat16", default], 3),
            "cosine_fp32_bf16": {
                "mean": _r(float(cosines.mean()), 6),
                "min": _r(float(cosines.min()), 6),
            },
        }
    alone_runs: list[Setting] = [*((auto.dtype, t) for t in THREADS), ("bfloat16", default)]
    alone = single_query_ms(embedders, list(dict.fromkeys(alone_runs)), asked)
    stage = embed_stage(embedders, [(auto.dtype, t) for t in THREADS], asked)
    figures |= {
        "single_query_ms": {
            _name(s): {"p50": _r(statistics.median(ms), 2), "p90": _r(_quantile(ms, 0.9), 2)}
            for s, ms in alone.items()
        },
        "embed_stage": {_name(s): row for s, row in stage.items()},
        "load_average_after": _load(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    _print(figures)


def _print(f: dict[str, Any]) -> None:
    print(f"{f['cpus']} CPUs; embedding threads by default: {f['default_threads']}")
    print(f"load average before {f['load_average_before']}, after {f['load_average_after']}")
    print(f"auto dtype: {f['auto_dtype']} ({f['auto_why']})")
    if "ingest" in f:
        print(f"\ningest: {f['documents']} documents, {f['chunks']} chunks, batch {BATCH}")
        print(f"{'':<22}{'docs/s':>10}{'chunks/s':>10}{'seconds':>10}")
        for name, row in f["ingest"].items():
            print(f"{name:<22}{row['docs_per_s']:>10}{row['chunks_per_s']:>10}{row['seconds']:>10}")
        cos = f["cosine_fp32_bf16"]
        print(
            f"bf16 / fp32 speed: {f['bf16_speed_vs_fp32']}; "
            f"cosine mean {cos['mean']} min {cos['min']}"
        )
    print("\none question alone (ms)")
    for name, row in f["single_query_ms"].items():
        print(f"  {name:<22} p50 {row['p50']:>8}  p90 {row['p90']:>8}")
    print("\nthe embed stage through the Batcher (ms)")
    for name, row in f["embed_stage"].items():
        one, many = row["1_client"], row[f"{CLIENTS}_clients"]
        print(
            f"  {name:<22} 1 client p50 {one['p50_ms']:>7}  {CLIENTS} clients p50 "
            f"{many['p50_ms']:>7} (batch {many['mean_batch']:>5})  ratio {row['ratio']} "
            "(target <= 2)"
        )


if __name__ == "__main__":
    main()

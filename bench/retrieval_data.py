"""SciFact's points and queries for the retrieval benchmarks: ingested once by ragtune and
cached (`.ragtune/bench-cache/`, keyed by the data and the embedder, chunker and BM25
settings), grown to any size with seeded perturbed copies, so no second embedding run is
needed. Used by bench/retrieval.py and bench/retrieval_api.py."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client.models import SparseVector

from ingest.backends.base import NewPoint
from ingest.backends.edge import EdgeStore
from ingest.chunking import Chunker
from ingest.embedder import Embedder
from ingest.evaluation import load_beir
from ingest.pipeline import Ingester, IngestOptions
from ingest.schema import point_id
from ingest.sparse import SparseEncoder
from ragtune.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCIFACT = REPO.parent / "shared/data/scifact"
CACHE = REPO / ".ragtune/bench-cache"
FILE_TYPES = ("md", "txt", "html", "pdf", "jsonl")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def file_type(doc_id: str) -> str:
    return FILE_TYPES[zlib.crc32(doc_id.encode()) % len(FILE_TYPES)]


@dataclass
class Points:
    """Points column-wise: dense rows, sparse vectors in CSR form, payloads."""

    ids: list[str]
    dense: npt.NDArray[np.float32]
    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    payloads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)

    def sparse(self, row: int) -> SparseVector:
        a, b = int(self.indptr[row]), int(self.indptr[row + 1])
        return SparseVector(indices=self.indices[a:b].tolist(), values=self.values[a:b].tolist())

    def batches(self, size: int) -> Iterator[list[NewPoint]]:
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            rows = self.dense[start:stop].tolist()
            yield [
                NewPoint(self.ids[i], rows[i - start], self.sparse(i), self.payloads[i])
                for i in range(start, stop)
            ]

    def head(self, size: int) -> Points:
        end = int(self.indptr[size])
        return Points(
            self.ids[:size],
            self.dense[:size],
            self.indptr[: size + 1],
            self.indices[:end],
            self.values[:end],
            self.payloads[:size],
        )


def grow(base: Points, size: int, noise: float, seed: int) -> Points:
    """`base` and then perturbed copies of its points, `size` in all."""
    if size <= len(base):
        return base.head(size)
    extra = size - len(base)
    source = np.arange(extra) % len(base)
    rng = np.random.default_rng(seed)
    noisy = base.dense[source] + rng.normal(0.0, noise, (extra, base.dense.shape[1]))
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    ids, payloads = list(base.ids), list(base.payloads)
    for n, row in enumerate(source.tolist()):
        original = base.payloads[row]
        doc_id = f"{original['doc_id']}~{n // len(base) + 1}"
        ids.append(point_id(doc_id, int(original["chunk_index"])))
        payloads.append({**original, "doc_id": doc_id, "file_type": file_type(doc_id)})
    lengths = np.diff(base.indptr)
    spans = [slice(int(base.indptr[r]), int(base.indptr[r + 1])) for r in source.tolist()]
    return Points(
        ids,
        np.vstack([base.dense, noisy.astype(np.float32)]),
        np.concatenate([base.indptr, base.indptr[-1] + np.cumsum(lengths[source])]),
        np.concatenate([base.indices, *(base.indices[s] for s in spans)]),
        np.concatenate([base.values, *(base.values[s] for s in spans)]),
        payloads,
    )


@dataclass
class Data:
    points: Points
    manifest: dict[str, Any]
    query_texts: list[str]
    query_dense: npt.NDArray[np.float32]
    documents: int
    ingest_s: float
    cache: str


@dataclass
class Context:
    settings: Settings
    embedder: Embedder
    sparse: SparseEncoder
    data: Data
    budget_s: float


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_data(
    scifact: Path, settings: Settings, embedder: Embedder, limit: int | None, queries: int | None
) -> Data:
    """SciFact's ingested points and embedded test queries, from the cache or built once."""
    chunker = Chunker(embedder.tokenizer, embedder.token_limit, settings.chunking)
    sparse = SparseEncoder(settings.sparse)
    corpus = scifact / "corpus.jsonl"
    split = load_beir(scifact)
    # All test queries are embedded and cached; --queries only uses fewer of them.
    texts = list(split.queries.values())
    key = {
        "corpus": _sha256(corpus),
        "queries": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "embedder": embedder.info(),
        "chunker": chunker.info(),
        "sparse": sparse.info(),
        "limit": limit,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / f"scifact-{digest}.npz"
    if not path.is_file():
        _build_cache(path, corpus, limit, texts, settings, embedder, chunker, sparse)
    log(f"points and query vectors from {path}")
    with np.load(path, allow_pickle=False) as npz:
        payloads: list[dict[str, Any]] = json.loads(npz["payloads"].tobytes())
        for payload in payloads:
            payload["file_type"] = file_type(str(payload["doc_id"]))
        points = Points(
            [str(i) for i in npz["ids"]],
            npz["dense"],
            npz["indptr"],
            npz["indices"],
            npz["values"],
            payloads,
        )
        return Data(
            points,
            json.loads(npz["manifest"].tobytes()),
            texts[:queries],
            npz["query_dense"][:queries],
            len({p["doc_id"] for p in payloads}),
            float(npz["ingest_s"]),
            str(path.relative_to(REPO)),
        )


def _build_cache(
    path: Path,
    corpus: Path,
    limit: int | None,
    texts: list[str],
    settings: Settings,
    embedder: Embedder,
    chunker: Chunker,
    sparse: SparseEncoder,
) -> None:
    log(f"no cache at {path}: ingesting {corpus} with {embedder.name} (minutes on 2 cores)")
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        if limit is not None:
            lines = corpus.read_text(encoding="utf-8").splitlines()[:limit]
            corpus = Path(tmp) / "corpus.jsonl"
            corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        store = EdgeStore(str(Path(tmp) / "store"))
        ingester = Ingester(store, embedder, sparse, chunker, settings.ingest.write_batch)
        report = ingester.run([corpus], IngestOptions(collection="scifact", progress=True))
        manifest = store.manifest("scifact") or {}
        ids: list[str] = []
        dense: list[list[float]] = []
        indptr, indices, values = [0], [], []
        payloads: list[dict[str, Any]] = []
        offset: str | None = None
        while True:
            page, offset = store.scroll("scifact", limit=1024, offset=offset, vectors=True)
            for p in page:
                if p.dense is None or p.sparse is None:
                    raise SystemExit(f"point {p.id} came back without its vectors")
                ids.append(p.id)
                dense.append(p.dense)
                indices.extend(p.sparse.indices)
                values.extend(p.sparse.values)
                indptr.append(len(indices))
                payloads.append(p.payload)
            if offset is None:
                break
        store.close()
    log(f"ingested {len(ids)} chunks in {report.seconds:.0f} s; embedding {len(texts)} queries")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        ids=np.array(ids),
        dense=np.asarray(dense, dtype=np.float32),
        indptr=np.asarray(indptr, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
        values=np.asarray(values, dtype=np.float32),
        payloads=np.frombuffer(json.dumps(payloads).encode(), dtype=np.uint8),
        manifest=np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8),
        query_dense=embedder.encode(texts),
        ingest_s=np.float64(report.seconds),
    )

"""SciFact sparse (BM25) retrieval: ragtune's former blake2b encoder vs fastembed's `Qdrant/bm25`.

Sparse-only retrieval needs no dense embedding: both encoders turn every SciFact unit into a
sparse vector and each of the 300 test queries is scored as Qdrant scores a sparse vector with
`Modifier.IDF`: the dot product of the query's weights times each term's IDF,
ln((N - df + 0.5) / (df + 0.5) + 1), with the document's weights. `--check-qdrant N` runs
the first N queries through embedded Qdrant too and stops if any ranking differs.

Units: `chunks` are what `ragtune ingest` writes (the ingest chunker with the default
settings, title line included), and a document ranks by its best chunk, as `ragtune eval`
does; `abstracts` are whole title + text, one per document, the protocol of the published
BM25 figures (0.665 BEIR/Elasticsearch, 0.679 Anserini; ../shared/data/README.md).

    python -m bench.sparse [--scifact ../shared/data/scifact] [--queries N] [--check-qdrant N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from qdrant_client import QdrantClient, models

from ingest.chunking import Chunker
from ingest.documents import Document, LoadReport
from ingest.embedder import Embedder
from ingest.evaluation import BeirSplit, evaluate, load_beir
from ingest.loaders import discover, load
from ingest.sparse import SparseEncoder
from ragtune.settings import Settings, SparseSettings

DEFAULT_SCIFACT = Path(__file__).resolve().parents[2] / "shared/data/scifact"
DEPTH = 100  # documents ranked per query (recall@100)


class Encoder(Protocol):
    def encode_document(self, text: str) -> models.SparseVector: ...
    def encode_query(self, text: str) -> models.SparseVector: ...


class Blake2bEncoder:
    """ragtune's sparse encoder before it took fastembed's token ids (manifest version 1):
    a `\\w+` tokenizer, a 127-word stopword list, PyStemmer's Snowball English, blake2b ids."""

    _TOKEN = re.compile(r"\w+", re.UNICODE)
    _STOPWORDS = frozenset(
        """a about above after again against all am an and any are as at be because been before
        being below between both but by can could did do does doing down during each few for
        from further had has have having he her here hers herself him himself his how i if in
        into is it its itself just me more most my myself no nor not now of off on once only or
        other our ours ourselves out over own same she should so some such than that the their
        theirs them themselves then there these they this those through to too under until up
        very was we were what when where which while who whom why will with would you your
        yours yourself yourselves""".split()  # noqa: SIM905
    )

    def __init__(self, settings: SparseSettings) -> None:
        import Stemmer  # PyStemmer, a dev dependency for this comparison only

        self._settings = settings
        self._stemmer = Stemmer.Stemmer(settings.language)

    def _index(self, term: str) -> int:
        digest = hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest()
        return int.from_bytes(digest, "little")

    def _terms(self, text: str) -> list[str]:
        words = [w for w in self._TOKEN.findall(text.lower()) if w not in self._STOPWORDS]
        return list(self._stemmer.stemWords(words))

    def encode_document(self, text: str) -> models.SparseVector:
        counts = Counter(self._terms(text))
        k1, b, avg = self._settings.k1, self._settings.b, self._settings.avg_len
        norm = k1 * (1 - b + b * sum(counts.values()) / avg)
        weights: dict[int, float] = defaultdict(float)
        for term, tf in counts.items():
            weights[self._index(term)] += tf * (k1 + 1) / (tf + norm)
        return models.SparseVector(indices=list(weights), values=list(weights.values()))

    def encode_query(self, text: str) -> models.SparseVector:
        indices = sorted({self._index(t) for t in self._terms(text)})
        return models.SparseVector(indices=indices, values=[1.0] * len(indices))


class IdfIndex:
    """An inverted index scored as Qdrant scores a sparse vector with the IDF modifier."""

    def __init__(self, vectors: Sequence[models.SparseVector]) -> None:
        postings: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for row, vector in enumerate(vectors):
            for index, value in zip(vector.indices, vector.values, strict=True):
                postings[index][0].append(row)
                postings[index][1].append(value)
        self.size = len(vectors)
        self._postings = {
            i: (np.asarray(rows), np.asarray(values, dtype=np.float32))
            for i, (rows, values) in postings.items()
        }

    def idf(self, index: int) -> float:
        df = len(self._postings[index][0]) if index in self._postings else 0
        return math.log((self.size - df + 0.5) / (df + 0.5) + 1)

    def scores(self, query: models.SparseVector) -> np.ndarray:
        """Each row's score; rows sharing no term with the query score -inf (not returned)."""
        out = np.zeros(self.size, dtype=np.float64)
        hit = np.zeros(self.size, dtype=bool)
        for index, value in zip(query.indices, query.values, strict=True):
            if index in self._postings:
                rows, weights = self._postings[index]
                out[rows] += value * self.idf(index) * weights.astype(np.float64)
                hit[rows] = True
        out[~hit] = -np.inf
        return out


def units(docs: Sequence[Document], chunker: Chunker | None) -> tuple[list[str], list[str]]:
    """(texts, doc ids): a chunk per row with a chunker, else a whole title + text per row."""
    texts: list[str] = []
    owners: list[str] = []
    for doc in docs:
        if chunker is None:
            texts.append(f"{doc.title}\n{doc.text}" if doc.title else doc.text)
            owners.append(doc.doc_id)
            continue
        for chunk in chunker.split(doc):
            texts.append(chunk.embed_text)
            owners.append(doc.doc_id)
    return texts, owners


def ranker(encoder: Encoder, index: IdfIndex, owners: Sequence[str]) -> Callable[[str], list[str]]:
    """Documents by their best unit's score, best first, at most DEPTH."""
    owner_array = np.asarray(owners)

    def rank(query: str) -> list[str]:
        scores = index.scores(encoder.encode_query(query))
        order = np.argsort(-scores, kind="stable")
        ranked: list[str] = []
        seen: set[str] = set()
        for row in order:
            if scores[row] == -np.inf or len(ranked) == DEPTH:
                break
            doc = str(owner_array[row])
            if doc not in seen:
                seen.add(doc)
                ranked.append(doc)
        return ranked

    return rank


def check_with_qdrant(
    encoder: Encoder,
    vectors: Sequence[models.SparseVector],
    index: IdfIndex,
    queries: Sequence[str],
) -> None:
    """Stop unless embedded Qdrant ranks the first units as IdfIndex does."""
    client = QdrantClient(":memory:")
    client.create_collection(
        "bench",
        vectors_config={},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    client.upload_points(
        "bench",
        [models.PointStruct(id=i, vector={"bm25": v}) for i, v in enumerate(vectors)],
        batch_size=512,
    )
    for query in queries:
        encoded = encoder.encode_query(query)
        points = client.query_points("bench", query=encoded, using="bm25", limit=10).points
        scores = index.scores(encoded)
        ours = np.argsort(-scores, kind="stable")[: len(points)]
        theirs = [int(p.id) for p in points]
        same_scores = np.allclose([p.score for p in points], scores[ours], rtol=1e-4)
        if not same_scores or (list(ours) != theirs and len(set(scores[ours])) == len(ours)):
            raise SystemExit(f"IdfIndex and Qdrant disagree on {query!r}: {ours} vs {theirs}")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--queries", type=int, default=None, help="first N test queries only")
    parser.add_argument("--units", choices=["chunks", "abstracts", "both"], default="both")
    parser.add_argument(
        "--check-qdrant", type=int, default=0, metavar="N", help="compare N queries with Qdrant"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.scifact / "corpus.jsonl").is_file():
        raise SystemExit(f"SciFact not found in {args.scifact} (pass --scifact)")

    started = time.perf_counter()
    settings = Settings()
    split = load_beir(args.scifact)
    if args.queries is not None:
        kept = list(split.queries)[: args.queries]
        split = BeirSplit(
            queries={q: split.queries[q] for q in kept}, qrels={q: split.qrels[q] for q in kept}
        )
    docs = list(load(discover([args.scifact / "corpus.jsonl"]), LoadReport()))
    encoders: dict[str, Encoder] = {
        "blake2b (ragtune before)": Blake2bEncoder(settings.sparse),
        "fastembed Qdrant/bm25": SparseEncoder(settings.sparse),
    }
    layouts: dict[str, Chunker | None] = {}
    if args.units in ("chunks", "both"):
        embedder = Embedder.load(settings.embedding)
        layouts["chunks"] = Chunker(embedder.tokenizer, embedder.token_limit, settings.chunking)
    if args.units in ("abstracts", "both"):
        layouts["abstracts"] = None

    results: dict[str, dict[str, dict[str, float]]] = {}
    for layout, chunker in layouts.items():
        texts, owners = units(docs, chunker)
        for name, encoder in encoders.items():
            vectors = [encoder.encode_document(t) for t in texts]
            index = IdfIndex(vectors)
            if args.check_qdrant:
                check_with_qdrant(
                    encoder, vectors, index, list(split.queries.values())[: args.check_qdrant]
                )
            metrics = evaluate(split, ranker(encoder, index, owners))
            results.setdefault(layout, {})[name] = {
                "ndcg@10": round(metrics["ndcg@10"], 4),
                "recall@100": round(metrics["recall@100"], 4),
                "units": len(texts),
            }
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"SciFact test, {len(split.queries)} queries, {len(docs)} documents "
        f"({time.perf_counter() - started:.0f} s)"
        + (
            f"; rankings equal embedded Qdrant's on {args.check_qdrant}"
            if args.check_qdrant
            else ""
        )
    )
    print(f"{'units':<24}{'encoder':<28}{'nDCG@10':>9}{'recall@100':>12}")
    for layout, by_encoder in results.items():
        for name, m in by_encoder.items():
            label = f"{layout} ({int(m['units'])})"
            print(f"{label:<24}{name:<28}{m['ndcg@10']:>9.4f}{m['recall@100']:>12.4f}")


if __name__ == "__main__":
    main()

"""Ingestion throughput: ragtune vs bare `SentenceTransformer.encode` vs LangChain, one run.

All three embed the same chunk texts with the same model and batch size. Bare encode is the
ceiling (embedding is the work); ragtune's figure includes loading, chunking, BM25 vectors
and writing to embedded Qdrant on disk; LangChain's `QdrantVectorStore.from_texts` writes
dense vectors only.

    python -m bench.ingest [--corpus ../shared/data/scifact/corpus.jsonl] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ingest.chunking import Chunker
from ingest.documents import LoadReport
from ingest.embedder import Embedder
from ingest.loaders import discover, load
from ingest.pipeline import Ingester, IngestOptions
from ingest.sparse import SparseEncoder
from ingest.store import open_store
from ragtune.settings import Settings

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared/data/scifact/corpus.jsonl"


def _limited_corpus(corpus: Path, limit: int | None, workdir: Path) -> Path:
    if limit is None:
        return corpus
    lines = corpus.read_text(encoding="utf-8").splitlines()[:limit]
    path = workdir / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _langchain_embeddings(embedder: Embedder) -> Any:
    from langchain_core.embeddings import Embeddings

    class SameModel(Embeddings):
        """LangChain's interface over the very model ragtune uses."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.encode(texts).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return SameModel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus} (pass --corpus)")

    settings = Settings()
    embedder = Embedder.load(settings.embedding)
    sparse = SparseEncoder(settings.sparse)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus = _limited_corpus(args.corpus, args.limit, workdir)
        chunker = Chunker(embedder.tokenizer, embedder.token_limit, settings.chunking)
        report = LoadReport()
        docs = list(load(discover([corpus]), report))
        texts = [c.embed_text for d in docs for c in chunker.split(d)]
        embedder.encode(texts[:64])  # warm-up, shared by all three

        started = time.perf_counter()
        embedder.encode(texts)
        bare_s = time.perf_counter() - started

        ragtune_store = open_store(settings.model_copy(update={"data_dir": workdir}))
        ingester = Ingester(ragtune_store, embedder, sparse, chunker, settings.ingest.write_batch)
        started = time.perf_counter()
        result = ingester.run([corpus], IngestOptions(collection="bench"))
        ragtune_s = time.perf_counter() - started
        ragtune_store.close()
        assert result.chunks_written == len(texts), (result.chunks_written, len(texts))

        from langchain_qdrant import QdrantVectorStore

        started = time.perf_counter()
        store = QdrantVectorStore.from_texts(
            texts,
            _langchain_embeddings(embedder),
            path=str(workdir / "langchain-qdrant"),
            collection_name="bench",
            batch_size=settings.ingest.write_batch,
        )
        langchain_s = time.perf_counter() - started
        store.client.close()

    n = len(texts)
    rates = {"bare_encode": n / bare_s, "ragtune": n / ragtune_s, "langchain": n / langchain_s}
    figures = {
        "documents": len(docs),
        "chunks": n,
        "chunks_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ragtune_vs_bare": round(rates["ragtune"] / rates["bare_encode"], 3),
        "ragtune_vs_langchain": round(rates["ragtune"] / rates["langchain"], 3),
        "seconds": {
            "bare_encode": round(bare_s, 1),
            "ragtune": round(ragtune_s, 1),
            "langchain": round(langchain_s, 1),
        },
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{len(docs)} documents, {n} chunks, batch size {embedder.batch_size}")
    print(f"{'':<24}{'chunks/s':>10}{'seconds':>10}")
    for key, label in (
        ("bare_encode", "bare encode (limit)"),
        ("ragtune", "ragtune ingest"),
        ("langchain", "LangChain from_texts"),
    ):
        print(f"{label:<24}{rates[key]:>10.1f}{figures['seconds'][key]:>10.1f}")  # type: ignore[index]
    print(f"ragtune / bare encode: {figures['ragtune_vs_bare']:.3f}  (target >= 0.9)")
    print(f"ragtune / LangChain:   {figures['ragtune_vs_langchain']:.3f}")


if __name__ == "__main__":
    main()

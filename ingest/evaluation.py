"""Retrieval evaluation on BEIR-format data: nDCG@10, recall@10, recall@100, MRR@10."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragtune.errors import InvalidInput, NotFound

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class BeirSplit:
    queries: dict[str, str]
    qrels: Qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirSplit:
    """Read `queries.jsonl` and `qrels/<split>.tsv`; only judged queries are kept."""
    root = Path(directory)
    queries_path, qrels_path = root / "queries.jsonl", root / "qrels" / f"{split}.tsv"
    for path in (queries_path, qrels_path):
        if not path.is_file():
            raise NotFound(
                f"{path} not found: --beir must name a BEIR folder "
                f"(queries.jsonl and qrels/{split}.tsv)"
            )
    qrels: Qrels = {}
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            # BEIR's qrels use CRLF line endings.
            parts = line.rstrip("\r\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                if not line.strip():
                    continue
                raise InvalidInput(f"{qrels_path}:{lineno}: expected 3 tab-separated columns")
            qid, doc_id, score = parts
            try:
                qrels.setdefault(qid, {})[doc_id] = int(score)
            except ValueError as exc:
                raise InvalidInput(
                    f"{qrels_path}:{lineno}: score {score!r} is not an integer"
                ) from exc
    queries: dict[str, str] = {}
    with queries_path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                qid = str(record["_id"])
                text = str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidInput(f"{queries_path}:{lineno}: not a BEIR query ({exc})") from exc
            if qid in qrels:
                queries[qid] = text
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise InvalidInput(
            f"{len(missing)} judged queries have no text in {queries_path}, e.g. {missing[:3]}"
        )
    return BeirSplit(queries=queries, qrels=qrels)


def ndcg_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains, as trec_eval (and so BEIR) computes it."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(split: BeirSplit, rank: Callable[[str], list[str]]) -> dict[str, float]:
    """Mean metrics over the split's queries; `rank` returns document ids, best first."""
    totals = {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    for qid, text in split.queries.items():
        ranked = rank(text)
        judged = split.qrels[qid]
        totals["ndcg@10"] += ndcg_at(ranked, judged, 10)
        totals["recall@10"] += recall_at(ranked, judged, 10)
        totals["recall@100"] += recall_at(ranked, judged, 100)
        totals["mrr@10"] += mrr_at(ranked, judged, 10)
    n = len(split.queries)
    return {name: (value / n if n else 0.0) for name, value in totals.items()}

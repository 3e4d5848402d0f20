from __future__ import annotations

import math
from pathlib import Path

import pytest

from ingest.evaluation import evaluate, load_beir, mrr_at, ndcg_at, recall_at
from ragtune.errors import InvalidInput, NotFound


def test_ndcg_matches_a_hand_computation() -> None:
    judged = {"a": 1, "b": 1}
    # Relevant at ranks 2 and 3: DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3).
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at(["x", "a", "b"], judged, 10) == pytest.approx(expected)
    assert ndcg_at(["a", "b"], judged, 10) == pytest.approx(1.0)
    assert ndcg_at(["x"] * 10 + ["a"], judged, 10) == 0.0


def test_recall_and_mrr() -> None:
    judged = {"a": 1, "b": 1, "c": 0}
    assert recall_at(["a", "c", "x"], judged, 10) == 0.5
    assert recall_at(["x", "a"], judged, 1) == 0.0
    assert mrr_at(["c", "x", "b"], judged, 10) == pytest.approx(1 / 3)
    assert mrr_at(["x"] * 10 + ["a"], judged, 10) == 0.0


def _beir(tmp_path: Path, qrels: str) -> Path:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "1", "text": "first"}\n{"_id": "2", "text": "second"}\n{"_id": "3", "text": "x"}\n'
    )
    (tmp_path / "qrels" / "test.tsv").write_bytes(qrels.encode())
    return tmp_path


def test_load_beir_handles_crlf_and_keeps_only_judged_queries(tmp_path: Path) -> None:
    split = load_beir(_beir(tmp_path, "query-id\tcorpus-id\tscore\r\n1\td1\t1\r\n2\td2\t1\r\n"))
    assert split.queries == {"1": "first", "2": "second"}
    assert split.qrels == {"1": {"d1": 1}, "2": {"d2": 1}}


def test_evaluate_averages_over_queries(tmp_path: Path) -> None:
    split = load_beir(_beir(tmp_path, "1\td1\t1\n2\td2\t1\n"))
    metrics = evaluate(split, lambda text: ["d1"] if text == "first" else ["zz", "d2"])
    assert metrics["recall@10"] == 1.0
    assert metrics["mrr@10"] == pytest.approx(0.75)
    assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}


def test_bad_beir_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"queries\.jsonl"):
        load_beir(tmp_path)
    with pytest.raises(InvalidInput, match=r"test\.tsv:1: expected 3 tab-separated columns"):
        load_beir(_beir(tmp_path, "1 d1 1\n"))

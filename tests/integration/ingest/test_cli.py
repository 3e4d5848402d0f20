"""The `ragtune` command end to end, in-process, on an embedded on-disk Qdrant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from tests.fixtures.corpus import write_jsonl, write_tree


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))


def test_ingest_then_rerun_then_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tree(tmp_path / "c")
    assert main(["ingest", str(root), "--collection", "kb"]) == 0
    out = capsys.readouterr().out
    assert "collection 'kb': 5 added, 0 replaced, 0 removed, 0 unchanged documents" in out
    assert (tmp_path / "data" / "qdrant").is_dir()

    assert main(["ingest", str(root), "--collection", "kb"]) == 0
    assert "nothing to write; all 5 documents are unchanged" in capsys.readouterr().out

    assert main(["search", "high tide harbour", "--collection", "kb", "--top-k", "2"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()  # piped: one line a row
    assert header.split() == ["#", "SCORE", "SOURCE", "CHUNK", "TEXT"]
    assert first.split()[0] == "1"
    assert "tides.html" in first
    assert second.split()[0] == "2"

    assert (
        main(["search", "tide", "--collection", "kb", "--json", "--filter", "file_type=txt"]) == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert hits
    assert {h["file_type"] for h in hits} == {"txt"}


def test_dry_run_lists_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "alpha"}])
    assert main(["ingest", str(path), "--collection", "kb", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out
    assert "chunks would be written" in out
    assert "  add: a" in out


def test_malformed_lines_are_listed_and_exit_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "alpha"}\n{oops\n')
    assert main(["ingest", str(path), "--collection", "kb"]) == 1
    out = capsys.readouterr().out
    assert "1 malformed JSONL lines:" in out
    assert f"{path}:2: invalid JSON" in out


def test_skipped_files_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (root / "empty.md").write_text("")
    (root / "image.png").write_bytes(b"\x89PNG")
    assert main(["ingest", str(root), "--collection", "kb"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 files:" in out
    assert "empty.md: empty file" in out
    assert "ignored files of unsupported types: .png x1" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "/no/such/path"], "no such file or directory: /no/such/path"),
        (["ingest", ".", "--collection", "bad/name"], "collection name 'bad/name' is not allowed"),
        (["search", "x", "--collection", "missing"], "collection 'missing' does not exist"),
        (["search", "x", "--filter", "oops"], "filter 'oops' is not of the form key=value"),
        (["eval", "retrieval", "--beir", "/no/such"], "queries.jsonl not found"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_CHUNKING__OVERLAP", "-3")
    assert main(["search", "x"]) == 2
    assert "RAGTUNE_CHUNKING__OVERLAP" in capsys.readouterr().err


def test_chunk_size_above_the_embedder_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_CHUNKING__SIZE", "1000")
    assert main(["ingest", str(write_tree(tmp_path / "c"))]) == 2
    assert "RAGTUNE_CHUNKING__SIZE to at most 254" in capsys.readouterr().err


def test_changed_settings_are_refused_naming_reindex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tree(tmp_path / "c")
    assert main(["ingest", str(root)]) == 0
    monkeypatch.setenv("RAGTUNE_CHUNKING__SIZE", "100")
    assert main(["ingest", str(root)]) == 1
    assert "--reindex" in capsys.readouterr().err
    assert main(["ingest", str(root), "--reindex"]) == 0
    assert "was rebuilt (--reindex)" in capsys.readouterr().out


def test_eval_retrieval_prints_json_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(
        beir / "corpus.jsonl",
        [
            {"_id": "apple", "title": "Apples", "text": "Apples grow on trees in orchards."},
            {"_id": "tide", "title": "Tides", "text": "The moon pulls the ocean into tides."},
            {"_id": "bread", "title": "Bread", "text": "Knead dough and let it rise."},
        ],
    )
    write_jsonl(
        beir / "queries.jsonl",
        [
            {"_id": "q1", "text": "what makes ocean tides"},
            {"_id": "q2", "text": "fruit from orchard trees"},
        ],
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\nq1\ttide\t1\r\nq2\tapple\t1\r\n"
    )
    assert main(["ingest", str(beir / "corpus.jsonl"), "--collection", "mini"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "retrieval",
                "--beir",
                str(beir),
                "--collection",
                "mini",
                "--mode",
                "hybrid",
                "--json",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}
    assert metrics["mrr@10"] == 1.0

    assert main(["eval", "retrieval", "--beir", str(beir), "--collection", "mini"]) == 0
    captured = capsys.readouterr()
    title, header, *rows = captured.out.splitlines()
    assert title == "collection 'mini', mode hybrid, 2 test queries"
    assert header.split() == ["METRIC", "VALUE"]
    assert {row.split()[0]: float(row.split()[1]) for row in rows} == metrics
    assert not captured.err  # no progress bar when stderr is not a terminal


def test_unreachable_qdrant_server_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_QDRANT__URL", "http://127.0.0.1:9")
    assert main(["search", "anything"]) == 1
    err = capsys.readouterr().err
    assert "Qdrant at http://127.0.0.1:9 did not answer" in err
    assert "Traceback" not in err


def test_an_ingest_past_the_index_threshold_builds_the_index_before_it_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tree(tmp_path / "c")
    monkeypatch.setenv("RAGTUNE_QDRANT__INDEX_THRESHOLD", "1000")
    assert main(["ingest", str(root), "--collection", "small"]) == 0
    # Below the threshold: exact search, no index built.
    assert "building the vector index" not in capsys.readouterr().err

    monkeypatch.setenv("RAGTUNE_QDRANT__INDEX_THRESHOLD", "2")
    assert main(["ingest", str(root), "--collection", "kb"]) == 0
    err = capsys.readouterr().err
    assert "building the vector index of 'kb'" in err
    assert "indexed 'kb' in" in err

    assert main(["store", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["store"] == "edge"
    by_name = {c["collection"]: c for c in status["collections"]}
    assert set(by_name) == {"small", "kb"}
    assert by_name["kb"]["points"] == by_name["small"]["points"] > 2
    assert main(["search", "high tide harbour", "--collection", "kb", "--top-k", "1"]) == 0
    assert "tides.html" in capsys.readouterr().out

"""The suites shipped in evals/: their cases build from ../shared/data (deterministic, split
without overlap), every suite loads against the shipped routes, and a `--limit 2` run of each on
the tiny model completes and writes its report (the tiny model's answers are not the point)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from evals.build import build
from evaluation.suite import load_suite
from ragtune.settings import Settings
from service.routes.loader import DEFAULT_ROUTES, load_routes
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
SUITES = ("reviews-json", "squad-qa", "scifact-retrieval")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped suites, with the cases the generator writes from ../shared/data."""
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the shared data folder {DATA} is missing")
        pytest.skip(f"no shared data folder at {DATA}")
    out = tmp_path_factory.mktemp("evals")
    build(DATA, out)
    for suite in SUITES:
        shutil.copy(REPO / "evals" / suite / "suite.yaml", out / suite / "suite.yaml")
    return out


def test_the_generator_is_deterministic(built: Path, tmp_path: Path) -> None:
    build(DATA, tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert len(written) == 8
    for path in written:
        assert (tmp_path / path).read_bytes() == (built / path).read_bytes(), path


@pytest.mark.parametrize("name", SUITES)
def test_every_shipped_suite_loads_on_the_shipped_routes(built: Path, name: str) -> None:
    suite = load_suite(built / name / "suite.yaml")
    routes = load_routes(DEFAULT_ROUTES)
    for strategy in suite.strategies:
        assert strategy.route in routes, (name, strategy.name)
        assert routes[strategy.route].kind == "chat"
    expected = {"reviews-json": 397, "squad-qa": 319, "scifact-retrieval": 300}
    assert len(suite.case_list) == expected[name]
    assert suite.gates, "a shipped suite gates on something"


def test_few_shot_examples_are_never_scored_cases(built: Path) -> None:
    cases = {c["vars"]["text"] for c in _rows(built / "reviews-json" / "cases.jsonl")}
    pool = {r["text"] for r in _rows(built / "reviews-json" / "train.jsonl")}
    assert cases
    assert pool
    assert not cases & pool
    # The first cases (what --limit takes) are balanced over labels.
    first = [
        c["vars"]["label_json"]["sentiment"]
        for c in _rows(built / "reviews-json" / "cases.jsonl")[:20]
    ]
    assert first.count("positive") == first.count("negative") == 10


def test_squad_cases_are_split_by_paragraph(built: Path) -> None:
    cases = _rows(built / "squad-qa" / "cases.jsonl")
    rest = _rows(built / "squad-qa" / "train.jsonl")
    assert len(cases) + len(rest) == 950
    assert not {c["vars"]["paragraph"] for c in cases} & {r["vars"]["paragraph"] for r in rest}
    corpus = _rows(built / "squad-qa" / "corpus" / "paragraphs.jsonl")
    assert {d["_id"] for d in corpus} >= {c["vars"]["paragraph"] for c in cases}
    for case in cases:
        (spec,) = case["assert"]
        expected = "refusal" if case["vars"]["is_impossible"] else "containment"
        assert spec["metric"] == expected


def test_the_adapter_training_sets_hold_no_scored_case(built: Path) -> None:
    scored = {c["vars"]["text"] for c in _rows(built / "reviews-json" / "cases.jsonl")}
    chats = _rows(built / "reviews-json" / "adapter-train.jsonl")
    assert len(chats) == 200
    users = [c["messages"][0]["content"] for c in chats]
    assert not set(users) & scored
    answers = [json.loads(c["messages"][1]["content"])["sentiment"] for c in chats]
    assert answers.count("positive") == answers.count("negative") == 100

    held_out = {c["id"] for c in _rows(built / "squad-qa" / "cases.jsonl")}
    questions = _rows(built / "squad-qa" / "adapter-cases.jsonl")
    assert len(questions) == 100
    assert not {q["id"] for q in questions} & held_out
    assert sum(q["answer"] == "I don't know" for q in questions) == 50


def _ingest_subset(settings: Settings, corpus: Path, ids: set[str], collection: str) -> None:
    """The documents `ids` (what the first cases need) and a few others, as one JSONL file."""
    rows = _rows(corpus)
    keep = [r for r in rows if str(r["_id"]) in ids]
    keep += [r for r in rows[:20] if str(r["_id"]) not in ids]
    folder = settings.data_dir.parent / f"{collection}-corpus"
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    ingest_corpus(settings, folder, collection)


@pytest.mark.parametrize("name", SUITES)
def test_a_limited_run_of_each_suite_completes_on_the_tiny_model(
    built: Path,
    name: str,
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The shipped routes (no routes file set), on a data dir of the test's own.
    settings = api_settings(tmp_path, tiny_model.path)
    cases = _rows(built / name / "cases.jsonl")[:2]
    if name == "squad-qa":
        ids = {c["vars"]["paragraph"] for c in cases}
        _ingest_subset(settings, built / name / "corpus" / "paragraphs.jsonl", ids, "squad")
    elif name == "scifact-retrieval":
        ids = {doc for c in cases for doc in c["assert"][0]["value"]}
        _ingest_subset(settings, DATA / "scifact" / "corpus.jsonl", ids, "scifact")
        # Ten abstracts overflow the tiny model's 2,048-token context (its 512-token vocabulary
        # spells words out): the shipped routes with a smaller budget for the sources.
        routes = yaml.safe_load(DEFAULT_ROUTES.read_text(encoding="utf-8"))
        routes["routes"]["scifact"]["retrieval"]["context_tokens"] = 1500
        routes_file = tmp_path / "routes.yaml"
        routes_file.write_text(yaml.safe_dump(routes))
        monkeypatch.setenv("RAGTUNE_API__ROUTES_FILE", str(routes_file))
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    monkeypatch.setenv("RAGTUNE_LLM__DTYPE", "float32")
    # The shipped routes' adapters (trained/ holds them for the default model): a real LoRA
    # adapter of the tiny model answers under each alias, as `make run` would register them.
    for alias in ("review-json", "grounded-qa"):
        path = str(tiny_model.adapters["alpha"])
        assert main(["adapters", "register", path, "--name", alias, "--alias", alias]) == 0
    out = tmp_path / "report"

    code = main(
        ["eval", "run", str(built / name / "suite.yaml"), "--limit", "2", "--out", str(out)]
    )

    assert code in (0, 1), capsys.readouterr().err
    results = _rows(out / "results.jsonl")
    strategies = load_suite(built / name / "suite.yaml").strategies
    assert len(results) == 2 * len(strategies)
    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["strategies"]) == [s.name for s in strategies]
    assert (out / "report.html").stat().st_size > 0
    # The adapter strategies were answered by the adapter, the others by the base model.
    answered = {r["strategy"]: r["output"]["adapter"] for r in results}
    expected_adapters = {"adapter": "review-json@", "rag+adapter": "grounded-qa@"}
    for strategy, adapter in answered.items():
        prefix = expected_adapters.get(strategy)
        assert (adapter or "").startswith(prefix) if prefix else adapter is None, strategy
    if name == "scifact-retrieval":
        # Retrieval answered each case, whatever the model says.
        for r in results:
            assert r["output"]["retrieved"], r["strategy"]
            assert r["assertions"][0]["metric"] == "hit@10"

"""`--url`: the same suite against a served app gives what the in-process run gives (the
congruence check), a strategy the server refuses stops the run before any case (the server's
dry run), an edited routes file is not answered from the cache, and a server that is not there
stops the run with one clear error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.local_server import serve_in_thread
from cli.main import main
from engine.backend import Backend
from engine.types import GenerationRequest
from engine.vllm_cpu import free_port
from evaluation.assertions import evaluate
from evaluation.results import AssertionSpec, CaseResult
from evaluation.runner import RunOptions, run_suite
from evaluation.suite import load_suite
from evaluation.targets import HttpTarget, InProcessTarget, Target
from ragtune.settings import Settings
from service.app import create_app
from tests.fixtures.api import ingest_corpus
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.evaluation.conftest import SuiteWriter, World


@pytest.fixture
def env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    return world


def _results(folder: Path) -> list[tuple[Any, ...]]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return [
        (
            r["strategy"],
            r["case_id"],
            r["output"]["answer"],
            [(s["doc_id"], s["chunk_index"]) for s in r["output"]["retrieved"]],
            r["output"]["adapter"],
            r["output"]["prompt_tokens"],
            [a["passed"] for a in r["assertions"]],
            r["passed"],
        )
        for r in rows
    ]


def test_url_gives_the_in_process_results(
    env: World, write_suite: SuiteWriter, tmp_path: Path
) -> None:
    suite = write_suite(
        **{
            "assert": [
                {"type": "not-contains", "value": "zzzqqq-never"},
                {"type": "word-count", "value": {"min": 1, "max": 3}},
                {"type": "cites"},
            ]
        }
    )
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["eval", "run", str(suite), "--out", str(local), "--no-cache"]) in (0, 1)
    with serve_in_thread(create_app(env.settings)) as url:
        code = main(["eval", "run", str(suite), "--url", url, "--out", str(remote), "--no-cache"])
    assert code in (0, 1)
    assert _results(remote) == _results(local)
    assert len(_results(local)) == 9


def test_url_refusing_a_strategy_stops_the_run_before_any_case(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = ScriptedBackend("ok")
    refused = {
        "odd": {"route": "chat", "adapter": "nope"},
        "wide": {"route": "chat", "top_k": 9},
        "hot": {"route": "chat-plain", "top_k": 2},
    }
    with serve_in_thread(create_app(env.settings, lambda _: [backend])) as url:
        for name, strategy in refused.items():
            suite = write_suite(
                strategies=[{"name": "plain", "route": "chat-plain"}, {"name": name, **strategy}]
            )
            assert main(["eval", "run", str(suite), "--url", url, "--no-cache"]) == 2
        missing = write_suite(strategies=[{"name": "gone", "route": "nowhere"}], gates=[])
        assert main(["eval", "run", str(missing), "--url", url]) == 2
        # The server checked each strategy with a dry run: nothing was generated.
        assert backend.requests == []
    err = capsys.readouterr().err
    assert "strategy 'odd': adapter: route 'chat' allows" in err
    assert "strategy 'wide': top_k: route 'chat' allows at most 5" in err
    assert "strategy 'hot': top_k: route 'chat-plain' does not retrieve" in err
    assert "strategy 'gone': route:" in err


def test_a_dry_run_names_the_adapter_version_that_would_answer(env: World) -> None:
    ref = env.point_alias("beta")
    backend = ScriptedBackend("ok")
    with serve_in_thread(create_app(env.settings, lambda _: [backend])) as url:
        body = {"route": "chat-tuned", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{url}/v1/chat", json=body | {"dry_run": True}).json()
    assert (answer["adapter_alias"], answer["adapter"]) == ("tuned", ref)
    assert backend.requests == []


def _cached(folder: Path) -> list[bool]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return [r["cached"] for r in rows]


def test_an_edited_routes_file_is_not_answered_from_the_cache(
    env: World, write_suite: SuiteWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Served again on the same URL, as a restarted server would be.
    port = free_port()
    monkeypatch.setattr("engine.vllm_cpu.free_port", lambda: port)
    suite = str(write_suite(strategies=[{"name": "plain", "route": "chat-plain"}], gates=[]))
    backend = ScriptedBackend("ok")
    with serve_in_thread(create_app(env.settings, lambda _: [backend])) as url:
        assert main(["eval", "run", suite, "--url", url, "--out", str(tmp_path / "a")]) == 0
        assert main(["eval", "run", suite, "--url", url, "--out", str(tmp_path / "b")]) == 0
    assert _cached(tmp_path / "a") == [False] * 3
    assert _cached(tmp_path / "b") == [True] * 3
    routes_file = env.settings.api.routes_file
    assert routes_file is not None
    routes = yaml.safe_load(routes_file.read_text())
    routes["routes"]["chat-plain"]["prompt"]["user"] = "Briefly: {question}"
    routes_file.write_text(yaml.safe_dump(routes))
    with serve_in_thread(create_app(env.settings, lambda _: [backend])) as url:
        assert main(["eval", "run", suite, "--url", url, "--out", str(tmp_path / "c")]) == 0
    assert _cached(tmp_path / "c") == [False] * 3
    assert len(backend.requests) == 6


# Longer than a snippet (240 characters), with words near its end found nowhere before them.
GLACIERS = (
    "Glacier survey. The survey team walked the glacier every morning of the season, noting "
    "the snow line, the crevasses opening near the icefall, and the meltwater streams that "
    "braided across the lower tongue. Their instruments were simple: stakes drilled into the "
    "ice, a theodolite, and notebooks kept dry in oilcloth. Late in the season they cored the "
    "moraine and counted varves, dating each layer by tephrochronology and isotopic ratios."
)


def _tail_of_the_longest_source(request: GenerationRequest) -> str:
    """The last words of the longest packed source: past its snippet's 240 characters."""
    longest = max(request.messages[0].content.split("\n\n"), key=len)
    return " ".join(longest.split()[-8:])


def _run(target: Target, suite: Path, settings: Settings) -> list[CaseResult]:
    async def go() -> list[CaseResult]:
        await target.start()  # type: ignore[attr-defined]
        try:
            opts = RunOptions(progress=False, use_cache=False)
            return (await run_suite(load_suite(suite), settings, opts, target)).results
        finally:
            await target.aclose()

    return asyncio.run(go())


def test_context_overlap_sees_the_sources_whole_text_over_url(
    world: World, write_suite: SuiteWriter
) -> None:
    docs = world.settings.data_dir.parent / "more-docs"
    docs.mkdir()
    (docs / "glaciers.txt").write_text(GLACIERS)
    ingest_corpus(world.settings, docs)
    backend = ScriptedBackend(_tail_of_the_longest_source)

    def backends(settings: Settings) -> Sequence[Backend]:
        return [backend]

    overlap = {"type": "context-overlap", "threshold": 0.9}
    suite = write_suite(
        [{"id": "glacier", "vars": {"q": "How did the glacier survey team date the moraine?"}}],
        strategies=[{"name": "rag", "route": "chat"}],
        gates=[],
        **{"assert": [overlap]},
    )
    [local] = _run(InProcessTarget(world.settings, backends), suite, world.settings)
    with serve_in_thread(create_app(world.settings, backends)) as url:
        [remote] = _run(HttpTarget(url), suite, world.settings)
    assert local.output is not None
    assert remote.output is not None
    assert "tephrochronology" in remote.output.answer
    assert remote.output.context_text == local.output.context_text
    assert remote.assertions[0].score == local.assertions[0].score == 1.0
    # The snippets alone would have scored it lower: the answer quotes past them.
    snippets = "\n\n".join(s.snippet for s in remote.output.retrieved)
    alone = remote.output.model_copy(update={"context_text": snippets})
    assert evaluate(AssertionSpec.model_validate(overlap), alone, remote.vars).score < 0.5


def test_an_unreachable_server_stops_with_one_error(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["eval", "run", str(write_suite()), "--url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ragtune: error: ragtune at {url} did not answer")
    assert len(err.splitlines()) == 1

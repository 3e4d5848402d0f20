"""The runner in-process: every strategy x case through the app's chat service, the cache in
front, the assertions after; concurrency, cancellation, and strategies refused up front."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.local_server import serve_in_thread
from engine.backend import Backend
from engine.types import GenerationRequest
from evaluation.runner import Outcome, RunOptions, run_suite
from evaluation.suite import load_suite
from evaluation.targets import InProcessTarget
from ragtune.errors import InvalidInput
from ragtune.settings import Settings
from service.app import create_app
from tests.fixtures.api import api_settings
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.evaluation.conftest import SuiteWriter, World


def _echo(request: GenerationRequest) -> str:
    if "grading output" in request.messages[0].content:
        return '{"reason": "it echoes", "pass": true, "score": 0.75}'
    return f"echo: {request.messages[-1].content}"


def run(
    world: World,
    suite: Path,
    backend: ScriptedBackend | None = None,
    **options: Any,
) -> Outcome:
    """One run of `suite` on a fresh in-process target (scripted when `backend` is given)."""

    def backends(settings: Settings) -> Sequence[Backend]:
        assert backend is not None
        return [backend]

    async def go() -> Outcome:
        target = InProcessTarget(world.settings, backends if backend else None)
        await target.start()
        try:
            opts = RunOptions(progress=False, **options)
            return await run_suite(load_suite(suite), world.settings, opts, target)
        finally:
            await target.aclose()

    return asyncio.run(go())


def test_every_strategy_answers_every_case_through_the_chat_path(
    world: World, write_suite: SuiteWriter
) -> None:
    backend = ScriptedBackend(_echo)
    outcome = run(world, write_suite(), backend)
    assert [(r.strategy, r.case_id) for r in outcome.results] == [
        (s, f"q{i}") for s in ("plain", "rag", "tuned") for i in range(3)
    ]
    assert all(r.passed and r.error is None and not r.cached for r in outcome.results)
    by = {(r.strategy, r.case_id): r.output for r in outcome.results}
    plain, rag, tuned = by["plain", "q0"], by["rag", "q0"], by["tuned", "q0"]
    assert plain is not None
    assert rag is not None
    assert tuned is not None
    assert plain.answer == "echo: What are comets made of?"
    assert (plain.retrieved, plain.adapter) == ([], None)
    # The strategy's top_k reached retrieval, and the packed sources came back.
    assert len(rag.retrieved) == 2
    assert rag.context_text.startswith("[1] ")
    assert str(tuned.adapter).startswith("tuned@")
    assert plain.prompt_tokens > 0
    assert plain.completion_tokens == 6  # the scripted engine counts words
    assert outcome.summary["strategies"]["rag"]["pass_rate"] == 1.0
    assert outcome.summary["gates"][0]["passed"] is True


def test_a_rerun_is_answered_from_the_cache(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo)
    suite = write_suite()
    first = run(world, suite, backend)
    assert len(backend.requests) == 9
    second = run(world, suite, backend)
    assert len(backend.requests) == 9  # no generation at all
    assert second.calls == 0
    assert all(r.cached for r in second.results)
    assert [r.output for r in second.results] == [r.output for r in first.results]


def test_a_changed_case_reruns_only_that_case(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo)
    cases = [{"id": f"q{i}", "vars": {"q": f"question {i}"}} for i in range(3)]
    run(world, write_suite(cases), backend)
    cases[1]["vars"] = {"q": "a new question"}
    backend.requests.clear()
    again = run(world, write_suite(cases), backend)
    assert [r.messages[-1].content for r in backend.requests] == ["a new question"] * 3
    assert [r.case_id for r in again.results if not r.cached] == ["q1"] * 3


def test_a_new_adapter_version_behind_the_alias_invalidates(
    world: World, write_suite: SuiteWriter
) -> None:
    backend = ScriptedBackend(_echo)
    suite = write_suite()
    run(world, suite, backend)
    new_ref = world.point_alias("beta")
    backend.requests.clear()
    again = run(world, suite, backend)
    assert {r.adapter for r in backend.requests} == {new_ref}
    assert len(backend.requests) == 3
    rerun = [r for r in again.results if not r.cached]
    assert {r.strategy for r in rerun} == {"tuned"}
    assert all(r.output is not None and r.output.adapter == new_ref for r in rerun)


def test_no_cache_neither_reads_nor_writes(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo)
    suite = write_suite()
    run(world, suite, backend, use_cache=False)
    run(world, suite, backend, use_cache=False)
    assert len(backend.requests) == 18
    run(world, suite, backend)  # nothing was written: all of it runs again
    assert len(backend.requests) == 27


def test_latency_assertions_are_never_answered_from_the_cache(
    world: World, write_suite: SuiteWriter
) -> None:
    backend = ScriptedBackend(_echo)
    cases = [
        {"id": "timed", "vars": {"q": "one"}, "assert": [{"type": "latency", "threshold": 60000}]},
        {"id": "plain", "vars": {"q": "two"}},
    ]
    suite = write_suite(cases, strategies=[{"name": "plain", "route": "chat-plain"}])
    run(world, suite, backend)
    again = run(world, suite, backend)
    assert [(r.case_id, r.cached) for r in again.results] == [("timed", False), ("plain", True)]
    assert again.results[0].passed


def test_limit_and_strategy_filter(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo)
    outcome = run(world, write_suite(), backend, limit=2, strategies=["rag"])
    assert [(r.strategy, r.case_id) for r in outcome.results] == [("rag", "q0"), ("rag", "q1")]
    # The gate is on a strategy that did not run: left out, not failed.
    assert outcome.summary["gates"] == []
    assert list(outcome.summary["strategies"]) == ["rag"]


@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        ({"name": "odd", "route": "chat", "adapter": "nope"}, "adapter"),
        ({"name": "odd", "route": "chat", "top_k": 50}, "top_k"),
        ({"name": "odd", "route": "chat-plain", "top_k": 2}, "top_k"),
        ({"name": "odd", "route": "missing"}, "route"),
        ({"name": "odd", "route": "summarize"}, "summarize route"),
    ],
)
def test_a_strategy_the_route_refuses_stops_before_any_case(
    world: World, write_suite: SuiteWriter, strategy: dict[str, Any], field: str
) -> None:
    backend = ScriptedBackend(_echo)
    suite = write_suite(strategies=[{"name": "plain", "route": "chat-plain"}, strategy])
    with pytest.raises(InvalidInput, match=rf"strategy 'odd'.*{field}"):
        run(world, suite, backend)
    assert backend.requests == []


def test_llm_rubric_is_graded_by_the_judge_route(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo)
    suite = write_suite(
        strategies=[{"name": "plain", "route": "chat-plain"}],
        judge={"route": "chat-plain"},
        **{"assert": [{"type": "llm-rubric", "value": "echoes the question", "threshold": 0.5}]},
    )
    outcome = run(world, suite, backend)
    verdicts = [r.assertions[0] for r in outcome.results]
    assert [(v.passed, v.score, v.reason) for v in verdicts] == [(True, 0.75, "it echoes")] * 3
    assert outcome.summary["strategies"]["plain"]["metrics"] == {"llm-rubric": 0.75}


def test_a_failed_call_is_the_case_s_error_and_the_run_goes_on(
    world: World, write_suite: SuiteWriter
) -> None:
    def flaky(request: GenerationRequest) -> str:
        if "Voyager" in request.messages[-1].content:
            raise InvalidInput("messages: this one is refused")
        return "fine"

    outcome = run(
        world,
        write_suite(strategies=[{"name": "plain", "route": "chat-plain"}]),
        ScriptedBackend(flaky),
    )
    errors = [(r.case_id, r.error) for r in outcome.results if r.error]
    assert errors == [("q2", "messages: this one is refused")]
    failed = outcome.results[2]
    assert failed.passed is False
    assert failed.assertions[0].passed is False
    assert outcome.summary["strategies"]["plain"]["errors"] == 1


def test_cancelling_keeps_what_ran(world: World, write_suite: SuiteWriter) -> None:
    backend = ScriptedBackend(_echo, delay_s=0.2)

    async def go() -> Outcome:
        target = InProcessTarget(world.settings, lambda settings: [backend])
        await target.start()
        try:
            opts = RunOptions(progress=False, concurrency=1)
            task = asyncio.create_task(
                run_suite(load_suite(write_suite()), world.settings, opts, target)
            )
            while len(backend.requests) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            return await task
        finally:
            await target.aclose()

    outcome = asyncio.run(go())
    assert outcome.interrupted
    assert 2 <= len(outcome.results) < 9
    assert all(r.output is not None for r in outcome.results)
    assert outcome.summary["strategies"]["plain"]["cases"] == len(
        [r for r in outcome.results if r.strategy == "plain"]
    )


def test_concurrency_does_not_change_the_results_on_the_tiny_model(
    world: World, write_suite: SuiteWriter
) -> None:
    suite = write_suite()
    one = run(world, suite, use_cache=False, concurrency=1)
    four = run(world, suite, use_cache=False, concurrency=4)

    def seen(outcome: Outcome) -> list[tuple[str, str, str, list[str], bool]]:
        return [
            (
                r.strategy,
                r.case_id,
                r.output.answer if r.output else "",
                [s.doc_id for s in r.output.retrieved] if r.output else [],
                r.passed,
            )
            for r in outcome.results
        ]

    assert seen(one) == seen(four)
    assert all(r.error is None for r in one.results)


def test_llm_rubric_on_an_openai_compatible_judge_with_its_key_from_the_env(
    world: World, write_suite: SuiteWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge is any OpenAI-compatible endpoint: here another ragtune's
    /v1/chat/completions, which wants a key."""
    key = "judge-key-0123456789"
    judge_root = tmp_path / "judge"
    shutil.copytree(world.settings.data_dir.parent, judge_root)
    judge_settings = api_settings(
        judge_root,
        world.model.path,
        api={"routes_file": judge_root / "routes.yaml", "keys": [key]},
    )
    judge_backend = ScriptedBackend('{"reason": "remote", "pass": false, "score": 0.25}')
    monkeypatch.setenv("JUDGE_KEY", key)
    with serve_in_thread(create_app(judge_settings, lambda s: [judge_backend])) as url:
        suite = write_suite(
            strategies=[{"name": "plain", "route": "chat-plain"}],
            judge={"url": url, "model": "chat-plain", "api_key_env": "JUDGE_KEY"},
            **{"assert": [{"type": "llm-rubric", "value": "is great"}]},
        )
        outcome = run(world, suite, ScriptedBackend(_echo), limit=1)
    verdict = outcome.results[0].assertions[0]
    assert (verdict.passed, verdict.score, verdict.reason) == (False, 0.25, "remote")
    # The rubric reached the judge, the answer in it.
    assert "echo: What are comets made of?" in judge_backend.requests[0].messages[-1].content

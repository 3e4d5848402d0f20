"""`ragtune dataset build` on the tiny model's world: each case retrieved and rendered by the
route's own chat service, as serving renders it, with no model weights loaded; bad input gets
one clear line and exit 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from engine.types import ChatMessage
from evaluation.targets import InProcessTarget
from flywheel.examples import render_prompt
from tests.integration.flywheel.conftest import QA_SYSTEM, QUESTIONS, Flywheel


def write_cases(folder: Path, rows: list[Any]) -> Path:
    path = folder / "cases.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def served_prompt(world: Flywheel, question: str) -> tuple[list[dict[str, str]], Any]:
    """What the app itself builds for `question` on route qa: its messages and sources."""
    from service.chat.service import ChatCall

    async def prepare() -> Any:
        target = InProcessTarget(world.settings)
        await target.start()
        try:
            call = ChatCall("qa", [ChatMessage(role="user", content=question)])
            return await target.services.chat.prepare(call)
        finally:
            await target.aclose()

    prepared = asyncio.run(prepare())
    messages = [{"role": m.role, "content": m.content} for m in prepared.request.messages]
    return messages, prepared


def test_build_writes_the_prompt_the_route_serves_with_the_cases_answer(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"question": q, "answer": f"answer {i}", "id": f"c{i}"} for i, q in enumerate(QUESTIONS)
    ]
    cases = write_cases(tmp_path, rows)
    out = tmp_path / "out" / "train.jsonl"
    args = ["dataset", "build", "--route", "qa", "--cases", str(cases), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert f"{len(QUESTIONS)} examples for route qa in {out}" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(QUESTIONS)

    first = lines[2]  # "What is Voyager?": the corpus has a paragraph on it
    served, prepared = served_prompt(env, QUESTIONS[2])
    assert first["messages"] == [*served, {"role": "assistant", "content": "answer 2"}]
    assert first["metadata"] == {
        "id": "c2",
        "route": "qa",
        "sources": [s.hit.id for s in prepared.sources],
    }
    assert first["metadata"]["sources"], "the route retrieved for the case"
    system = first["messages"][0]["content"]
    assert system.startswith(QA_SYSTEM.split("{")[0])
    assert "Voyager probes left the solar system" in system
    # Export renders captures with the same code path: equal to what serving builds.
    assert render_prompt("qa", prepared.spec, QUESTIONS[2], prepared.context) == served


def test_build_refuses_a_route_that_does_not_retrieve(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_cases(tmp_path, [{"question": "q?", "answer": "a"}])
    out = tmp_path / "train.jsonl"
    code = main(
        ["dataset", "build", "--route", "chat-plain", "--cases", str(cases), "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "route 'chat-plain' does not retrieve: dataset build renders the retrieved" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_build_refuses_malformed_cases_naming_their_lines(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_cases(tmp_path, [{"question": "q?", "answer": "a"}, "{oops", {"answer": "a"}])
    out = tmp_path / "train.jsonl"
    assert (
        main(["dataset", "build", "--route", "qa", "--cases", str(cases), "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err
    assert 'line 3: missing "question"' in err
    assert not out.exists()


def test_build_refuses_an_unknown_route(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_cases(tmp_path, [{"question": "q?", "answer": "a"}])
    out = tmp_path / "train.jsonl"
    assert (
        main(["dataset", "build", "--route", "nope", "--cases", str(cases), "--out", str(out)]) == 2
    )
    assert "route 'nope' does not exist" in capsys.readouterr().err


def test_build_needs_no_adapter_behind_the_routes_alias(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first adapter of a route is trained on the data this builds: its alias may not
    exist yet, and serving would refuse the route until it does."""
    env.registry.remove_alias("qa")
    cases = write_cases(tmp_path, [{"question": QUESTIONS[2], "answer": "a probe"}])
    out = tmp_path / "train.jsonl"
    assert (
        main(["dataset", "build", "--route", "qa", "--cases", str(cases), "--out", str(out)]) == 0
    )
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert "Voyager probes" in line["messages"][0]["content"]

"""The whole flywheel on the tiny model: a route captures its traffic over HTTP, users give
feedback, `ragtune dataset export` turns it into training data (the suite's questions held
out), `ragtune adapters retrain` trains, gates and flips the route's alias, and the server
then answers with the new version; when the suite says no, the old version stays."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.audit import AuditLog
from cli.main import main
from tests.fixtures.api import running_app
from tests.integration.flywheel.conftest import QUESTIONS, SUITE_QUESTIONS, Flywheel

PHONE = "555-0199"
CORRECTION = "A probe, launched in 1977."


def chat(client: TestClient, question: str) -> dict[str, Any]:
    body = {"route": "qa", "messages": [{"role": "user", "content": question}]}
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def feedback(
    client: TestClient, answer_id: str, rating: int, correction: str | None = None
) -> None:
    body = {"id": answer_id, "rating": rating, "correction": correction}
    response = client.post("/v1/feedback", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": answer_id, "recorded": True}


def serve_traffic(world: Flywheel) -> list[str]:
    """Questions asked on route qa (the first one twice), with feedback; the answers' ids."""
    asked = [*QUESTIONS, QUESTIONS[0], SUITE_QUESTIONS[0], f"Call {PHONE} about Mars?"]
    with running_app(world.settings) as client:
        ids = [chat(client, q)["id"] for q in asked]
        feedback(client, ids[1], -1)  # bad, uncorrected: left out
        feedback(client, ids[2], -1, correction=CORRECTION)
        feedback(client, ids[3], 1)
    return ids


def exported(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_traffic_becomes_a_better_adapter_or_the_old_one_stays(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = env.alias_target()
    suite = env.write_suite(passing=True)

    # 1. Capture: one line per answer, redacted before it reached the disk.
    ids = serve_traffic(env)
    day = datetime.now(UTC).date().isoformat()
    captured = env.settings.data_dir / "captures" / "qa" / f"{day}.jsonl"
    records = exported(captured)
    assert len(records) == len(QUESTIONS) + 3
    assert [r["id"] for r in records] == ids
    assert PHONE not in captured.read_text()
    assert all(r["adapter"] == old for r in records)

    # 2. Export: feedback applied, the suite's question held out, the duplicate dropped.
    out = tmp_path / "export.jsonl"
    args = ["dataset", "export", "--route", "qa", "--exclude-suite", str(suite), "--out", str(out)]
    assert main(args) == 0
    written = len(QUESTIONS) + 1 - 1  # + the redacted question, - the one rated bad
    assert capsys.readouterr().out.startswith(
        f"read {len(records)}, rated out 1, cut off 0, empty 0, leaked 1, duplicates 1, "
        f"written {written} -> {out}"
    )
    lines = exported(out)
    questions = [line["messages"][-2]["content"] for line in lines]
    assert SUITE_QUESTIONS[0] not in questions
    assert QUESTIONS[1] not in questions
    assert "Call [REDACTED] about Mars?" in questions
    corrected = lines[questions.index(QUESTIONS[2])]
    assert corrected["messages"][-1] == {"role": "assistant", "content": CORRECTION}
    assert corrected["metadata"]["corrected"] is True
    # The prompt is the route's, rebuilt from the captured question and context.
    voyager = next(r for r in records if r["question"] == QUESTIONS[2])
    assert corrected["messages"][:-1] == voyager["prompt"]

    # ... or rendered for the route the adapter will serve: no instructions in the prompt.
    lean = tmp_path / "lean.jsonl"
    args = ["dataset", "export", "--route", "qa", "--as-route", "qa-lean", "--out", str(lean)]
    assert main(args) == 0
    prompts = [line["messages"][:-1] for line in exported(lean)]
    assert all([m["role"] for m in prompt] == ["user"] for prompt in prompts)
    voyager_context = voyager["context"]
    assert [{"role": "user", "content": f"{voyager_context}\n\nQ: {QUESTIONS[2]}"}] in prompts
    assert "space" not in lean.read_text()  # qa's instructions: "questions about space"
    capsys.readouterr()

    # 3. Retrain: export, train, register, suite with the candidate, gates hold: flip.
    work = tmp_path / "retrain"
    retrain = ["adapters", "retrain", "--route", "qa", "--suite", str(suite), "--out", str(work)]
    knobs = ["--min-examples", "3", "--epochs", "1", "--batch-size", "4", "--no-progress"]
    assert main([*retrain, *knobs]) == 0
    out_text = capsys.readouterr().out
    new = env.alias_target()
    assert new is not None
    assert new != old
    assert new.startswith("qa@")
    assert f"qa -> {new} (run " in out_text
    assert f"was {old})" in out_text
    assert exported(work / "data.jsonl") == lines  # the same export, suite held out
    assert (work / "retrain.yaml").is_file()
    entry = AuditLog(env.settings.adapters_root() / "audit.jsonl").tail(1)[0]
    assert (entry["action"], entry["target"], entry["result"]) == ("retrain", "qa", "ok")
    assert f"{old} -> {new}" in entry["detail"]

    # 4. The server now answers route qa with the new version.
    with running_app(env.settings) as client:
        assert chat(client, "What is a comet?")["adapter"] == new

    # 5. A suite the new versions cannot pass: not better, the alias stays.
    strict = env.write_suite(passing=False, name="strict")
    again = [*retrain[:4], "--suite", str(strict), "--out", str(tmp_path / "again")]
    assert main([*again, *knobs]) == 1
    assert f"not better: kept {new}" in capsys.readouterr().out
    assert env.alias_target() == new
    entry = AuditLog(env.settings.adapters_root() / "audit.jsonl").tail(1)[0]
    assert (entry["action"], entry["result"]) == ("retrain", "refused")

    # 6. Too little data: nothing trains, exit 1 with what to do.
    assert main([*retrain[:-1], str(tmp_path / "few"), "--min-examples", "1000"]) == 1
    assert "fewer than --min-examples 1000" in capsys.readouterr().err
    assert env.alias_target() == new


def test_retrain_refuses_a_route_without_an_adapter(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = env.write_suite()
    assert main(["adapters", "retrain", "--route", "qa-lean", "--suite", str(suite)]) == 2
    assert "route 'qa-lean' serves no adapter" in capsys.readouterr().err


def test_export_refuses_a_bad_date_and_a_route_that_cannot_hold_context(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.jsonl")
    assert main(["dataset", "export", "--route", "qa", "--since", "yesterday", "--out", out]) == 2
    assert "--since: 'yesterday' is not a date; write YYYY-MM-DD" in capsys.readouterr().err
    args = ["dataset", "export", "--route", "chat-plain", "--as-route", "qa", "--out", out]
    assert main(args) == 2
    assert "route 'chat-plain' does not retrieve" in capsys.readouterr().err

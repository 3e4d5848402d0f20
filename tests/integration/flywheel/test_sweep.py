"""`ragtune adapters sweep` on the tiny model: every run trained, registered and scored with the
suite in the alias's place; a failed run reported while the others go on; the alias moved to
the best run whose gates hold, or left alone; a second sweep trains nothing again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.audit import AuditLog
from cli.main import main
from tests.integration.flywheel.conftest import QUESTIONS, Flywheel


def write_data(folder: Path) -> Path:
    path = folder / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "a fact"}]}
        for q in QUESTIONS * 2
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(folder: Path, suite: Path, **keys: Any) -> Path:
    config: dict[str, Any] = {
        "name": "qa",
        "alias": "qa",
        "data": write_data(folder).name,
        "suite": str(suite),
        "options": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "device": "cpu"},
        # max_length 8 leaves no answer token to learn: that run fails, the other goes on.
        "grid": {"max_length": [8, 128]},
        "out": "runs",
    }
    config.update(keys)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*.json")}


def test_sweep_aliases_the_best_passing_run_and_resumes_without_training_again(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = env.alias_target()
    config = write_config(tmp_path, env.write_suite(passing=True))
    assert main(["adapters", "sweep", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out

    summary = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    failed, ok = summary["runs"]
    assert (failed["grid"], failed["status"]) == ({"max_length": 8}, "failed")
    assert "max_length=8" in failed["error"]
    assert (ok["grid"], ok["status"], ok["gates_passed"]) == ({"max_length": 128}, "ok", True)
    assert ok["quality"] == 1.0
    assert ok["ref"].startswith("qa@")
    assert ok["size_bytes"] > 0
    assert ok["train_seconds"] > 0
    assert ok["options"]["max_length"] == 128
    assert ok["options"]["epochs"] == 1
    assert summary["winner"] == ok["run"]
    assert (summary["previous"], summary["flipped"]) == (before, True)

    # The alias serves the winner; its record keeps the suite's verdict; the log says who.
    assert env.alias_target() == ok["ref"]
    assert env.registry.get(ok["ref"]).evals["suite:qa suite"]["gates"][0]["passed"] is True
    log = AuditLog(env.settings.adapters_root() / "audit.jsonl").tail(2)
    assert [(e["action"], e["result"]) for e in log] == [("register", "ok"), ("alias", "ok")]
    assert f"{before} -> {ok['ref']}" in log[1]["detail"]

    # The table: both runs, the winner marked, the failure's reason, then the verdict.
    assert f"{ok['run']} *" in out
    assert "error: " in out
    assert "max_length=8" in out
    assert f"qa -> {ok['ref']} (run {ok['run']}; was {before})" in out

    # Again: the finished run is neither trained nor scored again; the failed one is retried.
    runs = tmp_path / "runs"
    kept = {k: v for k, v in mtimes(runs).items() if k.startswith(ok["run"])}
    assert main(["adapters", "sweep", str(config), "--no-progress"]) == 0
    assert {k: v for k, v in mtimes(runs).items() if k.startswith(ok["run"])} == kept
    assert f"qa already serves {ok['ref']}" in capsys.readouterr().out

    # Another suite whose gate no answer passes: scored again (not trained), alias kept.
    training = (runs / ok["run"] / "adapter" / "training.json").stat().st_mtime
    write_config(tmp_path, env.write_suite(passing=False, name="strict"))
    assert main(["adapters", "sweep", str(config), "--no-progress"]) == 1
    assert (runs / ok["run"] / "adapter" / "training.json").stat().st_mtime == training
    assert env.alias_target() == ok["ref"]
    out = capsys.readouterr().out
    assert "fail: gate tuned.pass_rate: 0 is below its bound 1" in out
    assert f"no run passed the suite's gates: qa still serves {ok['ref']}" in out

    # Scored on the suite's first case only (`cases: 1`): scored again, on that one case.
    write_config(tmp_path, env.write_suite(passing=True), cases=1)
    assert main(["adapters", "sweep", str(config), "--no-progress"]) == 0
    assert (runs / ok["run"] / "adapter" / "training.json").stat().st_mtime == training
    scored = env.registry.get(ok["ref"]).evals["suite:qa suite"]["strategies"]
    assert [figures["cases"] for figures in scored.values()] == [1] * len(scored)


def test_a_bad_sweep_stops_before_training_with_exit_2(
    env: Flywheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = env.write_suite()
    config = write_config(tmp_path, suite, grid={"rank": [8, 12]})
    assert main(["adapters", "sweep", str(config)]) == 2
    assert "rank 12 cannot be served by vLLM" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

    config = write_config(tmp_path, suite, alias="other")
    assert main(["adapters", "sweep", str(config)]) == 2
    assert "no strategy is answered by alias 'other'" in capsys.readouterr().err

    config = write_config(tmp_path, suite, metric="latency_p50")
    assert main(["adapters", "sweep", str(config)]) == 2
    assert "a sweep maximises pass_rate or one of the suite's assertion" in capsys.readouterr().err

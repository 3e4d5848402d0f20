"""The sweep file: its keys and paths checked, the grid expanded into runs whose ids are stable
for their options and data, every run's options checked before anything trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.sweep import RunResult, choose
from flywheel.sweep_config import SweepConfig, plan_runs, read_sweep_file, resolve
from ragtune.errors import AdapterError, InvalidInput, NotFound

BASE = "/models/base"


def write(tmp_path: Path, **keys: Any) -> Path:
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "suite.yaml").write_text("cases: cases.jsonl\n")
    values: dict[str, Any] = {
        "name": "qa",
        "alias": "qa",
        "data": "train.jsonl",
        "suite": "suite.yaml",
        "options": {"epochs": 2},
        "grid": {"rank": [8, 16], "lr": ["1e-4", 2e-4]},
    }
    values.update(keys)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({k: v for k, v in values.items() if v is not None}, sort_keys=False)
    )
    return path


def load(path: Path) -> SweepConfig:
    return resolve(read_sweep_file(path), path)


def test_the_grid_is_every_combination_in_the_files_order(tmp_path: Path) -> None:
    config = load(write(tmp_path))
    runs = plan_runs(config, BASE, 64)
    assert [r.grid for r in runs] == [
        {"rank": 8, "lr": "1e-4"},
        {"rank": 8, "lr": 2e-4},
        {"rank": 16, "lr": "1e-4"},
        {"rank": 16, "lr": 2e-4},
    ]
    assert [(r.options.rank, r.options.lr, r.options.epochs) for r in runs] == [
        (8, 1e-4, 2), (8, 2e-4, 2), (16, 1e-4, 2), (16, 2e-4, 2),
    ]  # fmt: skip
    assert runs[0].id.startswith("rank8-lr1e-4-")
    assert len({r.id for r in runs}) == 4
    assert config.out == tmp_path / "sweep-runs"


def test_run_ids_are_stable_and_change_with_the_data(tmp_path: Path) -> None:
    config = load(write(tmp_path))
    first = [r.id for r in plan_runs(config, BASE, 64)]
    assert [r.id for r in plan_runs(load(write(tmp_path)), BASE, 64)] == first
    (tmp_path / "train.jsonl").write_text('{"messages": [1]}\n')
    changed = [r.id for r in plan_runs(config, BASE, 64)]
    assert all(a != b for a, b in zip(first, changed, strict=True))
    assert [r.id for r in plan_runs(config, "/models/other", 64)] != changed


def test_no_grid_is_one_run(tmp_path: Path) -> None:
    runs = plan_runs(load(write(tmp_path, grid={})), BASE, 64)
    assert len(runs) == 1
    assert runs[0].id.startswith("run-")


def test_a_rank_vllm_cannot_serve_stops_the_sweep_before_training(tmp_path: Path) -> None:
    config = load(write(tmp_path, grid={"rank": [8, 12]}))
    with pytest.raises(AdapterError, match="rank 12 cannot be served by vLLM"):
        plan_runs(config, BASE, 64)


def test_a_bad_option_value_names_the_run(tmp_path: Path) -> None:
    config = load(write(tmp_path, grid={"rank": [8], "epochs": ["many"]}, options={}))
    with pytest.raises(InvalidInput, match=r"run rank8-epochsmany: epochs: .*integer"):
        plan_runs(config, BASE, 64)


def test_an_option_out_of_range_is_refused_by_trainings_own_check(tmp_path: Path) -> None:
    config = load(write(tmp_path, grid={"lr": [2.0]}))
    with pytest.raises(InvalidInput, match=r"lr=2\.0"):
        plan_runs(config, BASE, 64)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"grid": {"rnak": [8]}}, "grid.rnak is not a training option"),
        ({"options": {"epoch": 1}}, "options.epoch is not a training option"),
        ({"grid": {"rank": []}}, "grid.rank is empty"),
        ({"grid": {"epochs": [1, 2]}}, "epochs is in both options and grid"),
        ({"alias": None}, "missing 'alias'"),
        ({"name": "bad name"}, "name 'bad name' is not allowed"),
        ({"gird": {}}, "field 'gird': unknown key"),
        ({"grid": {"rank": 8}}, "field 'grid.rank': Input should be a valid list"),
        ({"cases": 0}, "field 'cases': Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_the_field(
    tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        load(write(tmp_path, **keys))


def test_paths_are_relative_to_the_file_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"data .*missing.jsonl is not a file"):
        load(write(tmp_path, data="missing.jsonl"))
    config = load(write(tmp_path, eval_data="train.jsonl"))
    assert config.eval_data == tmp_path / "train.jsonl"


def test_cases_limits_the_scoring_to_the_suites_first_cases(tmp_path: Path) -> None:
    assert load(write(tmp_path)).cases is None
    assert load(write(tmp_path, cases=40)).cases == 40


def test_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("grid: [\n")
    with pytest.raises(InvalidInput, match="is not valid YAML"):
        read_sweep_file(path)
    with pytest.raises(NotFound, match="does not exist"):
        read_sweep_file(tmp_path / "none.yaml")


def result(run: str, quality: float | None, loss: float | None, passed: bool) -> RunResult:
    return RunResult(run, {}, {}, quality=quality, val_loss=loss, gates_passed=passed)


def test_the_winner_is_the_best_quality_then_the_lowest_validation_loss_among_passing() -> None:
    results = [
        result("a", 0.9, 1.0, True),
        result("b", 0.9, 0.5, True),
        result("c", 1.0, 0.1, False),  # best, but a gate failed
        result("d", 0.8, 0.1, True),
    ]
    assert choose(results) == results[1]
    failed = RunResult("e", {}, {}, status="failed", quality=1.0, gates_passed=True)
    assert choose([*results, failed]) == results[1]
    assert choose([results[2]]) is None

"""The package graph has no upward arrow: cli > flywheel > evaluation > service > adapters >
ingest | engine > ragtune."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "lint-imports is missing: pip install -e '.[dev]'"
    return subprocess.run(
        [exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_package_graph_has_no_upward_arrow() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The same contract on a copy of the layout with one upward import: it must break."""
    for package in (
        "ragtune",
        "ingest",
        "engine",
        "adapters",
        "service",
        "evaluation",
        "flywheel",
        "cli",
    ):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "engine" / "leak.py").write_text("import service\n")
    config = (REPO / "pyproject.toml").read_text()
    start = config.index("[tool.importlinter]")
    (tmp_path / "pyproject.toml").write_text(config[start:])
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "engine.leak -> service" in result.stdout, textwrap.shorten(result.stdout, 2000)

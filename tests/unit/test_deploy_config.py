"""`make test-fast` leaves out the tests that need vLLM. (compose.yaml and deploy/ are checked
in tests/unit/deploy/.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_test_fast_leaves_out_the_vllm_tests() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^test-fast:.*\n\t(?P<command>.+)$", makefile, re.MULTILINE)
    assert recipe is not None, "Makefile has no test-fast recipe"
    args = shlex.split(recipe["command"])
    assert args[0].endswith("/pytest")
    marker = args[args.index("-m") + 1]
    # Collection only: which tests of a vllm-marked module the recipe's -m would run.
    vllm_module = "tests/integration/engine/test_vllm_backend.py"
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*collect, "-m", marker, vllm_module],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 5, collected.stdout + collected.stderr  # 5: none selected
    assert "deselected" in collected.stdout

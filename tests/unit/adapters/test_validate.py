"""Adapter validation: real PEFT adapters on the tiny model pass, every kind of bad one fails."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters.validate import ModelSpec, validate_adapter
from engine.lora import CONFIG_FILE, WEIGHTS_FILE
from ragtune.errors import AdapterError, NotFound
from tests.conftest import TinyModel

MB = 1024 * 1024
PREFIX = "base_model.model.model.layers"


@pytest.fixture(scope="module")
def spec(tiny_model: TinyModel) -> ModelSpec:
    return ModelSpec.from_model_dir(tiny_model.path)


def copy_adapter(tiny_model: TinyModel, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model.adapters[name], tmp_path / name))


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def fake_adapter(
    folder: Path, tensors: dict[str, tuple[int, ...]], targets: list[str] | None = None
) -> Path:
    """A hand-written adapter: a minimal LoRA config and zero tensors of the given shapes."""
    folder.mkdir(parents=True)
    modules = targets or sorted({k.split(".")[-3] for k in tensors})
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": modules}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    save_file(
        {k: np.zeros(shape, dtype=np.float32) for k, shape in tensors.items()},
        str(folder / WEIGHTS_FILE),
    )
    return folder


def q_proj(layer: int, a: tuple[int, ...], b: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    key = f"{PREFIX}.{layer}.self_attn.q_proj"
    return {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}


def check(folder: Path, spec: ModelSpec | None, max_rank: int = 16, max_bytes: int = MB) -> None:
    validate_adapter(folder, spec, max_rank=max_rank, max_bytes=max_bytes)


def test_model_spec_reads_the_tiny_qwen2_config(spec: ModelSpec) -> None:
    assert spec.name == "base"
    assert spec.num_layers == 2
    assert spec.module_shapes["q_proj"] == (128, 128)
    # 2 key/value heads of 32: grouped-query attention makes k/v narrower than q.
    assert spec.module_shapes["k_proj"] == (128, 64)
    assert spec.module_shapes["o_proj"] == (128, 128)
    assert spec.module_shapes["gate_proj"] == (128, 256)
    assert spec.module_shapes["down_proj"] == (256, 128)


def test_model_spec_refuses_missing_or_broken_config(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no config\.json"):
        ModelSpec.from_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        ModelSpec.from_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(AdapterError, match="num_hidden_layers is None"):
        ModelSpec.from_model_dir(tmp_path)


def test_real_peft_adapter_passes(tiny_model: TinyModel, spec: ModelSpec) -> None:
    info = validate_adapter(tiny_model.adapters["alpha"], spec, max_rank=16, max_bytes=MB)
    assert info.rank == 8
    assert set(info.target_modules) == set(spec.module_shapes)


def test_wrong_base_model_by_name(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    edit_config(folder, base_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(
        AdapterError,
        match=r"trained on Qwen/Qwen2\.5-7B-Instruct, but the served base model is base",
    ):
        check(folder, spec)


@pytest.mark.parametrize("base", ["/elsewhere/BASE/", "someone/Base", None])
def test_base_model_name_matches_by_last_component(
    tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path, base: str | None
) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    edit_config(folder, base_model_name_or_path=base)
    check(folder, spec)


def test_wrong_base_model_by_shapes(spec: ModelSpec, tmp_path: Path) -> None:
    # As if trained on a model with hidden size 64: lora_A is [8, 64], not [8, 128].
    folder = fake_adapter(tmp_path / "narrow", q_proj(0, (8, 64), (64, 8)))
    with pytest.raises(AdapterError, match=r"needs \[8, 128\] and \[128, 8\]"):
        check(folder, spec)


def test_shapes_are_not_checked_without_a_model(tmp_path: Path) -> None:
    check(fake_adapter(tmp_path / "narrow", q_proj(0, (8, 64), (64, 8))), None)


def test_layer_beyond_the_model_is_refused(spec: ModelSpec, tmp_path: Path) -> None:
    folder = fake_adapter(tmp_path / "deep", q_proj(5, (8, 128), (128, 8)))
    with pytest.raises(AdapterError, match="layer 5, but base has 2 layers"):
        check(folder, spec)


def test_rank_above_the_limit(tiny_model: TinyModel, spec: ModelSpec) -> None:
    with pytest.raises(AdapterError, match="rank 32, above max_lora_rank 16"):
        check(tiny_model.adapters["too-big"], spec)


def test_tensor_rank_must_match_the_config(spec: ModelSpec, tmp_path: Path) -> None:
    folder = fake_adapter(tmp_path / "r4", q_proj(0, (4, 128), (128, 4)))
    with pytest.raises(AdapterError, match="has rank 4"):
        check(folder, spec)


def test_rank_pattern_allows_other_ranks_per_module(spec: ModelSpec, tmp_path: Path) -> None:
    folder = fake_adapter(tmp_path / "mixed", q_proj(0, (4, 128), (128, 4)))
    edit_config(folder, rank_pattern={"q_proj": 4})
    check(folder, spec)


def test_unknown_target_module(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    edit_config(folder, target_modules=["q_proj", "c_attn"])
    with pytest.raises(AdapterError, match=r"targets 'c_attn'.*can target q_proj, k_proj"):
        check(folder, spec)


def test_tensor_on_unknown_module(spec: ModelSpec, tmp_path: Path) -> None:
    key = f"{PREFIX}.0.self_attn.c_attn"
    tensors = {f"{key}.lora_A.weight": (8, 128), f"{key}.lora_B.weight": (128, 8)}
    folder = fake_adapter(tmp_path / "gpt2ish", tensors, targets=["q_proj"])
    with pytest.raises(AdapterError, match="weights for 'c_attn'"):
        check(folder, spec)


def test_tensor_that_is_not_lora(spec: ModelSpec, tmp_path: Path) -> None:
    tensors = {**q_proj(0, (8, 128), (128, 8)), "base_model.model.lm_head.weight": (4, 128)}
    folder = fake_adapter(tmp_path / "extra", tensors, targets=["q_proj"])
    with pytest.raises(AdapterError, match="not a LoRA A/B weight"):
        check(folder, spec)


def test_lora_a_without_lora_b(spec: ModelSpec, tmp_path: Path) -> None:
    tensors = {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (8, 128)}
    with pytest.raises(AdapterError, match="only one of lora_A and lora_B"):
        check(fake_adapter(tmp_path / "half", tensors), spec)


def corrupt_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_garbage_header(path: Path) -> None:
    path.write_bytes((12).to_bytes(8, "little") + b"not json!!!!" + b"\0" * 64)


def corrupt_garbage_file(path: Path) -> None:
    path.write_bytes(b"this is not a safetensors file\n" * 8)


def corrupt_absurd_length(path: Path) -> None:
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")


def corrupt_too_short(path: Path) -> None:
    path.write_bytes(b"\x01\x02")


def corrupt_wrong_byte_count(path: Path) -> None:
    key = f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [8, 128], "data_offsets": [0, 16]}})
    raw = header.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (corrupt_truncated, "lies past the end of the file (truncated?)"),
        (corrupt_garbage_header, "header is not JSON"),
        (corrupt_garbage_file, "header claims"),
        (corrupt_absurd_length, "header claims"),
        (corrupt_too_short, "shorter than"),
        (corrupt_wrong_byte_count, "shape, data type and size disagree"),
    ],
)
def test_corrupt_safetensors(
    tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path, corrupt: Any, reason: str
) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    corrupt(folder / WEIGHTS_FILE)
    with pytest.raises(AdapterError, match=f"is corrupt: .*{re.escape(reason)}") as caught:
        check(folder, spec)
    assert str(caught.value).startswith(f"{WEIGHTS_FILE} of adapter 'alpha' is corrupt: ")
    assert str(caught.value).endswith("; save the adapter again and re-upload it")


def test_pickled_weights_are_refused(
    tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path
) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    (folder / WEIGHTS_FILE).rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin, a pickle file"):
        check(folder, spec)


def test_pickle_beside_safetensors_is_refused_too(
    tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path
) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    (folder / "sub").mkdir()
    (folder / "sub" / "optimizer.PT").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AdapterError, match="pickle file"):
        check(folder, spec)


def test_missing_safetensors(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"has no {WEIGHTS_FILE}"):
        check(folder, spec)


def test_missing_config(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(AdapterError, match=f"{CONFIG_FILE} is missing"):
        check(folder, spec)


def test_missing_folder(spec: ModelSpec, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        check(tmp_path / "nothing", spec)


def test_not_lora(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    edit_config(folder, peft_type="PREFIX_TUNING")
    with pytest.raises(AdapterError, match="only LORA is served"):
        check(folder, spec)


def test_oversize(tiny_model: TinyModel, spec: ModelSpec) -> None:
    with pytest.raises(AdapterError, match="larger than the 1024 byte limit"):
        check(tiny_model.adapters["alpha"], spec, max_bytes=1024)


def test_symlink_inside(tiny_model: TinyModel, spec: ModelSpec, tmp_path: Path) -> None:
    folder = copy_adapter(tiny_model, "alpha", tmp_path)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for you")
    os.symlink(outside, folder / "README.md.link")
    with pytest.raises(AdapterError, match=r"README\.md\.link .* is a symbolic link"):
        check(folder, spec)

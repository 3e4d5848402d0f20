"""Check a LoRA adapter folder against the served base model before it is registered or loaded.

Everything is read from metadata: the PEFT config and the safetensors header, never the
tensors, so a hostile or broken upload costs a few kilobytes of reading to refuse.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.lora import CONFIG_FILE, WEIGHTS_FILE, LoraInfo, check_servable, read_lora_config
from ragtune.errors import AdapterError, NotFound

# Loading any of these runs pickle, which can execute code; only safetensors is accepted.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
# The safetensors library refuses headers above 100 MB; a LoRA header is a few kilobytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
# PEFT names LoRA weights `<prefix>.layers.<i>.<block>.<module>.lora_<A|B>[.<adapter>].weight`.
_LORA_KEY = re.compile(
    r"\.layers\.(?P<layer>\d+)\.(?:[\w.]+\.)?(?P<module>\w+)\.lora_(?P<ab>[AB])(?:\.\w+)?\.weight$"
)


@dataclass(frozen=True)
class ModelSpec:
    """What an adapter must fit: the base model's name, depth and LoRA-targetable layers."""

    name: str
    num_layers: int
    # module name -> (in_features, out_features)
    module_shapes: dict[str, tuple[int, int]]

    @classmethod
    def from_model_dir(cls, path: Path) -> ModelSpec:
        """Read a Qwen2/Llama-style `config.json`; the folder's name is the model's name."""
        config_path = path / "config.json"
        if not config_path.is_file():
            raise NotFound(
                f"base model folder {path} has no config.json; point RAGTUNE_LLM__MODEL at a "
                f"Hugging Face model folder"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterError(f"{config_path} is not valid JSON: {exc}") from exc
        if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
            # Multimodal configs keep the language model's sizes in a nested section.
            config = {**config, **config["text_config"]}
        if not isinstance(config, dict):
            raise AdapterError(f"{config_path} must hold a JSON object")
        return cls(
            name=path.resolve().name,
            num_layers=_positive(config, "num_hidden_layers", config_path),
            module_shapes=_module_shapes(config, config_path),
        )


def _positive(config: dict[str, Any], key: str, source: Path, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AdapterError(
            f"{source}: {key} is {value!r}, not a positive integer; adapters can only be "
            f"checked against Qwen2/Llama-style configs"
        )
    return value


def _module_shapes(config: dict[str, Any], source: Path) -> dict[str, tuple[int, int]]:
    hidden = _positive(config, "hidden_size", source)
    intermediate = _positive(config, "intermediate_size", source)
    heads = _positive(config, "num_attention_heads", source)
    kv_heads = _positive(config, "num_key_value_heads", source, default=heads)
    head_dim = _positive(config, "head_dim", source, default=hidden // heads)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, intermediate),
        "up_proj": (hidden, intermediate),
        "down_proj": (intermediate, hidden),
    }


def validate_adapter(
    path: Path,
    model: ModelSpec | None,
    *,
    max_rank: int,
    max_bytes: int,
    name: str | None = None,
) -> LoraInfo:
    """Refuse an adapter folder that could not be served on `model`; return its config.

    With `model` None the base-model name and tensor shapes are not checked. Messages call
    the adapter `name` (default: the folder's name).
    """
    name = name or path.name
    _check_files(path, max_bytes)
    info = read_lora_config(path)
    check_servable(info, name, max_rank)
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(
            f"adapter {name!r} has no {WEIGHTS_FILE}; save it with PEFT's save_pretrained "
            f"(safetensors is the default)"
        )
    if model is not None:
        _check_base_model(info, name, model)
        _check_targets(info, name, model)
    header = read_safetensors_header(path / WEIGHTS_FILE)
    _check_tensors(info, name, header, model, max_rank)
    return info


def _check_files(path: Path, max_bytes: int) -> None:
    if not path.is_dir():
        raise NotFound(f"adapter folder {path} does not exist")
    total = 0
    for entry in sorted(_walk(path)):
        st = entry.lstat()
        rel = entry.relative_to(path)
        if stat.S_ISLNK(st.st_mode):
            raise AdapterError(
                f"{rel} in adapter {path.name!r} is a symbolic link; copy the real file in instead"
            )
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise AdapterError(f"{rel} in adapter {path.name!r} is not a regular file; remove it")
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterError(
                f"adapter {path.name!r} contains {rel}, a pickle file, which could run code "
                f"when loaded; save the adapter with safetensors (PEFT's default, "
                f"safe_serialization=True) and leave the pickle out"
            )
        total += st.st_size
        if total > max_bytes:
            raise AdapterError(
                f"adapter {path.name!r} is larger than the {max_bytes} byte limit; remove "
                f"files the adapter does not need, or raise RAGTUNE_ADAPTERS__MAX_ADAPTER_BYTES"
            )


def _walk(path: Path) -> list[Path]:
    """Every entry below `path`, not following symbolic links."""
    entries: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        base = Path(dirpath)
        entries.extend(base / n for n in dirnames)
        entries.extend(base / n for n in filenames)
    return entries


def _last_component(name: str) -> str:
    return re.split(r"[/\\]", name.rstrip("/\\"))[-1].lower()


def _check_base_model(info: LoraInfo, name: str, model: ModelSpec) -> None:
    if not info.base_model:
        return  # Many exported adapters leave it empty; the shape check still applies.
    if _last_component(info.base_model) != _last_component(model.name):
        raise AdapterError(
            f"adapter {name!r} was trained on {info.base_model}, but the served base model is "
            f"{model.name}; retrain it on {model.name}, or if both are the same model under "
            f"other names, set base_model_name_or_path in its {CONFIG_FILE} to {model.name}"
        )


def _check_targets(info: LoraInfo, name: str, model: ModelSpec) -> None:
    if isinstance(info.raw.get("target_modules"), str):
        return  # A regex or "all-linear": the tensor names are checked instead.
    for target in info.target_modules:
        # PEFT matches list entries as suffixes of module paths ("self_attn.q_proj").
        module = target.rsplit(".", 1)[-1]
        if module not in model.module_shapes:
            raise AdapterError(
                f"adapter {name!r} targets {target!r}, which {model.name} does not have; "
                f"LoRA can target {', '.join(model.module_shapes)}"
            )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size; no tensors."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, "shorter than its 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise _corrupt(path, f"its header claims {length} bytes")
            raw = f.read(length)
    except OSError as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, "its header is not JSON") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    data_bytes = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        _check_entry(path, key, entry, data_bytes)
    return header


def _check_entry(path: Path, key: str, entry: Any, data_bytes: int) -> None:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"tensor {key!r} has no description")
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
    ):
        raise _corrupt(path, f"tensor {key!r} has a malformed shape or data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _corrupt(path, f"tensor {key!r} has unknown dtype {dtype!r}")
    start, end = offsets
    if not 0 <= start <= end <= data_bytes:
        raise _corrupt(path, f"tensor {key!r} lies past the end of the file (truncated?)")
    if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise _corrupt(path, f"tensor {key!r} has {end - start} bytes for shape {shape}")


def _corrupt(path: Path, why: str) -> AdapterError:
    return AdapterError(
        f"{path.name} of adapter {path.parent.name!r} is corrupt: {why}; save the adapter "
        f"again and re-upload it"
    )


def _check_tensors(
    info: LoraInfo,
    name: str,
    header: dict[str, Any],
    model: ModelSpec | None,
    max_rank: int,
) -> None:
    # PEFT's rank_pattern gives some modules another rank than r.
    pattern = info.raw.get("rank_pattern")
    ranks = {info.rank, *(pattern.values() if isinstance(pattern, dict) else ())}
    seen: dict[tuple[int, str], dict[str, list[int]]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        match = _LORA_KEY.search(key)
        if match is None:
            raise AdapterError(
                f"adapter {name!r} holds tensor {key!r}, which is not a LoRA A/B weight of a "
                f"decoder layer; vLLM would refuse it, so retrain without extra modules, "
                f"biases or DoRA"
            )
        layer, module, ab = int(match["layer"]), match["module"], match["ab"]
        shape: list[int] = entry["shape"]
        if len(shape) != 2:
            raise AdapterError(f"adapter {name!r}: tensor {key!r} has shape {shape}, not 2-D")
        seen.setdefault((layer, module), {})[ab] = shape
        if model is None:
            continue
        if layer >= model.num_layers:
            raise AdapterError(
                f"adapter {name!r} has weights for layer {layer}, but {model.name} has "
                f"{model.num_layers} layers; it was trained on another base model"
            )
        if module not in model.module_shapes:
            raise AdapterError(
                f"adapter {name!r} has weights for {module!r}, which {model.name} does not "
                f"have; LoRA can target {', '.join(model.module_shapes)}"
            )
    if not seen:
        raise AdapterError(f"adapter {name!r} has no LoRA weights in {WEIGHTS_FILE}")
    for (layer, module), pair in sorted(seen.items()):
        where = f"layer {layer} {module}"
        if set(pair) != {"A", "B"}:
            raise AdapterError(
                f"adapter {name!r}: {where} has only one of lora_A and lora_B; save the "
                f"adapter again from the trained model"
            )
        rank = pair["A"][0]
        if pair["B"][1] != rank or rank not in ranks or rank > max_rank:
            raise AdapterError(
                f"adapter {name!r}: {where} has rank {rank} (lora_A {pair['A']}, lora_B "
                f"{pair['B']}), but its config says r={info.rank} and the limit is {max_rank}; "
                f"save the adapter again from the trained model"
            )
        if model is None:
            continue
        fan_in, fan_out = model.module_shapes[module]
        if pair["A"][1] != fan_in or pair["B"][0] != fan_out:
            raise AdapterError(
                f"adapter {name!r}: {where} has lora_A {pair['A']} and lora_B {pair['B']}, "
                f"but {model.name} needs [{rank}, {fan_in}] and [{fan_out}, {rank}]; it was "
                f"trained on another base model, so retrain it on {model.name}"
            )

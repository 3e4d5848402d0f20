"""Read a PEFT LoRA adapter's config and check it against what the serving engines accept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import AdapterError, NotFound

# vLLM serves LoRA on these projection layers only; adapters on embeddings or the output
# head, or with fully trained extra modules, are refused when loaded.
UNSERVABLE_TARGETS = frozenset({"lm_head", "embed_tokens"})
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraInfo:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None
    raw: dict[str, Any]


def read_lora_config(path: Path) -> LoraInfo:
    """Parse `adapter_config.json` of a PEFT adapter folder; errors name the problem."""
    if not path.is_dir():
        raise NotFound(f"adapter folder {path} does not exist")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{path} is not a PEFT adapter: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"{config_path} must hold a JSON object")
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; only LORA is served")
    rank = raw.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"{config_path}: 'r' (the rank) must be a positive integer")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        # PEFT allows a regex here; it cannot be checked statically, so keep it whole.
        targets = [targets]
    return LoraInfo(
        rank=rank,
        alpha=float(raw.get("lora_alpha", rank)),
        target_modules=tuple(str(t) for t in targets),
        base_model=raw.get("base_model_name_or_path"),
        raw=raw,
    )


def check_servable(info: LoraInfo, name: str, max_rank: int) -> None:
    """Refuse what vLLM would refuse at load time, with a message that says why."""
    if info.rank > max_rank:
        raise AdapterError(
            f"adapter {name!r} has rank {info.rank}, above max_lora_rank {max_rank}; raise "
            f"RAGTUNE_LLM__MAX_LORA_RANK (and vLLM's --max-lora-rank) or retrain with r <= "
            f"{max_rank}"
        )
    bad = sorted(UNSERVABLE_TARGETS.intersection(info.target_modules))
    if bad:
        raise AdapterError(
            f"adapter {name!r} targets {', '.join(bad)}; vLLM serves LoRA on attention and "
            f"MLP projections only, so retrain without them"
        )
    if info.raw.get("modules_to_save"):
        raise AdapterError(
            f"adapter {name!r} has modules_to_save {info.raw['modules_to_save']}; fully "
            f"trained extra modules cannot be served as LoRA, so retrain without them"
        )

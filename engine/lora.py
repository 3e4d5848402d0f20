"""Read a PEFT LoRA adapter's config and check it against what the serving engines accept."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

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
    # PEFT's per-module overrides of `r` and `lora_alpha`, keyed by module name pattern.
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @property
    def ranks(self) -> frozenset[int]:
        """Every rank a module of this adapter may have: `r` and the rank_pattern's."""
        return frozenset({self.rank, *self.rank_pattern.values()})

    @property
    def max_rank(self) -> int:
        """The highest rank of any module, the one vLLM checks against --max-lora-rank."""
        return max(self.ranks)


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
    if not _positive_int(rank):
        raise AdapterError(f"{config_path}: 'r' (the rank) must be a positive integer")
    alpha = raw.get("lora_alpha", rank)
    if not _positive_number(alpha):
        raise AdapterError(f"{config_path}: 'lora_alpha' must be a positive number")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        # PEFT allows a regex here; it cannot be checked statically, so keep it whole.
        targets = [targets]
    return LoraInfo(
        rank=rank,
        alpha=float(alpha),
        target_modules=tuple(str(t) for t in targets),
        base_model=raw.get("base_model_name_or_path"),
        raw=raw,
        rank_pattern=_pattern(raw, "rank_pattern", config_path, _positive_int, "integer"),
        alpha_pattern={
            k: float(v)
            for k, v in _pattern(
                raw, "alpha_pattern", config_path, _positive_number, "number"
            ).items()
        },
    )


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _pattern(
    raw: dict[str, Any], key: str, source: Path, valid: Callable[[Any], bool], kind: str
) -> dict[str, Any]:
    pattern = raw.get(key) or {}
    if not isinstance(pattern, dict) or not all(valid(v) for v in pattern.values()):
        raise AdapterError(
            f"{source}: {key!r} must map module names to positive {kind}s, not {pattern!r}; "
            f"save the adapter again with PEFT"
        )
    return pattern


def check_servable(info: LoraInfo, name: str, max_rank: int) -> None:
    """Refuse what vLLM would refuse at load time, with a message that says why.

    The one servability rule: the registry's validation, training and both engines call it,
    each with the engine's limit (`llm.max_lora_rank`, vLLM's --max-lora-rank).
    """
    if info.max_rank > max_rank:
        wide = sorted(k for k, r in info.rank_pattern.items() if r > max_rank)
        where = f" (rank_pattern gives {', '.join(map(repr, wide))} that rank)" if wide else ""
        raise AdapterError(
            f"adapter {name!r} has rank {info.max_rank}, above max_lora_rank {max_rank}"
            f"{where}; raise RAGTUNE_LLM__MAX_LORA_RANK (and vLLM's --max-lora-rank) or "
            f"retrain with every rank (r and rank_pattern) <= {max_rank}"
        )
    check_targets(info.target_modules, name)
    if info.raw.get("modules_to_save"):
        raise AdapterError(
            f"adapter {name!r} has modules_to_save {info.raw['modules_to_save']}; fully "
            f"trained extra modules cannot be served as LoRA, so retrain without them"
        )
    if info.raw.get("use_dora"):
        raise AdapterError(
            f"adapter {name!r} is a DoRA adapter (use_dora); vLLM does not serve DoRA, so "
            f"retrain it as plain LoRA"
        )
    if info.raw.get("bias", "none") != "none" or info.raw.get("lora_bias"):
        raise AdapterError(
            f"adapter {name!r} trains biases (bias={info.raw.get('bias')!r}); vLLM serves "
            f"LoRA without biases, so retrain with bias='none'"
        )


def check_targets(targets: Collection[str], name: str) -> None:
    """Refuse LoRA on modules vLLM cannot serve it on (embeddings, the output head)."""
    bad = sorted(UNSERVABLE_TARGETS.intersection(targets))
    if bad:
        raise AdapterError(
            f"adapter {name!r} targets {', '.join(bad)}; vLLM serves LoRA on attention and "
            f"MLP projections only, so retrain without them"
        )

"""The one servability rule (engine/lora.py), applied alike by validation, training and the
embedded engine: every rank counts, rank_pattern's too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.train_options import TrainOptions
from adapters.validate import ModelSpec, validate_adapter
from engine.embedded import EmbeddedBackend
from engine.lora import CONFIG_FILE, check_servable, read_lora_config
from ragtune.errors import AdapterError, InvalidInput
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel

MB = 1024 * 1024


@pytest.fixture(scope="module")
def wide(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT adapter with r=8 (within the limit of 16) but q_proj at rank 32."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("lora") / "wide"
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"q_proj": 32},
        alpha_pattern={"q_proj": 64},
        task_type="CAUSAL_LM",
    )
    base = Qwen2ForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    get_peft_model(base, config).save_pretrained(out)
    return out


def refusal(action: Callable[[], object]) -> str:
    with pytest.raises(AdapterError) as caught:
        action()
    return str(caught.value)


def test_a_rank_pattern_above_the_limit_is_refused_everywhere_alike(
    wide: Path, tiny_model: TinyModel
) -> None:
    info = read_lora_config(wide)
    assert (info.rank, info.max_rank) == (8, 32)
    assert info.alpha_pattern == {"q_proj": 64.0}

    by_validation = refusal(
        lambda: validate_adapter(
            wide, ModelSpec.from_model_dir(tiny_model.path), max_rank=16, max_bytes=MB
        )
    )
    by_training = refusal(
        lambda: TrainOptions(rank=8, rank_pattern={"q_proj": 32}).check(max_rank=16, name="wide")
    )
    engine = EmbeddedBackend.load(str(tiny_model.path), LLMSettings(max_lora_rank=16))
    try:
        by_engine = refusal(lambda: asyncio.run(engine.load_adapter("wide", wide)))
        assert asyncio.run(engine.list_adapters()) == []
    finally:
        asyncio.run(engine.aclose())

    assert by_validation == by_training == by_engine
    assert "adapter 'wide' has rank 32, above max_lora_rank 16" in by_engine
    assert "rank_pattern gives 'q_proj' that rank" in by_engine
    assert "RAGTUNE_LLM__MAX_LORA_RANK" in by_engine


def test_within_the_limit_it_passes(wide: Path, tiny_model: TinyModel) -> None:
    validate_adapter(wide, ModelSpec.from_model_dir(tiny_model.path), max_rank=32, max_bytes=MB)
    TrainOptions(rank=8, rank_pattern={"q_proj": 32}).check(max_rank=32)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rank_pattern": {"q_proj": 0}}, "'rank_pattern' must map module names to positive"),
        ({"rank_pattern": ["q_proj"]}, "'rank_pattern' must map"),
        ({"alpha_pattern": {"q_proj": "big"}}, "'alpha_pattern' must map"),
        ({"lora_alpha": -1}, "'lora_alpha' must be a positive number"),
        ({"use_dora": True}, "vLLM does not serve DoRA"),
        ({"bias": "all"}, "retrain with bias='none'"),
        ({"target_modules": ["q_proj", "lm_head"]}, "targets lm_head"),
    ],
)
def test_configs_vllm_would_refuse(
    wide: Path, tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    folder = tmp_path / "edited"
    folder.mkdir()
    config = json.loads((wide / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **change}))
    with pytest.raises(AdapterError, match=reason):
        check_servable(read_lora_config(folder), "edited", 512)


def test_training_refuses_bad_patterns_and_unservable_targets() -> None:
    with pytest.raises(AdapterError, match="targets lm_head"):
        TrainOptions(target_modules=("q_proj", "lm_head")).check()
    with pytest.raises(InvalidInput, match=r"rank_pattern=\{'q_proj': 0\}"):
        TrainOptions(rank_pattern={"q_proj": 0}).check()

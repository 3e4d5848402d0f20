"""What a training run is asked (TrainOptions, checked before anything loads) and what it
reports (TrainReport, written as training.json); adapters/train.py runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.lora import LoraInfo, check_servable
from ragtune.errors import AdapterError, InvalidInput
from ragtune.settings import VLLM_LORA_RANKS

REPORT_FILE = "training.json"
# What the output folder holds: PEFT's two files (vLLM loads them as they are) and the report.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# transformers' schedules that need no extra arguments.
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    # PEFT's per-module overrides of rank and alpha ({"q_proj": 16}), checked like `rank`.
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    lr: float = 2e-4
    lr_scheduler: str = "linear"
    # The first fraction of the steps warms the learning rate up from 0.
    warmup_ratio: float = 0.0
    epochs: int = 3
    # When set, training stops after this many optimizer steps (looping over the data).
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    # The fraction of the data's lines held out for validation (0: none) without eval_data.
    validation: float = 0.2
    # Stop after this many epochs without a lower validation loss (0: never stop early).
    early_stopping_patience: int = 2
    # 4-bit base weights (bitsandbytes, CUDA only), LoRA on top.
    qlora: bool = False
    # auto: CUDA when torch sees a device, else the CPU.
    device: str = "auto"

    def check(self, max_rank: int = max(VLLM_LORA_RANKS), name: str = "the new adapter") -> None:
        """Refuse what cannot train or what vLLM could not serve (with `max_rank`, the
        serving engine's limit), before loading anything; messages call the adapter `name`."""
        if self.rank not in VLLM_LORA_RANKS:
            raise AdapterError(
                f"rank {self.rank} cannot be served by vLLM; choose one of "
                f"{', '.join(map(str, VLLM_LORA_RANKS))}"
            )
        if not self.target_modules:
            raise AdapterError(
                f"no target modules: vLLM serves LoRA on attention and MLP projections; use "
                f"e.g. {','.join(DEFAULT_TARGETS)}"
            )
        rules = {
            "alpha": (self.alpha > 0, "positive"),
            "dropout": (0 <= self.dropout < 1, "in [0, 1)"),
            "lr": (0 < self.lr < 1, "in (0, 1)"),
            "lr_scheduler": (self.lr_scheduler in LR_SCHEDULERS, f"one of {LR_SCHEDULERS}"),
            "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
            "epochs": (self.epochs >= 1, "positive"),
            "max_steps": (self.max_steps is None or self.max_steps >= 1, "positive"),
            "batch_size": (self.batch_size >= 1, "positive"),
            "grad_accum": (self.grad_accum >= 1, "positive"),
            "max_length": (self.max_length >= 8, "at least 8"),
            "validation": (0 <= self.validation < 1, "in [0, 1)"),
            "early_stopping_patience": (self.early_stopping_patience >= 0, "0 or more"),
            "device": (self.device in DEVICES, f"one of {DEVICES}"),
            "rank_pattern": (
                all(isinstance(r, int) and r >= 1 for r in self.rank_pattern.values()),
                "positive integers",
            ),
            "alpha_pattern": (all(a > 0 for a in self.alpha_pattern.values()), "positive"),
        }
        wrong = [
            f"{key}={getattr(self, key)!r} (must be {rule})"
            for key, (ok, rule) in rules.items()
            if not ok
        ]
        if wrong:
            raise InvalidInput(f"invalid training options: {'; '.join(wrong)}")
        # The same servability rule as the registry and the engines apply to saved adapters.
        planned = LoraInfo(
            rank=self.rank,
            alpha=self.alpha,
            target_modules=self.target_modules,
            base_model=None,
            raw={},
            rank_pattern=dict(self.rank_pattern),
            alpha_pattern=dict(self.alpha_pattern),
        )
        check_servable(planned, name, max_rank)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


@dataclass(frozen=True)
class TrainReport:
    """What training.json holds: the data, the options, the losses, the time and versions."""

    out: Path
    base_model: str
    data: Path
    data_sha256: str
    eval_data: Path | None
    options: TrainOptions
    # Prompt/completion pairs trained on and validated on (after dropping those cut away).
    examples: int
    eval_examples: int
    # Pairs longer than max_length (cut), and those of them left with no answer (skipped).
    truncated: int
    dropped: int
    answer_tokens: int
    steps: int
    # The training loss of each optimizer step.
    losses: tuple[float, ...]
    initial_loss: float
    final_loss: float
    # The validation loss after each epoch; the adapter saved is the best epoch's.
    eval_losses: tuple[float, ...]
    best_eval_loss: float | None
    best_epoch: int | None
    stopped_early: bool
    seconds: float
    device: str
    versions: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        report.update(
            out=str(self.out),
            data=str(self.data),
            eval_data=None if self.eval_data is None else str(self.eval_data),
            options=self.options.to_json(),
            losses=[round(x, 5) for x in self.losses],
            eval_losses=[round(x, 5) for x in self.eval_losses],
            versions=dict(self.versions),
        )
        return report

"""Train a LoRA adapter on chat JSONL with a plain PyTorch loop, in a form vLLM can serve."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adapters.dataset import (
    IGNORE,
    TokenizedExample,
    answer_span,
    end_of_turn_ids,
    pad_batch,
    read_chat_jsonl,
    tokenize_record,
)
from engine.lora import LoraInfo, check_servable, read_lora_config
from ragtune.errors import AdapterError, InvalidInput, NotFound
from ragtune.settings import VLLM_LORA_RANKS

REPORT_FILE = "training.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# final_loss averages this many last steps: one step's loss depends on which batch it saw.
_FINAL_WINDOW = 10


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
    epochs: int = 1
    # When set, training stops after this many optimizer steps (looping over the data).
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    device: str = "cpu"

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
        limits = {
            "alpha": self.alpha > 0,
            "dropout": 0 <= self.dropout < 1,
            "lr": 0 < self.lr < 1,
            "epochs": self.epochs >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "max_length": self.max_length >= 8,
            "rank_pattern": all(isinstance(r, int) and r >= 1 for r in self.rank_pattern.values()),
            "alpha_pattern": all(a > 0 for a in self.alpha_pattern.values()),
        }
        wrong = [key for key, ok in limits.items() if not ok]
        if wrong:
            values = ", ".join(f"{key}={getattr(self, key)}" for key in wrong)
            raise InvalidInput(
                f"invalid training options: {values}; alpha, lr, epochs, max_steps, batch_size, "
                f"grad_accum and the rank_pattern and alpha_pattern values must be positive, "
                f"dropout in [0, 1), max_length at least 8"
            )
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


@dataclass(frozen=True)
class TrainReport:
    out: Path
    examples: int
    truncated: int
    dropped: int
    answer_tokens: int
    steps: int
    initial_loss: float
    final_loss: float
    seconds: float
    data_sha256: str
    losses: tuple[float, ...]

    def to_json(self, options: TrainOptions, base_model: str, data: Path) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        report["out"] = str(self.out)
        report["losses"] = [round(x, 5) for x in self.losses]
        return {"base_model": base_model, "data": str(data), "options": _options(options), **report}


def _options(options: TrainOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    values["target_modules"] = list(options.target_modules)
    return values


def train_lora(
    base_model: str, data: Path, out: Path, options: TrainOptions, *, progress: bool = False
) -> TrainReport:
    """Train a LoRA adapter for `base_model` on `data`; write it and training.json to `out`."""
    options.check(name=out.name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} already exists and is not empty; choose a new folder for it")
    records = read_chat_jsonl(data)
    started = time.monotonic()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(options.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        # fp32 even for bf16 checkpoints: CPU training in bf16 loses the small LoRA updates.
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.float32, local_files_only=True
        )
    except OSError as exc:
        raise NotFound(
            f"base model {base_model!r} could not be loaded ({str(exc).splitlines()[0]}); pass "
            f"--base with a local Hugging Face model folder, or run `ragtune model prepare`"
        ) from exc
    if tokenizer.chat_template is None:
        raise InvalidInput(f"base model {base_model!r} has no chat template to format the data")

    end_ids = end_of_turn_ids(tokenizer, model.generation_config.eos_token_id)
    tokenized = [tokenize_record(tokenizer, r, options.max_length, end_ids) for r in records]
    examples = [e for e in tokenized if e.answer_tokens > 0]
    if not examples:
        raise InvalidInput(
            f"every example's prompt is longer than max_length={options.max_length} tokens, so "
            f"no answer token is left to learn; raise --max-length"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids)

    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        rank_pattern=dict(options.rank_pattern),
        alpha_pattern=dict(options.alpha_pattern),
        task_type="CAUSAL_LM",
    )
    model = model.to(options.device)  # type: ignore[arg-type]
    try:
        peft_model: Any = get_peft_model(model, config)
    except ValueError as exc:
        raise AdapterError(
            f"cannot put LoRA on {list(options.target_modules)} in {base_model!r}: {exc}"
        ) from exc
    losses = _loop(peft_model, examples, pad_id, options, progress)

    _save(peft_model, out)
    report = TrainReport(
        out=out,
        examples=len(examples),
        truncated=sum(e.truncated for e in tokenized),
        dropped=len(tokenized) - len(examples),
        answer_tokens=sum(e.answer_tokens for e in examples),
        steps=len(losses),
        initial_loss=losses[0],
        final_loss=sum(losses[-_FINAL_WINDOW:]) / len(losses[-_FINAL_WINDOW:]),
        seconds=round(time.monotonic() - started, 2),
        data_sha256=hashlib.sha256(data.read_bytes()).hexdigest(),
        losses=tuple(losses),
    )
    document = report.to_json(options, base_model, data)
    (out / REPORT_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return report


def _loop(
    model: Any,
    examples: list[TokenizedExample],
    pad_id: int,
    options: TrainOptions,
    progress: bool,
) -> list[float]:
    """AdamW over shuffled, padded batches; returns the mean loss of each optimizer step."""
    import torch

    batches_per_epoch = math.ceil(len(examples) / options.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / options.grad_accum)
    total = options.max_steps or steps_per_epoch * options.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(options.seed)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    with bar:
        while len(losses) < total:
            perm = torch.randperm(len(examples), generator=order).tolist()
            batches = [
                [examples[i] for i in perm[start : start + options.batch_size]]
                for start in range(0, len(perm), options.batch_size)
            ]
            for first in range(0, len(batches), options.grad_accum):
                group = batches[first : first + options.grad_accum]
                # Sum over every answer token of the group, divided once: the step's loss is
                # the mean over answer tokens, as if the group were one batch.
                count = sum(e.answer_tokens for batch in group for e in batch)
                step_loss = 0.0
                for batch in group:
                    loss = _answer_loss(model, batch, pad_id, options.device) / count
                    loss.backward()
                    step_loss += float(loss.detach())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                if len(losses) >= total:
                    break
    model.eval()
    return losses


def _answer_loss(model: Any, batch: list[TokenizedExample], pad_id: int, device: str) -> Any:
    """Summed cross-entropy of the answer tokens, with logits computed for those positions only."""
    import torch

    inputs = {k: v.to(device) for k, v in pad_batch(batch, pad_id).items()}
    labels = inputs.pop("labels")
    # Position i predicts token i + 1: keep one more logit than labelled positions.
    keep = answer_span(batch) + 1
    logits = model(**inputs, logits_to_keep=keep).logits[:, :-1]
    targets = labels[:, -(keep - 1) :]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _save(model: Any, out: Path) -> None:
    """Write beside `out` and rename, so a crash never leaves a half-written adapter there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a served adapter is read by others
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for path in tmp.iterdir():
            path.chmod(0o666 & ~umask)
        check_servable(read_lora_config(tmp), out.name, max(VLLM_LORA_RANKS))
        if out.exists():
            out.rmdir()  # empty: checked before training
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Train a LoRA adapter with TRL's SFTTrainer and PEFT, in a form vLLM can serve."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapters.dataset import (
    ChatRecord,
    Split,
    TokenizedExample,
    end_of_turn_ids,
    read_chat_jsonl,
    split_records,
    tokenize_example,
)
from adapters.train_options import (
    ADAPTER_FILES,
    REPORT_FILE,
    TrainOptions,
    TrainReport,
)
from engine.lora import check_servable, read_lora_config
from ragtune.errors import AdapterError, InvalidInput, NotFound
from ragtune.settings import VLLM_LORA_RANKS

# final_loss averages this many last steps: one step's loss depends on which batch it saw.
_FINAL_WINDOW = 10


def train_lora(
    base_model: str,
    data: Path,
    out: Path,
    options: TrainOptions,
    *,
    eval_data: Path | None = None,
    progress: bool = False,
) -> TrainReport:
    """Train a LoRA adapter for `base_model` on `data` (validated on `eval_data`, else on a
    held-out part of `data`); write it and training.json to `out`."""
    options.check(name=out.name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} already exists and is not empty; choose a new folder for it")
    records = read_chat_jsonl(data)
    if eval_data is not None:
        split = Split(records, read_chat_jsonl(eval_data))
    else:
        split = split_records(records, options.validation, options.seed, data)
    device = _device(options)
    started = time.monotonic()
    with _quiet():
        tokenizer, model = _load(base_model, options, device)
        end_ids = end_of_turn_ids(tokenizer, model.generation_config.eos_token_id)
        train_set = _tokenize(tokenizer, split.train, options, end_ids)
        eval_set = _tokenize(tokenizer, split.eval, options, end_ids)
        train_kept = _kept(train_set, options, "training")
        eval_kept = _kept(eval_set, options, "validation") if eval_set else []
        out.parent.mkdir(parents=True, exist_ok=True)
        # Checkpoints (one an epoch, for the best epoch's reload) live beside `out` until done.
        with tempfile.TemporaryDirectory(
            dir=out.parent, prefix=f".{out.name}.", suffix=".train", ignore_cleanup_errors=True
        ) as work:
            trainer = _trainer(
                model, tokenizer, train_kept, eval_kept, options, device, Path(work), progress
            )
            trainer.train()
            losses, eval_losses = _losses(trainer.state.log_history)
            best = min(range(len(eval_losses)), key=eval_losses.__getitem__, default=None)
            report = TrainReport(
                out=out,
                base_model=base_model,
                data=data,
                data_sha256=hashlib.sha256(data.read_bytes()).hexdigest(),
                eval_data=eval_data,
                options=options,
                examples=len(train_kept),
                eval_examples=len(eval_kept),
                truncated=sum(e.truncated for e in train_set + eval_set),
                dropped=len(train_set) + len(eval_set) - len(train_kept) - len(eval_kept),
                answer_tokens=sum(e.answer_tokens for e in train_kept),
                steps=int(trainer.state.global_step),
                losses=losses,
                initial_loss=losses[0],
                final_loss=sum(losses[-_FINAL_WINDOW:]) / len(losses[-_FINAL_WINDOW:]),
                eval_losses=eval_losses,
                best_eval_loss=None if best is None else eval_losses[best],
                best_epoch=None if best is None else best + 1,
                stopped_early=trainer.state.global_step < trainer.state.max_steps,
                seconds=round(time.monotonic() - started, 2),
                device=device,
                versions=_versions(),
            )
            _save(trainer.model, out, report.to_json())
    return report


def _losses(history: list[dict[str, Any]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The training loss of each step and the validation loss of each epoch, from HF's log."""
    return (
        tuple(float(h["loss"]) for h in history if "loss" in h),
        tuple(float(h["eval_loss"]) for h in history if "eval_loss" in h),
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars but ours (loading, dataset preparation) and no known warnings."""
    import datasets
    from transformers.utils import logging as hf_logging

    shown = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            # PEFT calls a transformers API that transformers 5 renamed; harmless to v6.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            yield
    finally:
        if shown[0]:
            datasets.enable_progress_bars()
        if shown[1]:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _device(options: TrainOptions) -> str:
    """The device to train on, and the refusals of what it cannot do (before loading)."""
    import torch

    cuda = torch.cuda.is_available()
    if options.device == "cuda" and not cuda:
        raise InvalidInput(
            f"--device cuda: torch {torch.__version__} sees no CUDA device; train on the CPU "
            f"with --device cpu"
        )
    device = "cuda" if options.device == "cuda" or (options.device == "auto" and cuda) else "cpu"
    if options.qlora:
        if device != "cuda":
            why = "--device cpu was asked for" if cuda else "torch sees no CUDA device here"
            raise InvalidInput(
                f"--qlora loads the base model in 4 bits with bitsandbytes, which needs CUDA, "
                f"and {why}; train without --qlora"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise InvalidInput(
                "--qlora needs the bitsandbytes package, which is not installed: "
                "`pip install bitsandbytes`, or train without --qlora"
            )
    return device


def _bf16(device: str) -> bool:
    import torch

    # On CPU, fp32: bf16 loses the small LoRA updates there and is rarely faster.
    return device == "cuda" and torch.cuda.is_bf16_supported()


def _load(base_model: str, options: TrainOptions, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if _bf16(device) else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if options.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": 0}  # a 4-bit model is placed at load and cannot move
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True, **kwargs)
    except OSError as exc:
        raise NotFound(
            f"base model {base_model!r} could not be loaded ({str(exc).splitlines()[0]}); pass "
            f"--base with a local Hugging Face model folder, or run `ragtune model prepare`"
        ) from exc
    if tokenizer.chat_template is None:
        raise InvalidInput(f"base model {base_model!r} has no chat template to format the data")
    return tokenizer, model


def _tokenize(
    tokenizer: Any, records: list[ChatRecord], options: TrainOptions, end_ids: set[int]
) -> list[TokenizedExample]:
    return [
        tokenize_example(tokenizer, example, options.max_length, end_ids)
        for record in records
        for example in record.examples()
    ]


def _kept(
    examples: list[TokenizedExample], options: TrainOptions, which: str
) -> list[TokenizedExample]:
    kept = [e for e in examples if e.answer_tokens > 0]
    if not kept:
        raise InvalidInput(
            f"every {which} example's prompt is at least max_length={options.max_length} "
            f"tokens long, so no answer token is left to learn; raise --max-length"
        )
    return kept


def _trainer(
    model: Any,
    tokenizer: Any,
    train: list[TokenizedExample],
    held_out: list[TokenizedExample],
    options: TrainOptions,
    device: str,
    work: Path,
    progress: bool,
) -> Any:
    """TRL's SFTTrainer on pre-tokenized pairs: completion_mask makes the loss the answer's."""
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback, PrinterCallback

    # trl's lazy __init__ hides its names from mypy.
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    validate = bool(held_out)
    per_epoch = "epoch" if validate else "no"
    config = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.lr,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_ratio,  # below 1: a fraction of the steps
        weight_decay=0.0,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        seed=options.seed,
        data_seed=options.seed,
        max_length=options.max_length,
        completion_only_loss=True,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy=per_epoch,
        save_strategy=per_epoch,
        # Adapter weights only; all kept (small), so transformers never rotates them.
        save_only_model=True,
        load_best_model_at_end=validate,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        use_cpu=device == "cpu",
        bf16=_bf16(device),
        # Small models: the memory it saves is not worth the recomputation.
        activation_checkpointing=False,
        dataloader_pin_memory=device == "cuda",
        disable_tqdm=True,
        report_to="none",
    )
    callbacks: list[Any] = [_progress(progress)]
    if validate and options.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(options.early_stopping_patience))
    lora = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        rank_pattern=dict(options.rank_pattern),
        alpha_pattern=dict(options.alpha_pattern),
        task_type="CAUSAL_LM",
    )
    try:
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=_dataset(train),
            eval_dataset=_dataset(held_out) if validate else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )
    except ValueError as exc:
        if "Target module" in str(exc) or "target_modules" in str(exc):
            raise AdapterError(
                f"cannot put LoRA on {list(options.target_modules)} in this model: {exc}"
            ) from exc
        raise
    trainer.remove_callback(PrinterCallback)  # it prints every step's log as a dict
    return trainer


def _dataset(examples: list[TokenizedExample]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "completion_mask": [e.completion_mask for e in examples],
        }
    )


def _progress(enabled: bool) -> Any:
    """A progress bar of optimizer steps showing the last training and validation loss."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar: Any = None
        shown: dict[str, str] = {}  # noqa: RUF012 (replaced per instance)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(total=state.max_steps, desc="train", unit="step", disable=not enabled)
            self.shown = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(state.global_step - self.bar.n)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            names = {"loss": "loss", "eval_loss": "val"}
            self.shown.update({names[k]: f"{v:.4f}" for k, v in (logs or {}).items() if k in names})
            if self.bar is not None:
                self.bar.set_postfix(self.shown)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.close()

    return Progress()


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "trl", "peft")}


def _save(model: Any, out: Path, report: dict[str, Any]) -> None:
    """Write beside `out` and rename, so a crash never leaves a half-written adapter there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a served adapter is read by others
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for path in tmp.iterdir():
            if path.name not in ADAPTER_FILES:  # PEFT's model card (README.md)
                path.unlink()
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o666 & ~umask)
        check_servable(read_lora_config(tmp), out.name, max(VLLM_LORA_RANKS))
        if out.exists():
            out.rmdir()  # empty: checked before training
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

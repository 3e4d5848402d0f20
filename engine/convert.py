"""GGUF to a Hugging Face folder of bf16 safetensors that transformers, PEFT and vLLM all read."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragtune.errors import MissingDependency


def convert_gguf(
    gguf: Path,
    out: Path,
    *,
    generation: dict[str, Any],
    max_length: int,
    progress: bool,
) -> None:
    """Dequantize `gguf` into `out` (bf16 safetensors, tokenizer, chat template).

    Takes about a minute and 3 GB of RAM for a 0.5B model. `generation` becomes
    generation_config.json; `max_length` the tokenizer's model_max_length.
    """
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF through it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    except ImportError as exc:
        raise MissingDependency(
            f"converting the model needs {exc.name}: run `pip install -e .` in the ragtune "
            f"checkout (it installs torch, transformers and gguf), then run "
            f"`ragtune model prepare` again"
        ) from exc

    folder, name = str(gguf.parent), gguf.name
    with _quiet_transformers(progress):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        # The GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not
        # serializable"), so its dequantized weights move into a plain model of the same config.
        source = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.bfloat16, local_files_only=True
        )
        config = source.config.to_dict()
        config.pop("quantization_config", None)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                type(source.config).from_dict(config), dtype=torch.bfloat16
            )
        model.load_state_dict(source.state_dict(), assign=True, strict=True)
        del source
        # A no-op here (tie_word_embeddings is false: the GGUF ships output.weight), kept so
        # a GGUF with tied embeddings converts correctly too.
        model.tie_weights()
        model.generation_config = GenerationConfig(**generation)  # type: ignore[no-untyped-call]
        model.save_pretrained(out)
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(out)
    _finish_tokenizer_config(out)


def _finish_tokenizer_config(out: Path) -> None:
    """Keep the chat template in tokenizer_config.json too, where older readers and vLLM look."""
    path = out / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    template = out / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    # How the GGUF was opened, not what the tokenizer is.
    for key in ("local_files_only", "is_local"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def _quiet_transformers(progress: bool) -> Iterator[None]:
    """Hide transformers' advice to load in float32 (we convert; bf16 is the point), and its
    progress bars unless `progress`."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    # The dequantizing loop uses a plain tqdm that the switch above does not reach.
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    if not progress:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if gguf_tqdm is not None:
            setattr(gguf_utils, "tqdm", functools.partial(gguf_tqdm, disable=True))  # noqa: B010
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if gguf_tqdm is not None:
            setattr(gguf_utils, "tqdm", gguf_tqdm)  # noqa: B010

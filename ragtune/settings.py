"""Settings shared by every ragtune command: one pydantic-settings object, env prefix RAGTUNE_."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QdrantSettings(_Section):
    """Where the vectors live: a server when `url` is set, else embedded on disk at `path`."""

    url: str | None = None
    api_key: SecretStr | None = None
    # None means `<data_dir>/qdrant`; ":memory:" keeps everything in the process (tests).
    path: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)


class EmbeddingSettings(_Section):
    """The dense embedder: a model name or a local sentence-transformers folder."""

    model: str = DEFAULT_EMBEDDING_MODEL
    batch_size: int = Field(default=32, ge=1, le=4096)
    device: str = "cpu"
    # The hub is never contacted unless a deployment explicitly allows it.
    allow_download: bool = False


class ChunkingSettings(_Section):
    """Chunk sizes, in the embedder's own tokens."""

    # None means "as large as the embedder reads" (254 for all-MiniLM-L6-v2: 256 minus its
    # two special tokens).
    size: int | None = Field(default=None, ge=16)
    overlap: int = Field(default=32, ge=0)


class SparseSettings(_Section):
    """BM25 term weighting for the sparse lexical vector (IDF is applied by Qdrant)."""

    k1: float = Field(default=1.2, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    # Qdrant's own BM25 (fastembed) uses a fixed average length instead of corpus statistics,
    # so stored vectors never go stale as the collection grows.
    avg_len: float = Field(default=256.0, gt=0)
    language: str = "english"


# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LLMSettings(_Section):
    """The base model and the engine that serves it with LoRA adapters."""

    # "auto": vLLM when `vllm_url` is set, else the embedded engine.
    backend: Literal["auto", "embedded", "vllm"] = "auto"
    # A local Hugging Face folder or a hub id; None means the default model prepared by
    # `ragtune model prepare` under `<data_dir>/models/`.
    model: str | None = None
    # The name vLLM serves the base model under (`--served-model-name`).
    served_model_name: str = "base"
    vllm_url: str | None = None
    # More vLLM replicas serving the same model: requests are spread over `vllm_url` and
    # these, and adapters are loaded on all of them.
    vllm_replicas: list[str] = Field(default_factory=list)
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=300.0, gt=0)
    connect_retries: int = Field(default=3, ge=0, le=10)
    # The same limits as vLLM's --max-loras and --max-lora-rank, for both engines.
    max_loras: int = Field(default=4, ge=1, le=64)
    max_lora_rank: int = 16
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "cpu"
    allow_download: bool = False

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, VLLM_LORA_RANKS))} (as in vLLM)")
        return value

    def vllm_urls(self) -> list[str]:
        """Every vLLM server this process talks to, `vllm_url` first."""
        urls = [self.vllm_url] if self.vllm_url else []
        return urls + [u for u in self.vllm_replicas if u not in urls]

    def use_vllm(self) -> bool:
        return self.backend == "vllm" or (self.backend == "auto" and bool(self.vllm_urls()))


API_KEY_MIN_LENGTH = 16
_KEY_ADVICE = (
    f"use random keys of at least {API_KEY_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)"
)


class ApiSettings(_Section):
    """The HTTP service: where it listens, its routes file, its limits and its API keys."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    # None means the routes file shipped with ragtune (service/routes/default.yaml).
    routes_file: Path | None = None
    max_body_bytes: int = Field(default=1_000_000, ge=1_024)
    max_messages: int = Field(default=64, ge=1)
    # The most tokens a caller may ask one answer to generate.
    max_tokens: int = Field(default=1_024, ge=1, le=32_768)
    # Retrieval plus generation; past it the caller gets 503 with Retry-After.
    request_timeout_s: float = Field(default=120.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)
    # Bearer keys for the user endpoints (chat, summarize, OpenAI); empty means open, as behind
    # a gateway. Several so that a key can be rotated without downtime. NoDecode: the env
    # value is parsed below, so a value that is not a JSON list gets a message, not a traceback.
    keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(
                'api.keys must be a JSON list, e.g. RAGTUNE_API__KEYS=\'["key-1", "key-2"]\''
            ) from None

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            value = key.get_secret_value()
            if not value.strip():
                raise ValueError(f"api.keys[{i}] is empty; {_KEY_ADVICE}")
            if not all(33 <= ord(c) <= 126 for c in value):
                # It travels in an HTTP header, which strips spaces and may not carry the rest.
                raise ValueError(
                    f"api.keys[{i}] has spaces or characters that are not printable ASCII; "
                    f"{_KEY_ADVICE}"
                )
            if len(value) < API_KEY_MIN_LENGTH:
                raise ValueError(
                    f"api.keys[{i}] is shorter than {API_KEY_MIN_LENGTH} characters; {_KEY_ADVICE}"
                )
        return keys


class AdminSettings(_Section):
    """The admin API (adapter registry and hot-swap); off unless a token is set."""

    token: SecretStr | None = None
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1_024)


class AdapterSettings(_Section):
    """The adapter registry on disk, shared by every API process that mounts it."""

    # None means `<data_dir>/adapters`.
    root: Path | None = None
    max_adapter_bytes: int = Field(default=512 * 1024 * 1024, ge=1_024)
    # How often a process re-reads the registry (to follow another process's alias flips)
    # and reconciles its backends with it.
    sync_interval_s: float = Field(default=2.0, gt=0)
    # How long a swap waits for requests still running on the old version before unloading.
    drain_timeout_s: float = Field(default=120.0, gt=0)


class IngestSettings(_Section):
    default_collection: str = "docs"
    # Documents are written in groups of this many chunks (embedding batches are separate).
    write_batch: int = Field(default=256, ge=1)


class Settings(BaseSettings):
    """All of ragtune's settings; nested sections read from RAGTUNE_<SECTION>__<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_",
        env_nested_delimiter="__",
        extra="forbid",
        # A refused value is often a secret (a key, a token): errors name the setting and why,
        # never the value.
        hide_input_in_errors=True,
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".ragtune")
    qdrant: QdrantSettings = QdrantSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    sparse: SparseSettings = SparseSettings()
    ingest: IngestSettings = IngestSettings()
    llm: LLMSettings = LLMSettings()
    api: ApiSettings = ApiSettings()
    admin: AdminSettings = AdminSettings()
    adapters: AdapterSettings = AdapterSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunking.size is not None and self.chunking.overlap >= self.chunking.size:
            raise ValueError(
                f"chunking.overlap ({self.chunking.overlap}) must be smaller than "
                f"chunking.size ({self.chunking.size})"
            )
        if self.environment == "production":
            for name, secret in (
                ("qdrant.api_key", self.qdrant.api_key),
                ("llm.api_key", self.llm.api_key),
                ("admin.token", self.admin.token),
            ):
                if secret is not None:
                    _refuse_placeholder(name, secret)
        if self.admin.token is not None and any(
            key.get_secret_value() == self.admin.token.get_secret_value() for key in self.api.keys
        ):
            raise ValueError(
                "admin.token is also one of api.keys: an API key must not open the admin API; "
                "give the admin API a token of its own"
            )
        if self.llm.backend == "vllm" and not self.llm.vllm_urls():
            raise ValueError("llm.backend is 'vllm' but llm.vllm_url is not set")
        return self

    def models_dir(self) -> Path:
        """Where prepared base models live."""
        return self.data_dir / "models"

    def adapters_root(self) -> Path:
        """Where the adapter registry keeps its records and adapter files."""
        return self.adapters.root or self.data_dir / "adapters"

    def qdrant_location(self) -> str:
        """The embedded Qdrant location: the configured path, or `<data_dir>/qdrant`."""
        return self.qdrant.path or str(self.data_dir / "qdrant")


_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "password", "token", "xxx"}


def _refuse_placeholder(name: str, value: SecretStr) -> None:
    if value.get_secret_value().strip().lower() in _PLACEHOLDERS:
        raise ValueError(f"{name} is a placeholder; set a real secret in production")

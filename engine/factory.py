"""Pick and build the configured generation backend."""

from __future__ import annotations

from engine.backend import Backend
from ragtune.settings import Settings


def build_backend(settings: Settings) -> Backend:
    """vLLM over HTTP when `llm.vllm_url` is set (or `llm.backend=vllm`), else embedded."""
    if settings.llm.use_vllm():
        from engine.vllm import VLLMBackend

        return VLLMBackend(settings.llm)
    from engine.embedded import EmbeddedBackend
    from engine.model import resolve_base_model

    return EmbeddedBackend.load(resolve_base_model(settings), settings.llm)


def build_backends(settings: Settings) -> list[Backend]:
    """One backend per vLLM server (`llm.vllm_url` and `llm.vllm_replicas`), or the embedded one."""
    if settings.llm.use_vllm():
        from engine.vllm import VLLMBackend

        return [
            VLLMBackend(settings.llm.model_copy(update={"vllm_url": url}))
            for url in settings.llm.vllm_urls()
        ]
    return [build_backend(settings)]

"""Pick and build the configured generation backend."""

from __future__ import annotations

from ragtune.settings import Settings
from service.llm.backend import Backend


def build_backend(settings: Settings) -> Backend:
    """vLLM over HTTP when `llm.vllm_url` is set (or `llm.backend=vllm`), else embedded."""
    if settings.llm.use_vllm():
        from service.llm.vllm import VLLMBackend

        return VLLMBackend(settings.llm)
    from service.llm.embedded import EmbeddedBackend
    from service.llm.model import resolve_base_model

    return EmbeddedBackend.load(resolve_base_model(settings), settings.llm)


def build_backends(settings: Settings) -> list[Backend]:
    """One backend per vLLM server (`llm.vllm_url` and `llm.vllm_replicas`), or the embedded one."""
    if settings.llm.use_vllm():
        from service.llm.vllm import VLLMBackend

        return [
            VLLMBackend(settings.llm.model_copy(update={"vllm_url": url}))
            for url in settings.llm.vllm_urls()
        ]
    return [build_backend(settings)]

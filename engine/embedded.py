"""The embedded engine: transformers + PEFT in the API process, LoRA adapters loaded at run time.

Every operation on the model (generation, loading and unloading adapters) runs on one worker
thread, in arrival order. Requests therefore never share generation state, an adapter is
never swapped under a request in flight, and loading needs no restart. It is the engine for
a laptop or a CPU-only box; vLLM is the one for throughput.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.decoding import StopTrimmer, TokenStream
from engine.lora import check_servable, read_lora_config
from engine.structured import GrammarCache
from engine.types import Completion, FinishReason, GenerationRequest, StreamDelta, Usage
from ragtune.errors import AdapterError, InvalidInput, NotFound
from ragtune.settings import LLMSettings

_DONE = object()
# vLLM's rule: a temperature below this is greedy (the logits divided by 1e-300 overflow, and
# sampling from the resulting NaN probabilities raises).
_GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class _Finished:
    """The last event of a generation."""

    finish_reason: FinishReason
    usage: Usage
    token_ids: list[int]

    @property
    def delta(self) -> StreamDelta:
        return StreamDelta(finish_reason=self.finish_reason, usage=self.usage)


class EmbeddedBackend:
    """A Backend that runs the model in this process."""

    name = "embedded"

    def __init__(self, model: Any, tokenizer: Any, settings: LLMSettings) -> None:
        self._base = model
        self._peft: Any = None  # a PeftModel once the first adapter is loaded
        self._tokenizer = tokenizer
        self._settings = settings
        self._adapters: dict[str, Path] = {}
        self._grammars = GrammarCache(tokenizer, int(model.config.vocab_size))
        self._context = int(getattr(model.config, "max_position_embeddings", 32_768))
        eos = model.generation_config.eos_token_id
        self._eos: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-llm")

    @classmethod
    def load(cls, model_path: str, settings: LLMSettings) -> EmbeddedBackend:
        """Load the base model and tokenizer from a local folder (or the hub if allowed)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        # On CPU, fp32 is the fast path unless the processor has bf16 matrix units.
        dtype = dtypes.get(settings.dtype, torch.float32 if settings.device == "cpu" else "auto")
        local = not settings.allow_download
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local)
            model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=dtype, local_files_only=local
            )
        except OSError as exc:
            raise NotFound(
                f"base model {model_path!r} could not be loaded ({str(exc).splitlines()[0]}); "
                f"run `ragtune model prepare` or set RAGTUNE_LLM__MODEL to a local folder"
            ) from exc
        model = model.to(settings.device)  # type: ignore[arg-type]
        model.eval()
        if tokenizer.chat_template is None:
            raise InvalidInput(f"base model {model_path!r} has no chat template")
        return cls(model, tokenizer, settings)

    # -- generation ---------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        text: list[str] = []
        async for event in self._events(request):
            if isinstance(event, _Finished):
                return Completion(
                    text="".join(text),
                    finish_reason=event.finish_reason,
                    usage=event.usage,
                    token_ids=event.token_ids,
                )
            text.append(event.text)
        raise RuntimeError("generation ended without a final delta")  # pragma: no cover

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        return self._deltas(request)

    async def _deltas(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        async for event in self._events(request):
            yield event.delta if isinstance(event, _Finished) else event

    async def _events(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | _Finished]:
        """Run the request on the worker; its deltas arrive here as they are decoded."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(request, emit, cancelled)
            finally:
                emit(_DONE)

        future = loop.run_in_executor(self._worker, work)
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            await future  # re-raises what the worker raised
        finally:
            # A caller that went away stops the generation at the next token.
            cancelled.set()

    def _generate(
        self,
        request: GenerationRequest,
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model = self._model_for(request.adapter)
        messages = [m.model_dump() for m in request.messages]
        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self._base.device)
        prompt_len = int(inputs["input_ids"].shape[1])
        sampling = request.sampling
        if prompt_len + sampling.max_tokens > self._context:
            raise InvalidInput(
                f"the prompt has {prompt_len} tokens and max_tokens is {sampling.max_tokens}: "
                f"more than the model's context of {self._context} tokens; shorten the "
                f"messages or lower max_tokens"
            )
        tokens = TokenStream(self._tokenizer, StopTrimmer(sampling.stop), emit, self._eos)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancelled.is_set() or tokens.stopped
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "streamer": tokens,
            "stopping_criteria": StoppingCriteriaList([_Stop()]),
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if sampling.temperature >= _GREEDY_BELOW:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if request.json_schema is not None:
            kwargs["logits_processor"] = [self._grammars.processor(request.json_schema)]
        with torch.inference_mode():
            if request.adapter is None and self._peft is not None:
                with self._peft.disable_adapter():
                    model.generate(**inputs, **kwargs)
            else:
                model.generate(**inputs, **kwargs)
        tokens.flush()
        emit(
            _Finished(
                finish_reason="stop" if tokens.stopped or tokens.ended_with_eos else "length",
                usage=Usage(prompt_tokens=prompt_len, completion_tokens=len(tokens.ids)),
                token_ids=tokens.ids,
            )
        )

    def _model_for(self, adapter: str | None) -> Any:
        if adapter is None:
            return self._peft if self._peft is not None else self._base
        if adapter not in self._adapters:
            loaded = ", ".join(sorted(self._adapters)) or "none"
            raise NotFound(f"adapter {adapter!r} is not loaded (loaded: {loaded})")
        self._peft.set_adapter(adapter)
        return self._peft

    # -- adapters -----------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load, name, path)

    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        info = read_lora_config(path)
        check_servable(info, name, self._settings.max_lora_rank)
        if name in self._adapters:
            if self._adapters[name] == path:
                return  # already loaded from the same folder: loading is idempotent
            raise AdapterError(
                f"adapter {name!r} is already loaded from {self._adapters[name]}; unload it "
                f"first, or load the new weights under a new (versioned) name"
            )
        if len(self._adapters) >= self._settings.max_loras:
            raise AdapterError(
                f"{len(self._adapters)} adapters are loaded, the limit (max_loras) is "
                f"{self._settings.max_loras}; unload one first"
            )
        try:
            with warnings.catch_warnings():
                # PEFT calls a transformers API that transformers 5 renamed; harmless to v6.
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
                    self._peft.eval()
                else:
                    self._peft.load_adapter(str(path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise AdapterError(
                f"adapter {name!r} from {path} does not fit this model: {exc}"
            ) from exc
        self._adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._unload, name)

    def _unload(self, name: str) -> None:
        if name not in self._adapters:
            raise NotFound(f"adapter {name!r} is not loaded, so it cannot be unloaded")
        del self._adapters[name]
        if self._adapters:
            with warnings.catch_warnings():
                # PEFT warns when the active adapter goes; every request sets its own anyway.
                warnings.filterwarnings("ignore", "Adapter .* was active", UserWarning)
                self._peft.delete_adapter(name)
            return
        # PEFT cannot run with zero adapters: take the LoRA layers out, weights untouched.
        self._base = self._peft.unload()
        self._peft = None

    async def list_adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        # Waits for a generation in progress: off the event loop.
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

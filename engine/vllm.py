"""The vLLM backend: vLLM's OpenAI-compatible server over HTTP, LoRA adapters loaded at run time.

Loading is idempotent: loading a name that vLLM already holds from the same folder does
nothing, and the same name from another folder is refused (unload it first), so a request
in flight never silently switches weights. The HTTP (pooling, connect-only retries, error
mapping) is in vllm_http.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from engine.lora import CONFIG_FILE, check_servable, read_lora_config
from engine.types import Completion, FinishReason, GenerationRequest, StreamDelta, Usage
from engine.vllm_http import (
    PROBE_TIMEOUT_S,
    Answer,
    VLLMConnection,
    engine_dead,
    error_message,
    parse_json,
    sse_data,
)
from ragtune.errors import AdapterError, InvalidInput, NotFound, UpstreamUnavailable
from ragtune.settings import LLMSettings


class VLLMBackend:
    """A `Backend` talking to one vLLM OpenAI server (`ragtune vllm serve` starts one on CPU)."""

    name = "vllm"

    def __init__(
        self,
        settings: LLMSettings,
        retry_backoff_s: float = 0.5,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`trace_configs` are aiohttp hooks that watch the requests (tests count connection
        attempts with them)."""
        if not settings.vllm_url:
            raise InvalidInput(
                "llm.vllm_url is not set; point RAGTUNE_LLM__VLLM_URL at the vLLM server "
                "(e.g. http://127.0.0.1:8000), or use the embedded backend"
            )
        self._settings = settings
        self._url = settings.vllm_url.rstrip("/")
        self._http = VLLMConnection(settings, self._url, retry_backoff_s, trace_configs)
        self._probe_s = min(settings.timeout_s, PROBE_TIMEOUT_S)

    # -- generation ---------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        """The whole answer at once, with the generated token ids."""
        body = self._chat_body(request)
        body["return_token_ids"] = True
        answer = await self._http.send("POST", "/v1/chat/completions", body)
        if answer.status != 200:
            await self._raise_for_chat(answer, request)
        data = parse_json(answer, self._url)
        try:
            choice = data["choices"][0]
            usage = data["usage"]
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=_finish_reason(choice.get("finish_reason")),
                usage=Usage(
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                ),
                token_ids=choice.get("token_ids") or [],
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise UpstreamUnavailable(
                f"vLLM at {self._url} sent a chat completion without {exc}; is it an "
                f"OpenAI-compatible vLLM server?"
            ) from exc

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The answer piece by piece (server-sent events); the last delta has usage."""
        body = self._chat_body(request)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = await self._http.open("POST", "/v1/chat/completions", body)
        try:
            if response.status != 200:
                answer = await self._http.read(response, "POST", "/v1/chat/completions")
                await self._raise_for_chat(answer, request)
            finish: FinishReason | None = None
            usage: Usage | None = None
            done = False
            async with aclosing(sse_data(response, self._url)) as lines:
                async for line in lines:
                    if line == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(line)
                    except ValueError as exc:
                        raise UpstreamUnavailable(
                            f"vLLM at {self._url} sent a stream event that is not JSON "
                            f"({line!r:.200}); is llm.vllm_url a vLLM OpenAI server?"
                        ) from exc
                    if "error" in chunk or chunk.get("object") == "error":
                        self._http.raise_from_body(chunk, "the streamed answer")
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield StreamDelta(text=text)
                        if choice.get("finish_reason") is not None:
                            finish = _finish_reason(choice["finish_reason"])
                    if chunk.get("usage"):
                        usage = Usage(
                            prompt_tokens=chunk["usage"]["prompt_tokens"],
                            completion_tokens=chunk["usage"]["completion_tokens"],
                        )
            if not done or finish is None or usage is None:
                raise UpstreamUnavailable(
                    f"vLLM at {self._url} ended the stream before finishing the answer; "
                    f"check its log (the engine may have died) and retry"
                )
            yield StreamDelta(finish_reason=finish, usage=usage)
        finally:
            # A body not read to its end (the consumer stopped early, or an error) makes
            # aiohttp close the connection instead of pooling it half-read.
            response.release()

    def _chat_body(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": request.adapter or self._settings.served_model_name,
            "messages": [m.model_dump() for m in request.messages],
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if request.json_schema is not None:
            # vLLM 0.32 silently ignores the older `guided_json` field; this one it honours.
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
        return body

    async def _raise_for_chat(self, answer: Answer, request: GenerationRequest) -> NoReturn:
        message = error_message(answer)
        if answer.status == 404 and "does not exist" in message:
            loaded = await self._loaded_for_message()
            if request.adapter is None:
                raise NotFound(
                    f"vLLM at {self._url} serves no model named "
                    f"'{self._settings.served_model_name}'; set llm.served_model_name to the "
                    f"name vLLM was started with (--served-model-name)"
                )
            raise NotFound(
                f"adapter '{request.adapter}' is not loaded (loaded: {loaded}); load it first"
            )
        self._http.raise_status(answer.status, message, "the chat request")

    async def _loaded_for_message(self) -> str:
        try:
            names = await self.list_adapters()
        except UpstreamUnavailable:
            return "unknown: vLLM did not list its models"
        return ", ".join(sorted(names)) or "none"

    # -- adapters -----------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA folder under `name`; a no-op if it is loaded from the same folder."""
        # A small file read, but off the loop: serving requests share it.
        folder = await asyncio.to_thread(path.expanduser().resolve)
        await asyncio.to_thread(self._check_servable, name, folder)
        if await self._already_loaded(name, folder):
            return
        answer = await self._http.send(
            "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)}
        )
        if answer.status == 200:
            return
        status, message = answer.status, error_message(answer)
        # Another caller may have loaded it between our check and our request.
        already = status == 400 and "already been loaded" in message
        if already and await self._already_loaded(name, folder):
            return
        if status in (401, 403) or engine_dead(status, message):
            self._http.raise_status(status, message, f"loading adapter '{name}'")
        # vLLM answers a bad folder with 404 and a rank or module it cannot serve with 500.
        hint = (
            f"check that {folder} exists on vLLM's machine and holds a PEFT LoRA adapter"
            if status == 404
            else "restart vLLM with limits that fit it (--max-lora-rank) or retrain it without "
            "modules vLLM cannot serve (lm_head, embed_tokens, modules_to_save)"
        )
        raise AdapterError(
            f"vLLM could not load adapter '{name}' from {folder} ({message}); {hint}"
        )

    async def unload_adapter(self, name: str) -> None:
        """Unload `name`; NotFound if vLLM does not hold it."""
        answer = await self._http.send("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if answer.status == 200:
            return
        message = error_message(answer)
        if answer.status == 404:
            loaded = await self._loaded_for_message()
            raise NotFound(f"adapter '{name}' is not loaded (loaded: {loaded}); nothing to unload")
        self._http.raise_status(answer.status, message, f"unloading adapter '{name}'")

    async def list_adapters(self) -> list[str]:
        """Names of the LoRA adapters vLLM holds now (its models that have a parent)."""
        return [
            entry["id"]
            for entry in await self._models()
            if entry.get("parent") is not None and entry["id"] != self._settings.served_model_name
        ]

    async def _models(self) -> list[dict[str, Any]]:
        answer = await self._http.send("GET", "/v1/models", timeout_s=self._probe_s)
        if answer.status != 200:
            self._http.raise_status(answer.status, error_message(answer), "listing models")
        data = parse_json(answer, self._url).get("data")
        if not isinstance(data, list):
            raise UpstreamUnavailable(
                f"vLLM at {self._url} answered /v1/models without a model list; is it a vLLM "
                f"OpenAI server?"
            )
        return data

    async def _already_loaded(self, name: str, folder: Path) -> bool:
        for entry in await self._models():
            if entry.get("id") != name:
                continue
            root = entry.get("root")
            if root is not None and Path(root) == folder:
                return True
            raise AdapterError(
                f"adapter '{name}' is already loaded from {root}, not {folder}; unload it "
                f"first or load the new folder under another name"
            )
        return False

    def _check_servable(self, name: str, folder: Path) -> None:
        """Refuse what vLLM would (a rank above max_lora_rank, counting rank_pattern) before
        it sees the adapter: its own error is a 500."""
        if not folder.exists():
            # vLLM may run on another machine with its own file system: let it decide.
            return
        if not (folder / CONFIG_FILE).is_file():
            raise AdapterError(
                f"adapter '{name}': {folder} has no {CONFIG_FILE}; point at a PEFT LoRA "
                f"folder (the one `save_pretrained` wrote)"
            )
        check_servable(read_lora_config(folder), name, self._settings.max_lora_rank)

    async def health(self) -> None:
        """Return if vLLM's engine answers /health; raise UpstreamUnavailable if not."""
        answer = await self._http.send("GET", "/health", timeout_s=self._probe_s)
        if answer.status != 200:
            raise UpstreamUnavailable(
                f"vLLM at {self._url} is not healthy (GET /health answered "
                f"{answer.status}); check its log and restart it"
            )

    async def aclose(self) -> None:
        """Close the HTTP connections; a later request opens new ones."""
        await self._http.close()


def _finish_reason(value: object) -> FinishReason:
    # vLLM also reports "abort" and "tool_calls"; the contract knows only these two.
    return "length" if value == "length" else "stop"

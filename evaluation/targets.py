"""Where a case is sent: the app's own chat service in this process, or a running ragtune over
HTTP. Both take the same request a user's /v1/chat call would make, so an evaluation measures
the serving path users get (routes, retrieval, prompt building, adapter resolution)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from engine.types import ChatMessage
from evaluation.results import CaseOutput, Retrieved
from ragtune.errors import InvalidInput, NotFound, RagtuneError, UpstreamUnavailable
from ragtune.settings import Settings

if TYPE_CHECKING:
    from service.app import BackendFactory

# The per-request fields a strategy may set, as /v1/chat names them.
RETRIEVAL_FIELDS = ("top_k", "mode", "filters")
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop")
# What adapter_version() answers when only a call can tell (a server reports the version
# that answered in each response, and nothing before).
UNRESOLVED = "?"

Message = dict[str, str]


class TargetUnreachable(UpstreamUnavailable):
    """The server did not answer at all: the run stops (a refused case does not)."""


@dataclass(frozen=True)
class Request:
    """A strategy's effective request: everything but the messages."""

    route: str
    adapter: str | None = None
    retrieval: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, strategy: Any) -> Request:
        """The request a suite strategy makes (fields it leaves unset are the route's)."""

        def given(names: tuple[str, ...]) -> dict[str, Any]:
            values = {n: getattr(strategy, n, None) for n in names}
            return {n: v for n, v in values.items() if v is not None}

        return cls(
            route=strategy.route,
            adapter=getattr(strategy, "adapter", None),
            retrieval=given(RETRIEVAL_FIELDS),
            sampling=given(SAMPLING_FIELDS),
        )

    def body(self, messages: list[Message]) -> dict[str, Any]:
        """The JSON body of POST /v1/chat."""
        body: dict[str, Any] = {"route": self.route, "messages": [dict(m) for m in messages]}
        if self.adapter is not None:
            body["adapter"] = self.adapter
        return body | self.retrieval | self.sampling


class Target(Protocol):
    """Something that answers a suite's cases the way /v1/chat does."""

    async def check(self, strategy: Any) -> None:
        """Raise InvalidInput/NotFound, naming the strategy and field, unless its route,
        adapter and overrides are servable."""

    async def run(self, messages: list[Message], strategy: Any) -> CaseOutput:
        """One answer; a refused or failed call raises RagtuneError with the server's message."""

    async def adapter_version(self, strategy: Any) -> str | None:
        """The adapter version (name@version) that would answer the strategy now, None for the
        base model, UNRESOLVED when only a call can tell."""

    def identity(self) -> dict[str, Any]:
        """What the answers depend on besides the request: model and routes (for the cache)."""

    async def aclose(self) -> None: ...


def _strategy_error(strategy: Any, exc: RagtuneError) -> InvalidInput:
    return InvalidInput(f"strategy {strategy.name!r}: {exc}")


class InProcessTarget:
    """The app's services, built by its own lifespan exactly as `ragtune serve` builds them."""

    def __init__(
        self,
        settings: Settings,
        backends: BackendFactory | None = None,
        *,
        candidates: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        # Tests pass a scripted engine; `ragtune eval run` the configured ones.
        self._backends = backends
        # alias -> a version held for an evaluation, answering in its place (a gated flip).
        self._candidates = dict(candidates or {})
        self._stack = contextlib.AsyncExitStack()
        self._state: Any = None

    @property
    def services(self) -> Any:
        """The app's services (its lifespan's AppState), once started."""
        return self._state

    async def start(self) -> None:
        """Run the app's lifespan (loads the model, opens Qdrant, syncs adapters)."""
        from service.app import create_app

        app = (
            create_app(self._settings, self._backends)
            if self._backends
            else create_app(self._settings)
        )
        state = await self._stack.enter_async_context(app.router.lifespan_context(app))
        assert state is not None, "the app's lifespan yields its state"
        self._state = state["services"]

    async def check(self, strategy: Any) -> None:
        from service.chat.service import ChatCall

        request = Request.of(strategy)
        call = ChatCall(
            request.route,
            [],
            adapter=request.adapter,
            sampling=dict(request.sampling),
            candidates=self._candidates,
            **request.retrieval,
        )
        try:
            await self._state.chat.check_call(call)
        except (InvalidInput, NotFound) as exc:
            raise _strategy_error(strategy, exc) from None

    async def adapter_version(self, strategy: Any) -> str | None:
        from service.routes.policy import adapter_for

        request = Request.of(strategy)
        spec = self._state.routes[request.route]
        alias = adapter_for(request.route, spec, request.adapter)
        if alias is None:
            return None
        if alias in self._candidates:
            return self._candidates[alias]
        version: str = self._state.adapters.active().get(alias, UNRESOLVED)
        return version

    async def run(self, messages: list[Message], strategy: Any) -> CaseOutput:
        from service.chat.service import ChatCall
        from service.rag.context import render_context

        request = Request.of(strategy)
        call = ChatCall(
            route=request.route,
            messages=[ChatMessage.model_validate(dict(m)) for m in messages],
            adapter=request.adapter,
            sampling=dict(request.sampling),
            candidates=self._candidates,
            **request.retrieval,
        )
        started = time.perf_counter()
        result = await self._state.chat.answer(call)
        latency_ms = (time.perf_counter() - started) * 1000
        return CaseOutput(
            answer=result.text,
            output=result.output,
            output_error=result.output_error,
            retrieved=[
                Retrieved(
                    doc_id=s.hit.doc_id,
                    chunk_index=int(s.hit.payload.get("chunk_index", 0)),
                    score=s.hit.score,
                    source=str(s.hit.payload.get("source", "")),
                    title=str(s.hit.payload.get("title") or ""),
                    snippet=s.snippet(),
                )
                for s in result.sources
            ],
            context_text=render_context(result.sources) if result.sources else "",
            cited=sorted(result.citations.cited),
            removed_citations=result.citations.removed,
            adapter=result.adapter,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            latency_ms=latency_ms,
            finish_reason=result.finish_reason,
        )

    def identity(self) -> dict[str, Any]:
        llm = self._settings.llm
        routes = {name: spec.model_dump(mode="json") for name, spec in self._state.routes.items()}
        return {
            "model": llm.model,
            "backend": llm.vllm_urls() if llm.use_vllm() else "embedded",
            "dtype": getattr(llm, "dtype", None),
            "routes": routes,
        }

    def uses_vllm(self) -> bool:
        return self._settings.llm.use_vllm()

    async def aclose(self) -> None:
        await self._stack.aclose()


class HttpTarget:
    """A running ragtune, through POST /v1/chat (what `--url` evaluates)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 600) -> None:
        self._url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._models: list[dict[str, Any]] = []
        self._base_model: Any = None
        # (route, adapter asked) -> the version the server said would answer, then answered.
        self._seen: dict[tuple[str, str | None], str | None] = {}

    async def start(self) -> None:
        """Connect and read the server's chat routes and base model (ragtune's extension of
        GET /v1/models: each route's fingerprint); an unreachable server stops here."""
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        body = await self._call("GET", "/v1/models")
        self._models = sorted(
            ({k: m.get(k) for k in ("id", "kind", "ragtune")} for m in body.get("data", [])),
            key=lambda m: str(m["id"]),
        )
        self._base_model = (body.get("ragtune") or {}).get("base_model")

    async def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        assert self._session is not None, "start() first"
        try:
            async with self._session.request(method, self._url + path, json=json) as response:
                text = await response.text()
                try:
                    body: Any = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status >= 400:
                    raise _http_error(response.status, path, body, text)
        except aiohttp.ClientConnectionError as exc:
            raise TargetUnreachable(
                f"ragtune at {self._url} did not answer ({exc}); is `ragtune serve` running "
                f"there, and is --url right?"
            ) from None
        except TimeoutError:
            raise TargetUnreachable(
                f"ragtune at {self._url} did not answer {path} within {self._timeout.total:g} s"
            ) from None
        if not isinstance(body, dict):
            raise UpstreamUnavailable(f"{self._url}{path} did not answer with a JSON object")
        return body

    async def check(self, strategy: Any) -> None:
        request = Request.of(strategy)
        known = [m["id"] for m in self._models]
        if request.route not in known:
            raise InvalidInput(
                f"strategy {strategy.name!r}: route: the server at {self._url} has no chat "
                f"route {request.route!r}; its chat routes: {', '.join(known) or 'none'}"
            )
        # The server judges adapter and overrides as it would judge the answer, generating
        # nothing (a dry run), and says which adapter version would answer.
        body = request.body([{"role": "user", "content": "dry run"}]) | {"dry_run": True}
        try:
            checked = await self._call("POST", "/v1/chat", body)
        except InvalidInput as exc:
            raise _strategy_error(strategy, exc) from None
        self._seen[(request.route, request.adapter)] = checked.get("adapter")

    async def adapter_version(self, strategy: Any) -> str | None:
        request = Request.of(strategy)
        return self._seen.get((request.route, request.adapter), UNRESOLVED)

    async def run(self, messages: list[Message], strategy: Any) -> CaseOutput:
        request = Request.of(strategy)
        started = time.perf_counter()
        # The sources' whole packed text, not only their snippets: for context-overlap.
        asked = request.body(messages) | {"include_source_text": True}
        body = await self._call("POST", "/v1/chat", asked)
        latency_ms = (time.perf_counter() - started) * 1000
        self._seen[(request.route, request.adapter)] = body.get("adapter")
        usage = body.get("usage") or {}
        citations = body.get("citations") or {}
        sources = body.get("sources") or []
        return CaseOutput(
            answer=body.get("answer", ""),
            output=body.get("output"),
            output_error=body.get("output_error"),
            retrieved=[
                Retrieved(
                    doc_id=s["doc_id"],
                    chunk_index=s["chunk_index"],
                    score=s["score"],
                    source=s["source"],
                    title=s["title"],
                    snippet=s["snippet"],
                )
                for s in sources
            ],
            # Each source as packed into the prompt: the in-process render_context, joined alike.
            context_text="\n\n".join(s.get("text") or s["snippet"] for s in sources),
            cited=list(citations.get("cited", [])),
            removed_citations=int(citations.get("removed", 0)),
            adapter=body.get("adapter"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_ms=latency_ms,
            finish_reason=body.get("finish_reason", "stop"),
        )

    def identity(self) -> dict[str, Any]:
        # The route fingerprints and the base model: editing the server's routes file, or
        # serving another model, changes the key and no stale answer is reused.
        routes = {m["id"]: (m.get("ragtune") or {}).get("fingerprint") for m in self._models}
        return {"url": self._url, "base_model": self._base_model, "routes": routes}

    def uses_vllm(self) -> bool:
        # A server batches whatever it runs on; several requests in flight pay off.
        return True

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _http_error(status: int, path: str, body: Any, text: str) -> RagtuneError:
    message = text.strip()[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
        elif body.get("detail") is not None:
            message = str(body["detail"])
    if status in (401, 403):
        return InvalidInput(f"{path}: HTTP {status}: {message}; pass the server's key: --api-key")
    if status in (400, 404, 409, 413, 422):
        return InvalidInput(f"{message} (HTTP {status})")
    return UpstreamUnavailable(f"{message} (HTTP {status} from the server)")


@dataclass(frozen=True)
class _JudgeStrategy:
    name: str
    route: str
    temperature: float | None = None


class RouteJudge:
    """llm-rubric's grader: a chat route on the same target (the local model by default)."""

    def __init__(self, target: Target, route: str) -> None:
        self._target = target
        self._strategy = _JudgeStrategy(name=f"judge ({route})", route=route)

    async def check(self) -> None:
        await self._target.check(self._strategy)

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        output = await self._target.run(list(messages), self._strategy)
        return output.answer


class OpenAIJudge:
    """llm-rubric's grader on any OpenAI-compatible endpoint (POST /v1/chat/completions); the
    key comes from the environment variable the suite names, and none is needed."""

    def __init__(self, url: str, model: str, api_key_env: str | None = None) -> None:
        import os

        key = os.environ.get(api_key_env) if api_key_env else None
        self._url = url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> None:
        return None

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=600)
            )
        body = {
            "model": self._model,
            "messages": messages,
            "temperature": 0,
        }
        try:
            async with self._session.post(self._url, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise UpstreamUnavailable(
                        f"the judge at {self._url} refused (HTTP {response.status}): "
                        f"{text.strip()[:300]}"
                    )
                answer: Any = await response.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            raise TargetUnreachable(
                f"the judge at {self._url} did not answer ({exc}); check the suite's judge.url"
            ) from None
        try:
            return str(answer["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise UpstreamUnavailable(
                f"the judge at {self._url} did not answer as an OpenAI chat completion"
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

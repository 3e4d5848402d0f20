"""Runs every strategy x case on a target, a few at a time, with the cache in front and the
assertions after. Cancelling the run (Ctrl-C) stops it cleanly: what finished is kept."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeRemainingColumn

from evaluation.assertions import case_verdict, evaluate_all, needs_fresh_latency, needs_judge
from evaluation.cache import Cache, cache_folder, cache_key
from evaluation.results import AssertionResult, AssertionSpec, CaseOutput, CaseResult
from evaluation.suite import Strategy, Suite, examples_for, render_messages
from evaluation.summary import summarize
from evaluation.targets import (
    UNRESOLVED,
    HttpTarget,
    InProcessTarget,
    Message,
    OpenAIJudge,
    Request,
    RouteJudge,
    Target,
    TargetUnreachable,
)
from ragtune.console import stderr_console
from ragtune.errors import InvalidInput, RagtuneError
from ragtune.settings import Settings

# Grades an answer against its assertions (evaluation.assertions, with the judge bound in).
Grader = Callable[
    [Sequence[AssertionSpec], CaseOutput, dict[str, Any]], Awaitable[list[AssertionResult]]
]
# Fields a route's overrides judge: a refusal naming one is the strategy's fault, not the case's.
_STRATEGY_FIELDS = (
    "route", "adapter", "top_k", "mode", "filters", "max_tokens", "temperature", "top_p", "seed",
    "stop",
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One case under one strategy: the rendered messages and the assertions, the case's first."""

    case_id: str
    strategy: Any
    vars: dict[str, Any]
    messages: list[Message]
    asserts: list[AssertionSpec]


@dataclass
class Runner:
    """Runs jobs on `target`; `results` holds what finished, also after a cancellation."""

    target: Target
    grade: Grader
    concurrency: int = 1
    cache: Cache | None = None
    progress: bool = False
    results: list[CaseResult] = field(default_factory=list)
    calls: int = 0  # answers asked of the target (cache misses)

    async def check(self, strategies: Sequence[Any]) -> None:
        """Every strategy must be servable before any case runs."""
        for strategy in strategies:
            await self.target.check(strategy)

    async def run(self, jobs: Sequence[Job]) -> list[CaseResult]:
        """Every job's result, in the jobs' order (a cancellation keeps the finished ones)."""
        identity = self.target.identity()
        semaphore = asyncio.Semaphore(max(1, self.concurrency))
        order = {id(job): i for i, job in enumerate(jobs)}
        done: dict[int, CaseResult] = {}
        bars = _Bars(jobs, enabled=self.progress)

        async def one(job: Job) -> None:
            async with semaphore:
                result = await self._one(job, identity)
            done[order[id(job)]] = result
            self.results.append(result)
            bars.advance(job)

        # The first case of each strategy whose adapter version only a call can tell runs
        # first, alone: its answer names the version (the cache key needs it), and a refusal
        # of the strategy's request stops the run before the other cases.
        first: list[Job] = []
        seen: set[str] = set()
        for job in jobs:
            name = job.strategy.name
            if name not in seen:
                seen.add(name)
                if await self.target.adapter_version(job.strategy) == UNRESOLVED:
                    first.append(job)
        with bars:
            for job in first:
                await one(job)
                result = done[order[id(job)]]
                if result.error and result.error.startswith(_STRATEGY_FIELDS):
                    raise InvalidInput(f"strategy {job.strategy.name!r}: {result.error}")
            rest = [job for job in jobs if order[id(job)] not in done]
            tasks = [asyncio.ensure_future(one(job)) for job in rest]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return [done[i] for i in sorted(done)]

    async def _one(self, job: Job, identity: dict[str, Any]) -> CaseResult:
        request = Request.of(job.strategy)
        live = any(needs_fresh_latency(spec) for spec in job.asserts)
        key: str | None = None
        output: CaseOutput | None = None
        cached = False
        error: str | None = None
        if self.cache is not None:
            version = await self.target.adapter_version(job.strategy)
            if version != UNRESOLVED:
                key = cache_key(job.messages, request.body([]), identity, version)
                output = None if live else self.cache.get(key)
                cached = output is not None
        if output is None:
            self.calls += 1
            try:
                output = await self.target.run(job.messages, job.strategy)
            except TargetUnreachable:
                raise
            except RagtuneError as exc:
                error = str(exc)
            if output is not None and self.cache is not None:
                if key is None:  # the version is known now that the server said it
                    key = cache_key(job.messages, request.body([]), identity, output.adapter)
                self.cache.put(key, output)
        if output is None:
            failed = [_failed(spec, error or "no answer") for spec in job.asserts]
            return CaseResult(
                case_id=job.case_id,
                strategy=job.strategy.name,
                vars=job.vars,
                output=None,
                error=error,
                assertions=failed,
                passed=False,
                score=0.0,
            )
        verdicts = await self.grade(job.asserts, output, job.vars)
        passed, score = case_verdict(verdicts)
        return CaseResult(
            case_id=job.case_id,
            strategy=job.strategy.name,
            vars=job.vars,
            output=output,
            cached=cached,
            assertions=verdicts,
            passed=passed,
            score=score,
        )


def _failed(spec: AssertionSpec, error: str) -> AssertionResult:
    return AssertionResult(
        type=spec.type,
        metric=spec.metric or spec.type,
        passed=False,
        score=0.0,
        weight=spec.weight,
        reason=f"no answer: {error}",
    )


def default_concurrency(batches: bool) -> int:
    """8 in flight where the backend batches (vLLM, a server), 1 where it queues anyway."""
    return 8 if batches else 1


class _Bars:
    """A progress bar per strategy on stderr, only on a terminal."""

    def __init__(self, jobs: Sequence[Job], *, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._progress = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            disable=not self._enabled,
        )
        totals: dict[str, int] = {}
        for job in jobs:
            totals[job.strategy.name] = totals.get(job.strategy.name, 0) + 1
        self._tasks: dict[str, TaskID] = {
            name: self._progress.add_task(name, total=total) for name, total in totals.items()
        }

    def advance(self, job: Job) -> None:
        self._progress.advance(self._tasks[job.strategy.name])

    def __enter__(self) -> _Bars:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)


@dataclass(frozen=True)
class RunOptions:
    """What `ragtune eval run` was asked for besides the suite."""

    url: str | None = None
    api_key: str | None = None
    concurrency: int | None = None
    use_cache: bool = True
    limit: int | None = None
    strategies: list[str] = field(default_factory=list)
    seed: int = 0
    progress: bool = True


@dataclass
class Outcome:
    results: list[CaseResult]
    summary: dict[str, Any]
    interrupted: bool
    calls: int


async def open_target(settings: Settings, options: RunOptions) -> InProcessTarget | HttpTarget:
    """The server at --url, or the app's services in this process."""
    target: InProcessTarget | HttpTarget = (
        HttpTarget(options.url, options.api_key) if options.url else InProcessTarget(settings)
    )
    try:
        await target.start()
    except BaseException:
        await target.aclose()
        raise
    return target


async def run_suite(
    suite: Suite,
    settings: Settings,
    options: RunOptions,
    target: InProcessTarget | HttpTarget | None = None,
) -> Outcome:
    """Run the suite (on `target`, else the one the options name) and summarize it. A
    cancellation (Ctrl-C) ends the run early with `interrupted` set and what ran kept."""
    jobs, strategies = plan(suite, options)
    owned = target is None
    target = target or await open_target(settings, options)
    cache = Cache(cache_folder(settings.data_dir)) if options.use_cache else None
    judge = _judge(suite, target)
    try:
        runner = Runner(
            target,
            lambda specs, output, vars: evaluate_all(specs, output, vars, judge),
            concurrency=options.concurrency
            or suite.concurrency
            or default_concurrency(target.uses_vllm()),
            cache=cache,
            progress=options.progress,
        )
        await runner.check(strategies)
        if judge is not None and any(needs_judge(spec) for job in jobs for spec in job.asserts):
            await judge.check()
        interrupted = False
        try:
            results = await runner.run(jobs)
        except asyncio.CancelledError:
            interrupted = True
            rank = {(j.strategy.name, j.case_id): i for i, j in enumerate(jobs)}
            results = sorted(runner.results, key=lambda r: rank[(r.strategy, r.case_id)])
        summary = summarize(suite_name(suite), [s.name for s in strategies], results, suite.gates)
        return Outcome(results, summary, interrupted, runner.calls)
    finally:
        if isinstance(judge, OpenAIJudge):
            await judge.aclose()
        if cache is not None:
            cache.close()
        if owned:
            await target.aclose()


def _judge(suite: Suite, target: Target) -> RouteJudge | OpenAIJudge | None:
    spec = suite.judge
    if spec.url:
        return OpenAIJudge(spec.url, spec.model or "", spec.api_key_env)
    return RouteJudge(target, spec.route or "chat-plain")


def suite_name(suite: Suite) -> str:
    return suite.description or suite.path.name


def plan(suite: Suite, options: RunOptions) -> tuple[list[Job], list[Strategy]]:
    """The jobs to run, strategy by strategy: the first --limit cases, the --filter-strategy
    strategies, few-shot examples drawn with --seed."""
    strategies = list(suite.strategies)
    if options.strategies:
        for name in options.strategies:
            suite.strategy(name)  # an unknown name is a SuiteError that lists the strategies
        strategies = [s for s in strategies if s.name in options.strategies]
    cases = suite.case_list[: options.limit] if options.limit else suite.case_list
    jobs = []
    for strategy in strategies:
        examples = examples_for(suite, strategy, options.seed)
        jobs += [
            Job(
                case_id=case.id,
                strategy=strategy,
                vars=case.vars,
                messages=render_messages(suite, case, examples),
                asserts=suite.assertions_for(case),
            )
            for case in cases
        ]
    return jobs, strategies

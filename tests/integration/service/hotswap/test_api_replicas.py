"""Several API replicas behind one engine and one adapter registry (compose's
`--scale api=N`, the Kubernetes Deployment): an alias flipped through any replica is followed
by every other one within a sync, requests keep succeeding on all of them while it happens,
and each replica counts its own traffic on its own /metrics.

Two apps in one process share the data directory (the registry on a shared volume) and one
scripted engine (one vLLM server both reach); their vectors are each in memory, since
replicas share a Qdrant server, not an embedded store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import TinyModel
from tests.fixtures.api import running_app
from tests.integration.service.hotswap.swapping import (
    ALIAS,
    Answer,
    ask,
    flip,
    register,
    swap_settings,
)
from tests.integration.service.hotswap.test_reconcile import Replica

SYNC_S = 0.3


def follows(client: TestClient, ref: str, timeout_s: float = 10.0) -> Answer:
    """Ask until `client` answers with `ref` (it follows a flip made elsewhere)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = ask(client)
        assert answer.ok, answer
        if answer.adapter == ref or time.monotonic() > deadline:
            return answer
        time.sleep(SYNC_S / 3)


def served(client: TestClient) -> int:
    """The replica's own count of answered /v1/chat requests on the route, from /metrics."""
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("ragtune_requests_total{")
            and f'route="{ALIAS}"' in line
            and 'status="200"' in line
            and "/v1/chat" in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_every_replica_follows_a_flip_made_through_any_of_them(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    engine = Replica("vllm")
    settings = swap_settings(
        tmp_path,
        tiny_model.path,
        qdrant={"path": ":memory:"},
        adapters={"sync_interval_s": SYNC_S},
    )
    with (
        running_app(settings, lambda _: [engine]) as one,
        running_app(settings, lambda _: [engine]) as two,
    ):
        a = register(one, "a", alias=ALIAS)
        assert follows(two, a).adapter == a  # registered through one, served by two
        b = register(two, "b")
        flip(two, b)
        assert follows(one, b).adapter == b  # flipped through two, followed by one

        # Both replicas answer throughout while the alias goes back and forth through
        # either of them.
        answers: list[Answer] = []
        stop = threading.Event()

        def load(client: TestClient, stream: bool) -> None:
            while not stop.is_set():
                answers.append(ask(client, stream=stream))

        callers = [
            threading.Thread(target=load, args=(client, stream))
            for client in (one, two)
            for stream in (False, True)
        ]
        for caller in callers:
            caller.start()
        try:
            for i, target in enumerate((a, b, a, b)):
                flip(one if i % 2 else two, target)
                time.sleep(3 * SYNC_S)
        finally:
            stop.set()
            for caller in callers:
                caller.join()
        failed = [x for x in answers if not x.ok]
        assert not failed, failed[:3]
        assert len(answers) >= 8
        assert {x.adapter for x in answers} <= {a, b}
        assert follows(one, b).adapter == follows(two, b).adapter == b

        # Each replica's /metrics counts what it served, not the other's.
        before_one, before_two = served(one), served(two)
        for _ in range(3):
            assert ask(one).ok
        assert served(one) == before_one + 3
        assert served(two) == before_two

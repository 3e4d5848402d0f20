from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ingest.embedder import Embedder
from service.rag.batching import Batcher


class Doubler:
    """A blocking batch function that records its batches and can be held mid-batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.release.wait(timeout=10)
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [2 * i for i in items]


def test_a_lone_caller_runs_at_once() -> None:
    run = Doubler()

    async def main() -> int:
        return await Batcher(run, max_batch=8).submit(21)

    assert asyncio.run(main()) == 42
    assert run.batches == [[21]]


def test_callers_arriving_during_a_batch_share_the_next_one_in_order() -> None:
    run = Doubler()

    async def main() -> list[int]:
        batcher = Batcher(run, max_batch=4)
        run.release.clear()
        first = asyncio.create_task(batcher.submit(0))
        while not run.batches:  # the first batch has started and is held
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.01)
        run.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10, 12]
    # Nobody waited for a batch to fill; the six late ones went in batches of at most 4.
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_an_error_reaches_the_callers_of_its_batch_only() -> None:
    run = Doubler()

    async def main() -> tuple[list[object], int]:
        batcher = Batcher(run, max_batch=2)
        run.release.clear()
        first = asyncio.create_task(batcher.submit(1))
        while not run.batches:
            await asyncio.sleep(0.001)
        bad = [asyncio.create_task(batcher.submit(i)) for i in (2, -3)]
        good = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0.01)
        run.release.set()
        results = await asyncio.gather(first, *bad, good, return_exceptions=True)
        return results, await batcher.submit(5)  # the batcher still works afterwards

    results, after = asyncio.run(main())
    assert [results[0], results[3], after] == [2, 8, 10]
    assert all(isinstance(r, ValueError) and "negative item" in str(r) for r in results[1:3])


def test_a_caller_that_went_away_is_left_out_of_the_batch() -> None:
    run = Doubler()

    async def main() -> int:
        batcher = Batcher(run, max_batch=8)
        run.release.clear()
        first = asyncio.create_task(batcher.submit(1))
        while not run.batches:
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(batcher.submit(2))
        stays = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        run.release.set()
        await first
        return await stays

    assert asyncio.run(main()) == 6
    assert run.batches == [[1], [3]]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Doubler(), max_batch=0)


def test_batched_query_vectors_equal_one_at_a_time(embedder: Embedder) -> None:
    queries = [f"question {i}: how are {word} chunked?" for i, word in enumerate("abcdefgh")]

    def encode(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = embedder.encode(texts).tolist()
        return vectors

    async def main() -> tuple[list[list[float]], Batcher[str, list[float]]]:
        batcher = Batcher(encode, max_batch=32)
        return await asyncio.gather(*(batcher.submit(q) for q in queries)), batcher

    batched, batcher = asyncio.run(main())
    assert (batcher.items, batcher.batches) == (8, 1)  # all 8 arrived before it started
    alone = [encode([q])[0] for q in queries]
    np.testing.assert_allclose(np.array(batched), np.array(alone), atol=1e-5)


def test_batches_run_on_the_executor_given() -> None:
    threads: list[str] = []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return items

    async def main() -> list[int]:
        with ThreadPoolExecutor(1, thread_name_prefix="embedder") as pool:
            batcher = Batcher(run, max_batch=4, executor=pool)
            return await asyncio.gather(batcher.submit(1), batcher.submit(2))

    assert asyncio.run(main()) == [1, 2]
    assert len(threads) == 1
    assert threads[0].startswith("embedder")

from __future__ import annotations

import asyncio
import threading

import pytest

from service.workers import Workers, run_on


def test_each_resource_has_its_own_named_threads() -> None:
    async def main(workers: Workers) -> list[str]:
        pools = (workers.store, workers.embedder, workers.tokens)
        return [await run_on(pool, lambda: threading.current_thread().name) for pool in pools]

    workers = Workers.start(embedded_store=True)
    names = asyncio.run(main(workers))
    asyncio.run(workers.shutdown())
    assert [n.rsplit("_", 1)[0] for n in names] == [
        "ragtune-qdrant",
        "ragtune-embedder",
        "ragtune-tokens",
    ]
    # Embedded Qdrant has no locking of its own: one thread serialises its calls.
    assert workers.store._max_workers == 1
    assert Workers.start(embedded_store=False).store._max_workers > 1


def test_shutdown_waits_for_a_running_job_without_holding_the_loop() -> None:
    async def main() -> bool:
        workers = Workers.start(embedded_store=True)
        gate = threading.Event()
        running = asyncio.get_running_loop().run_in_executor(workers.store, gate.wait, 30)
        stopping = asyncio.create_task(workers.shutdown())
        await asyncio.sleep(0)  # shutdown has started; the loop must still be ours
        assert not stopping.done()
        gate.set()
        await stopping
        with pytest.raises(RuntimeError, match="shutdown"):
            workers.store.submit(print)
        return await running

    assert asyncio.run(main()) is True

"""Continuous micro-batching: requests that arrive while a batch is being computed form the
next batch, so concurrent callers share one model call and a lone caller waits for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `run` (blocking, on `executor`'s threads; the loop's default pool without one)
    over batches of at most `max_batch` items.

    Nothing waits for a batch to fill: the first item starts a batch at once, and whatever
    arrives while it runs goes into the next one (as vLLM schedules requests, and text
    embedding servers batch queries). One batch runs at a time, so `run` needs no lock of
    its own against itself.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        max_batch: int,
        on_batch: Callable[[int], object] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._run = run
        self._on_batch = on_batch
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        # Batches run and items in them so far (items / batches: the mean batch size).
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            # A caller that went away (client disconnected) needs no answer.
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run, [item for item, _ in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except asyncio.CancelledError:  # shutting down: nobody is left waiting
                for _, future in batch + self._pending:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

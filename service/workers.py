"""The threads that the app's blocking work runs on: one pool per resource.

`asyncio.to_thread` shares one pool among everything; a job that waits there (a Qdrant scroll,
a registry read, a summary's tokenization) takes a thread the next question's embedding needs.
Each resource gets its own named threads instead, created by the lifespan and stopped with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
# Threads for a Qdrant server (its client is thread-safe): searches run side by side.
SERVER_STORE_THREADS = 8


@dataclass(frozen=True)
class Workers:
    """The store's, the embedder's and the tokenizer's threads."""

    # Embedded Qdrant (plain Python structures, no locking of its own) gets one thread: its
    # calls are serialised by the queue, and no thread waits on a lock meanwhile.
    store: ThreadPoolExecutor
    # One batch at a time (the Batcher's rule), so one thread.
    embedder: ThreadPoolExecutor
    # Source tokenization: one thread, so the token-offset cache is only touched from it.
    tokens: ThreadPoolExecutor

    @classmethod
    def start(cls, *, embedded_store: bool) -> Workers:
        return cls(
            store=ThreadPoolExecutor(
                1 if embedded_store else SERVER_STORE_THREADS, thread_name_prefix="ragtune-qdrant"
            ),
            embedder=ThreadPoolExecutor(1, thread_name_prefix="ragtune-embedder"),
            tokens=ThreadPoolExecutor(1, thread_name_prefix="ragtune-tokens"),
        )

    async def shutdown(self) -> None:
        """Drop queued jobs, let running ones finish and stop the threads, waiting off the
        event loop (a running job would otherwise hold every other request)."""

        def stop() -> None:
            for pool in (self.store, self.embedder, self.tokens):
                pool.shutdown(wait=True, cancel_futures=True)

        await asyncio.to_thread(stop)


async def run_on(executor: Executor, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`call(*args, **kwargs)` on one of `executor`'s threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: call(*args, **kwargs))

"""The start-up heap, kept out of the garbage collector's full passes while the app serves.

Once the app has started, the process holds hundreds of thousands of objects that live as long
as it does: the embedding model, the tokenizer, the embedded engine's weights, embedded
Qdrant's points and payloads, every imported module. CPython's full (oldest generation)
collection walks all of them each time it runs, about every thousand requests under load,
and holds the event loop meanwhile: 270-300 ms per pass on the tiny model with this
repository's docs, longer with a bigger collection. `gc.freeze()` moves them to the permanent
generation, which no collection visits; vLLM does the same after its start-up. The price:
a frozen object that later ends up in a garbage cycle (an adapter loaded at start-up and
swapped out since) waits for the app to stop, instead of the next full pass, to be freed.

The youngest generation is also collected less often. Its collections are triggered by
allocations net of frees, so they come every few requests under load and each one walks the
objects of every request in flight: at 32 concurrent requests they cost 50 us a request, 6% of
the app's CPU. 10,000 instead of CPython's 700 leaves them rare; the garbage that waits (only
cycles: the rest is freed at once by reference counting) is a few megabytes at most.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
YOUNG_THRESHOLD = 10_000


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """Collect the start-up garbage, then freeze what is left and raise the youngest
    generation's threshold for the block's duration.

    On exit the thresholds are restored and everything frozen goes back to the oldest
    generation, so that the objects of an app that has stopped (tests start many in one
    process) can be collected again.
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
    log.info(
        "start-up heap frozen: %d objects out of the garbage collector's passes (%.0f ms)",
        gc.get_freeze_count(),
        1000 * (time.perf_counter() - start),
    )
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()

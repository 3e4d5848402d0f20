"""Feedback on answers, appended to <data_dir>/feedback/<YYYY-MM-DD>.jsonl (UTC day) by the
capture writer. Ids are not looked up: captures are sampled, and may be on another replica."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragtune.errors import UpstreamUnavailable
from service.capture import feedback_file, redact
from service.feedback.schemas import FeedbackRequest
from service.journal import Journal
from service.metrics import Metrics
from service.routes.schemas import RouteSpec


class FeedbackService:
    def __init__(
        self,
        data_dir: Path,
        journal: Journal,
        metrics: Metrics,
        routes: Mapping[str, RouteSpec],
        timeout_s: float,
    ) -> None:
        self._data_dir = data_dir
        self._journal = journal
        self._metrics = metrics
        self._timeout_s = timeout_s
        # The answer's route is not known here: a correction or comment may repeat what any
        # capturing route redacts, so every such pattern applies.
        self._patterns = tuple(
            pattern
            for spec in routes.values()
            if spec.capture is not None
            for pattern in spec.capture.patterns
        )

    async def record(self, feedback: FeedbackRequest) -> None:
        """Append the feedback and return once it is on disk; 503 when the writer is behind
        or the disk refuses."""
        now = datetime.now(UTC)
        patterns = self._patterns

        def record() -> dict[str, Any]:  # on the writer's thread, as captures are redacted
            return {
                "id": feedback.id,
                "time": now.isoformat(),
                "rating": feedback.rating,
                "correction": _redacted(feedback.correction, patterns),
                "comment": _redacted(feedback.comment, patterns),
            }

        loop = asyncio.get_running_loop()
        written: asyncio.Future[BaseException | None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            def settle() -> None:
                if not written.done():
                    written.set_result(error)

            loop.call_soon_threadsafe(settle)

        if not self._journal.submit(feedback_file(self._data_dir, now.date()), record, done):
            raise UpstreamUnavailable(
                "feedback was not recorded: the capture writer is behind (capture.queue_size "
                "records waiting); retry later"
            )
        try:
            async with asyncio.timeout(self._timeout_s):
                error = await asyncio.shield(written)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"feedback was not written within {self._timeout_s:g} s (the disk is slow); "
                "it may still be recorded, sending it again is harmless"
            ) from None
        if error is not None:
            raise UpstreamUnavailable(
                "feedback was not recorded: the server could not write it (its log says why)"
            )
        self._metrics.feedback.labels(str(feedback.rating)).inc()


def _redacted(text: str | None, patterns: tuple[re.Pattern[str], ...]) -> str | None:
    return None if text is None else redact(text, patterns)

"""Traffic as training data: the answers of routes with `capture`, sampled and redacted, as
JSON lines under the data directory, one file per route and UTC day; and the readers that
`ragtune dataset export` uses for them and for the feedback (service/feedback).

    <data_dir>/captures/<route>/<YYYY-MM-DD>.jsonl
    <data_dir>/feedback/<YYYY-MM-DD>.jsonl
"""

from __future__ import annotations

import json
import logging
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.types import ChatMessage
from ragtune.errors import InvalidInput
from service.journal import Journal
from service.metrics import Metrics

if TYPE_CHECKING:
    from service.chat.service import ChatResult, Prepared

log = logging.getLogger(__name__)

CAPTURES = "captures"
FEEDBACK = "feedback"
REDACTED = "[REDACTED]"
_DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.jsonl")


def new_answer_id() -> str:
    """An answer's id, as OpenAI spells a completion's: what POST /v1/feedback takes."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def capture_file(data_dir: Path, route: str, day: date) -> Path:
    return data_dir / CAPTURES / route / f"{day.isoformat()}.jsonl"


def feedback_file(data_dir: Path, day: date) -> Path:
    return data_dir / FEEDBACK / f"{day.isoformat()}.jsonl"


def redact(text: str, patterns: Sequence[re.Pattern[str]]) -> str:
    """`text` with every match of every pattern replaced by [REDACTED], in turn."""
    for pattern in patterns:
        # An empty match (a lookahead, `\b`) hides nothing: leave the text as it is there.
        text = pattern.sub(lambda m: REDACTED if m.group() else "", text)
    return text


class Capture:
    """Records finished answers of the routes that capture, on the journal's thread."""

    def __init__(self, data_dir: Path, journal: Journal, metrics: Metrics) -> None:
        self._data_dir = data_dir
        self._journal = journal
        self._metrics = metrics

    def answered(
        self,
        messages: Sequence[ChatMessage],
        prepared: Prepared,
        result: ChatResult,
        latency_s: float,
    ) -> None:
        """Queue the exchange if the route captures and this answer is in the sample; never
        waits: a full queue drops it (counted). The record is made, and redacted, on the
        writer's thread: a route's patterns over a long context take milliseconds, which the
        event loop does not spend; nothing reaches the disk unredacted."""
        spec = prepared.spec.capture
        if spec is None or random.random() >= spec.sample:
            return
        now = datetime.now(UTC)
        route = prepared.route

        def record() -> dict[str, Any]:
            patterns = spec.patterns
            used = prepared.context if prepared.spec.uses_context() else ""
            return {
                "id": result.id,
                "time": now.isoformat(),
                "route": route,
                "messages": _messages(messages, patterns),
                "question": redact(messages[-1].content, patterns),
                "context": redact(used, patterns),
                "prompt": _messages(prepared.request.messages, patterns),
                "sources": [
                    {"id": s.hit.id, "document": s.hit.doc_id, "score": s.hit.score}
                    for s in result.sources
                ],
                "answer": redact(result.text, patterns),
                "adapter": result.adapter,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                },
                "latency_ms": round(1000 * latency_s, 1),
                "finish_reason": result.finish_reason,
            }

        def written(error: BaseException | None) -> None:
            if error is None:
                self._metrics.captured.labels(route).inc()
            else:
                self._metrics.capture_dropped.labels(route, "write_error").inc()

        path = capture_file(self._data_dir, route, now.date())
        if not self._journal.submit(path, record, written):
            self._metrics.capture_dropped.labels(route, "queue_full").inc()


def _messages(
    messages: Iterable[ChatMessage], patterns: Sequence[re.Pattern[str]]
) -> list[dict[str, str]]:
    return [{"role": m.role, "content": redact(m.content, patterns)} for m in messages]


@dataclass
class ReadStats:
    """What a reader went through: files, records returned, and torn last lines skipped (a
    line still being written, or cut off by a process that stopped mid-write)."""

    files: int = 0
    records: int = 0
    torn: int = 0


def read_captures(
    data_dir: Path, route: str, since: date | None = None, *, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """The captured exchanges of `route`, day by day from `since` (a UTC day, inclusive;
    None: all), each file in the order written. Nothing captured yet: nothing. A malformed
    line other than a torn last one raises InvalidInput naming file and line."""
    if not route or "/" in route or route.startswith("."):
        raise InvalidInput(f"route {route!r} is not a route name")
    stats = stats if stats is not None else ReadStats()
    for day, path in _day_files(data_dir / CAPTURES / route):
        if since is None or day >= since:
            yield from _records(path, stats)


def read_feedback(data_dir: Path, *, stats: ReadStats | None = None) -> dict[str, dict[str, Any]]:
    """Answer id -> the latest feedback given on it (by its `time`; a tie goes to the one
    written last). Same tolerance as read_captures."""
    stats = stats if stats is not None else ReadStats()
    latest: dict[str, dict[str, Any]] = {}
    for _, path in _day_files(data_dir / FEEDBACK):
        for record in _records(path, stats):
            held = latest.get(record["id"])
            if held is None or str(record.get("time", "")) >= str(held.get("time", "")):
                latest[record["id"]] = record
    return latest


def _day_files(folder: Path) -> list[tuple[date, Path]]:
    if not folder.is_dir():
        return []
    files = []
    for path in folder.iterdir():
        match = _DAY_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        try:
            files.append((date.fromisoformat(match.group(1)), path))
        except ValueError:
            continue  # 2024-13-40.jsonl: not one of ours
    return sorted(files)


def _records(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    stats.files += 1
    with path.open("rb") as f:  # line by line: a day of captures may be large
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                record = _parse(raw, f"{path}:{number}", stats)
                if record is not None:
                    stats.records += 1
                    yield record


def _parse(raw: bytes, where: str, stats: ReadStats) -> dict[str, Any] | None:
    """One line's record; None for a torn last line (counted)."""
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # Only the last line lacks its newline: one still being written, or cut off.
        if not raw.endswith(b"\n"):
            stats.torn += 1
            log.warning("%s: skipped a torn last line (%d bytes)", where, len(raw))
            return None
        raise InvalidInput(
            f"{where}: not a JSON line ({exc}); ragtune writes these files: fix or delete that line"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise InvalidInput(
            f"{where}: not a record (a JSON object with a string 'id'); fix or delete that line"
        )
    return record

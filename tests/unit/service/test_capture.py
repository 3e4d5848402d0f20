"""The capture files' writer (a bounded queue and one thread, whole lines under a lock) and
their readers (service.capture.read_captures / read_feedback), on real files."""

from __future__ import annotations

import fcntl
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import InvalidInput
from service.capture import (
    ReadStats,
    capture_file,
    feedback_file,
    new_answer_id,
    read_captures,
    read_feedback,
    redact,
)
from service.journal import Journal, append_lines

DAY = date(2025, 3, 14)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, *records: dict[str, Any] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(record if isinstance(record, str) else json.dumps(record) + "\n")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the file's exclusive lock, as another process appending to it would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_answer_ids_are_openai_completion_ids_and_unique() -> None:
    ids = {new_answer_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids)


def test_redact_replaces_every_match_of_every_pattern() -> None:
    patterns = [re.compile(r"\d{3}-\d{4}"), re.compile(r"secret-\w+")]
    text = "call 555-1234 or 555-9876, code secret-abc"
    assert redact(text, patterns) == "call [REDACTED] or [REDACTED], code [REDACTED]"
    # Zero-width matches hide nothing and insert nothing.
    assert redact("a b", [re.compile(r"\b"), re.compile(r"x*")]) == "a b"


def test_journal_appends_whole_lines_in_order_and_drains_on_close(tmp_path: Path) -> None:
    journal = Journal(100)
    journal.start()
    done: list[BaseException | None] = []
    a, b = tmp_path / "a" / "x.jsonl", tmp_path / "b.jsonl"
    for i in range(50):
        assert journal.submit(a if i % 2 else b, {"id": str(i), "text": "é\n"}, done.append)
    journal.close()
    assert [r["id"] for r in lines(a)] == [str(i) for i in range(1, 50, 2)]
    assert [r["id"] for r in lines(b)] == [str(i) for i in range(0, 50, 2)]
    assert lines(a)[0]["text"] == "é\n"
    assert done == [None] * 50
    # Closed: refused, not lost silently in a queue nobody drains.
    assert not journal.submit(a, {"id": "late"})


def test_a_full_queue_refuses_at_once_while_the_writer_waits_for_the_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "day.jsonl"
    journal = Journal(1)
    journal.start()
    accepted: list[bool] = []
    with locked(path):  # the writer blocks on the lock, as on a stalled disk

        def submit_many() -> None:
            accepted.extend(journal.submit(path, {"id": str(i)}) for i in range(20))

        submitting = threading.Thread(target=submit_many)
        submitting.start()
        submitting.join(timeout=10)
        assert not submitting.is_alive(), "submit waited for the writer"
    journal.close()
    # One record at most in the writer's hands, one in the queue: the rest refused.
    assert 1 <= sum(accepted) <= 2
    assert accepted[0]
    assert [r["id"] for r in lines(path)] == [str(i) for i, ok in enumerate(accepted) if ok]


def test_a_record_that_cannot_be_written_is_reported_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    journal = Journal(10)
    journal.start()
    results: list[BaseException | None] = []

    def broken() -> dict[str, Any]:
        raise ValueError("cannot make this record")

    journal.submit(blocked / "x.jsonl", {"id": "1"}, results.append)
    journal.submit(tmp_path / "ok.jsonl", broken, results.append)
    journal.submit(tmp_path / "ok.jsonl", lambda: {"id": "made on the writer"}, results.append)
    journal.submit(tmp_path / "ok.jsonl", {"id": "2"}, results.append)
    journal.close()
    assert isinstance(results[0], OSError)
    assert isinstance(results[1], ValueError)
    assert results[2:] == [None, None]
    assert lines(tmp_path / "ok.jsonl") == [{"id": "made on the writer"}, {"id": "2"}]


def test_a_line_torn_by_a_crash_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "day.jsonl"
    write(path, {"id": "a"}, '{"id": "b", "answer": "cut of')
    append_lines(path, b'{"id": "c"}\n')
    assert path.read_text() == '{"id": "a"}\n{"id": "c"}\n'
    # A file that is nothing but a torn line is emptied, then appended to.
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"id": "x", "ans')
    append_lines(lone, b'{"id": "y"}\n')
    assert lines(lone) == [{"id": "y"}]


def test_read_captures_goes_day_by_day_from_since(tmp_path: Path) -> None:
    for day in ("2025-03-12", "2025-03-14", "2025-03-13"):
        write(capture_file(tmp_path, "qa", date.fromisoformat(day)), {"id": day, "n": 1})
    write(capture_file(tmp_path, "qa", DAY), {"id": "later"})
    write(capture_file(tmp_path, "other", DAY), {"id": "not qa"})
    (tmp_path / "captures" / "qa" / "notes.txt").write_text("not a day file")
    (tmp_path / "captures" / "qa" / "2025-13-40.jsonl").write_text("{}\n")
    stats = ReadStats()
    ids = [r["id"] for r in read_captures(tmp_path, "qa", stats=stats)]
    assert ids == ["2025-03-12", "2025-03-13", "2025-03-14", "later"]
    assert (stats.files, stats.records, stats.torn) == (3, 4, 0)
    since = [r["id"] for r in read_captures(tmp_path, "qa", date(2025, 3, 13))]
    assert since == ["2025-03-13", "2025-03-14", "later"]
    assert list(read_captures(tmp_path, "never-captured")) == []


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = capture_file(tmp_path, "qa", DAY)
    write(path, {"id": "a"}, "\n", {"id": "b"}, '{"id": "c", "answ')
    stats = ReadStats()
    assert [r["id"] for r in read_captures(tmp_path, "qa", stats=stats)] == ["a", "b"]
    assert stats.torn == 1
    # A last line that is complete but not yet followed by its newline is a record.
    path.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_captures(tmp_path, "qa")] == ["a", "b"]


@pytest.mark.parametrize(
    ("middle", "why"),
    [('{"id": "b", "answ', "not a JSON line"), ('["a list"]', "not a record"), ("{}", "record")],
    ids=["torn", "not-an-object", "no-id"],
)
def test_a_malformed_line_before_the_last_names_file_and_line(
    tmp_path: Path, middle: str, why: str
) -> None:
    path = capture_file(tmp_path, "qa", DAY)
    write(path, {"id": "a"}, middle + "\n", {"id": "c"})
    with pytest.raises(InvalidInput, match=rf"{re.escape(str(path))}:2: .*{why}"):
        list(read_captures(tmp_path, "qa"))


@pytest.mark.parametrize("route", ["", "../qa", "a/b", ".hidden"])
def test_read_captures_refuses_what_is_not_a_route_name(tmp_path: Path, route: str) -> None:
    with pytest.raises(InvalidInput, match="not a route name"):
        list(read_captures(tmp_path, route))


def test_read_feedback_keeps_the_latest_per_answer(tmp_path: Path) -> None:
    first, second = feedback_file(tmp_path, date(2025, 3, 13)), feedback_file(tmp_path, DAY)
    write(
        first,
        {"id": "x", "time": "2025-03-13T10:00:00+00:00", "rating": -1},
        {"id": "y", "time": "2025-03-13T11:00:00+00:00", "rating": 1},
    )
    write(
        second,
        {"id": "x", "time": "2025-03-14T09:00:00+00:00", "rating": 1, "correction": "Paris"},
        # Written later by a replica whose clock was behind: still older.
        {"id": "y", "time": "2025-03-13T10:30:00+00:00", "rating": -1},
        '{"id": "z", "ti',
    )
    stats = ReadStats()
    latest = read_feedback(tmp_path, stats=stats)
    assert set(latest) == {"x", "y"}
    assert latest["x"]["correction"] == "Paris"
    assert latest["y"]["rating"] == 1
    assert (stats.files, stats.records, stats.torn) == (2, 4, 1)
    assert read_feedback(tmp_path / "nothing") == {}

"""`ragtune dataset export`: captured traffic and its feedback become chat JSONL for training.

Each capture's question and retrieved context are rendered again through the target route's
templates (the prompt the adapter will be served with, its instructions and all); a correction
replaces the captured answer; answers users rated bad, answers cut off at max_tokens and
questions an eval suite scores are left out; one example per prompt."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from flywheel.examples import Example, render_prompt, uses_context, write_examples
from flywheel.leakage import normalize, suite_questions
from ragtune.errors import InvalidInput
from ragtune.settings import Settings
from service.routes.loader import load_served_routes
from service.routes.policy import find_route
from service.routes.schemas import RouteSpec


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str


class _Source(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str


class Capture(BaseModel):
    """The fields of a capture record (service/capture.py writes them) that export reads."""

    model_config = ConfigDict(extra="ignore")

    id: str
    time: str
    messages: list[_Turn]
    question: str
    context: str = ""
    sources: list[_Source] = []
    answer: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Selection:
    """Which captures make examples: feedback filters, and the suites' questions held out."""

    min_rating: int | None = None
    corrected_only: bool = False
    held_out: frozenset[str] = frozenset()


@dataclass
class ExportCounts:
    """What happened to the captures read, in the order the filters apply."""

    read: int = 0
    rated_out: int = 0  # rated below --min-rating, rated bad, unrated with --min-rating...
    cut: int = 0  # uncorrected answers that stopped at max_tokens
    empty: int = 0  # no answer to learn
    leaked: int = 0  # the question is an eval suite's case
    duplicates: int = 0  # the same rendered prompt as a kept example
    written: int = 0
    out: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Candidate:
    example: Example
    time: str
    corrected: bool


def rating_of(feedback: Mapping[str, Any] | None) -> tuple[int | None, str | None]:
    """A capture's rating and correction (None, None without feedback). A correction counts as
    rating 1: it is the answer a person wrote."""
    if feedback is None:
        return None, None
    correction = feedback.get("correction")
    if isinstance(correction, str) and correction.strip():
        return 1, correction
    rating = feedback.get("rating")
    return (rating if isinstance(rating, int) else None), None


def _kept(rating: int | None, corrected: bool, selection: Selection) -> bool:
    if selection.corrected_only and not corrected:
        return False
    if selection.min_rating is not None:
        return rating is not None and rating >= selection.min_rating
    return rating is None or rating >= 0


def parse_capture(record: Mapping[str, Any]) -> Capture:
    """A capture record as read from disk; one this ragtune did not write is refused."""
    try:
        return Capture.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(
            f"capture {record.get('id', '?')!r}: field {where!r}: {first['msg']}; the capture "
            f"files are not in the format this ragtune writes"
        ) from None


def select_examples(
    captures: Iterable[Mapping[str, Any]],
    feedback: Mapping[str, Mapping[str, Any]],
    target: tuple[str, RouteSpec],
    selection: Selection,
    source_route: str,
) -> tuple[list[Example], ExportCounts]:
    """The examples the captures make for route `target` (name, spec), with the counts."""
    counts = ExportCounts()
    chosen: dict[str, _Candidate] = {}
    for record in captures:
        counts.read += 1
        capture = parse_capture(record)
        rating, correction = rating_of(feedback.get(capture.id))
        if not _kept(rating, correction is not None, selection):
            counts.rated_out += 1
            continue
        if correction is None and capture.finish_reason == "length":
            counts.cut += 1
            continue
        answer = correction if correction is not None else capture.answer
        if not answer.strip():
            counts.empty += 1
            continue
        if normalize(capture.question) in selection.held_out:
            counts.leaked += 1
            continue
        candidate = _candidate(capture, answer, rating, correction is not None, target)
        if source_route != target[0]:
            candidate.example.metadata["captured_on"] = source_route
        _dedupe(chosen, candidate, counts)
    examples = [c.example for c in sorted(chosen.values(), key=lambda c: c.time)]
    counts.written = len(examples)
    return examples, counts


def _candidate(
    capture: Capture,
    answer: str,
    rating: int | None,
    corrected: bool,
    target: tuple[str, RouteSpec],
) -> _Candidate:
    name, spec = target
    messages = [{"role": t.role, "content": t.content} for t in capture.messages]
    if not messages:
        messages = [{"role": "user", "content": capture.question}]
    prompt = render_prompt(name, spec, capture.question, capture.context, messages)
    metadata = {
        "id": capture.id,
        "route": name,
        "time": capture.time,
        "sources": [s.id for s in capture.sources],
        "rating": rating,
        "corrected": corrected,
    }
    return _Candidate(Example(prompt, answer, metadata), capture.time, corrected)


def _dedupe(chosen: dict[str, _Candidate], new: _Candidate, counts: ExportCounts) -> None:
    """Keep one example per prompt: a corrected one over an uncorrected one, else the latest."""
    key = new.example.prompt_key()
    old = chosen.get(key)
    if old is not None:
        counts.duplicates += 1
        if (old.corrected, old.time) > (new.corrected, new.time):
            return
    chosen[key] = new


def export_dataset(
    settings: Settings,
    route: str,
    out: Path,
    *,
    as_route: str | None = None,
    since: date | None = None,
    selection: Selection = Selection(),
    exclude_suites: Sequence[Path] = (),
) -> ExportCounts:
    """Export `route`'s captures (rendered for `as_route`, default the route itself) to `out`."""
    from service.capture import read_captures, read_feedback

    target = _target(settings, route, as_route)
    held = frozenset(suite_questions(exclude_suites)) | selection.held_out
    picked = Selection(selection.min_rating, selection.corrected_only, held)
    captures = read_captures(settings.data_dir, route, since)
    feedback = read_feedback(settings.data_dir)
    examples, counts = select_examples(captures, feedback, target, picked, route)
    write_examples(examples, out)
    counts.out = out
    return counts


def _target(settings: Settings, route: str, as_route: str | None) -> tuple[str, RouteSpec]:
    """The route the examples are rendered for; a route that retrieves cannot be rendered from
    captures of one that does not (they hold no context)."""
    routes = load_served_routes(settings)
    name = as_route or route
    spec = find_route(routes, name, "chat")
    source = routes.get(route)
    if source is None and as_route is None:
        find_route(routes, route, "chat")  # raises NotFound naming the routes
    if source is not None and source.retrieval is None and uses_context(spec):
        raise InvalidInput(
            f"--as-route {name!r} puts retrieved {{context}} in its prompt, but route "
            f"{route!r} does not retrieve, so its captures hold no context; export to a route "
            f"without retrieval, or build the dataset with `ragtune dataset build`"
        )
    return name, spec

"""Numbered sources from retrieved chunks, packed into a route's token budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingest.search import Hit
from service.llm.tokens import TokenCounter

# A source needs at least this many tokens of text to be worth including after a cut.
_MIN_SOURCE_TOKENS = 32
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Source:
    """A retrieved chunk as the model saw it, numbered from 1."""

    number: int
    hit: Hit
    text: str

    def header(self) -> str:
        title = str(self.hit.payload.get("title") or self.hit.payload.get("source") or "")
        headers = self.hit.payload.get("headers") or []
        section = " > ".join(str(h) for h in headers if h and h != title)
        label = f"{title} — {section}" if section else title
        return f"[{self.number}] {label}".rstrip()

    def render(self) -> str:
        return f"{self.header()}\n{self.text.strip()}"

    def snippet(self) -> str:
        text = " ".join(self.text.split())
        return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def pack_sources(hits: Sequence[Hit], counter: TokenCounter, budget: int) -> list[Source]:
    """The best hits, in rank order, that fit in `budget` tokens once rendered; a hit that
    does not fit whole is cut if enough room is left, and packing stops there."""
    sources: list[Source] = []
    used = 0
    candidates = [Source(number=n, hit=hit, text=hit.text) for n, hit in enumerate(hits, 1)]
    costs = counter.count_many([c.render() for c in candidates])
    for source, rendered in zip(candidates, costs, strict=True):
        hit = source.hit
        # Two newlines separate sources in the prompt.
        cost = rendered + 2
        if used + cost <= budget:
            sources.append(source)
            used += cost
            continue
        room = budget - used - counter.count(source.header()) - 4
        if room >= _MIN_SOURCE_TOKENS:
            sources.append(
                Source(number=source.number, hit=hit, text=counter.truncate(hit.text, room))
            )
        break
    return sources


def render_context(sources: Sequence[Source]) -> str:
    if not sources:
        return "(no sources were found)"
    return "\n\n".join(s.render() for s in sources)

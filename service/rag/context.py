"""Numbered sources from retrieved chunks, packed into a route's token budget."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from engine.tokens import TokenCounter, cut_at
from ingest.search import Hit

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
    does not fit whole is cut at a token boundary if enough room is left, and packing stops
    there."""
    sources: list[Source] = []
    used = 0
    candidates = [Source(number=n, hit=hit, text=hit.text) for n, hit in enumerate(hits, 1)]
    rendered = [c.render() for c in candidates]
    for source, text, ends in zip(candidates, rendered, counter.ends_many(rendered), strict=True):
        # Two newlines separate sources in the prompt.
        room = budget - used - 2
        if len(ends) <= room:
            sources.append(source)
            used += len(ends) + 2
            continue
        # The header and the newline after it; the cut keeps the header whole.
        head = len(text) - len(source.text.strip())
        if room - bisect_right(ends, head) >= _MIN_SOURCE_TOKENS:
            cut = text[head : cut_at(ends, room)]
            sources.append(Source(number=source.number, hit=source.hit, text=cut))
        break
    return sources


def render_context(sources: Sequence[Source]) -> str:
    if not sources:
        return "(no sources were found)"
    return "\n\n".join(s.render() for s in sources)

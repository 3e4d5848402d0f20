"""Citation markers ([1], [2, 3]) checked against the sources the model was given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_MARKER = re.compile(r"\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")
# A tail that may still grow into a marker: "[", "[1", "[1, 2" ...
_PARTIAL = re.compile(r"\[[\d,\s]{0,24}$")


@dataclass
class CitationCheck:
    """What the check kept and removed, over a whole answer."""

    sources: int
    cited: set[int] = field(default_factory=set)
    removed: int = 0

    def clean(self, text: str) -> str:
        """`text` with every reference to a source that does not exist taken out."""
        return _MARKER.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        numbers = [int(n) for n in match.group(1).split(",")]
        kept = [n for n in numbers if 1 <= n <= self.sources]
        self.removed += len(numbers) - len(kept)
        self.cited.update(kept)
        if not kept:
            return ""
        return "[" + ", ".join(str(n) for n in kept) + "]"


class StreamingCitations:
    """Cleans a streamed answer piece by piece, holding back only a tail that may be a marker."""

    def __init__(self, check: CitationCheck) -> None:
        self.check = check
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        partial = _PARTIAL.search(self._pending)
        cut = partial.start() if partial else len(self._pending)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return self.check.clean(ready)

    def flush(self) -> str:
        ready, self._pending = self._pending, ""
        return self.check.clean(ready)

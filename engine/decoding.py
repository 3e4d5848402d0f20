"""Turning generated token ids into text deltas, with stop strings cut the way vLLM cuts them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from engine.types import StreamDelta


class StopTrimmer:
    """Finds stop strings; the answer ends before the first one, which is not included."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        # Text that could still grow into a stop string is held back while streaming.
        self.holdback = max((len(s) for s in self.stops), default=1) - 1

    def find(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None


class TokenStream:
    """A transformers streamer: receives token ids, emits text deltas through `emit`."""

    def __init__(
        self,
        tokenizer: Any,
        stops: StopTrimmer,
        emit: Callable[[StreamDelta], None],
        eos_ids: Collection[int],
    ) -> None:
        self._tokenizer = tokenizer
        self._stops = stops
        self._emit = emit
        self._eos = set(eos_ids)
        self._prompt_seen = False
        self._sent = 0
        self._text = ""
        self.ids: list[int] = []
        self.stopped = False
        self.ended_with_eos = False

    def put(self, value: Any) -> None:
        """Called by `generate`: first with the prompt, then with each new token."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.stopped or self.ended_with_eos:
            return
        for token in value.reshape(-1).tolist():
            self.ids.append(int(token))
            if int(token) in self._eos:
                self.ended_with_eos = True
                break
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not self.ended_with_eos:
            return  # a character split across tokens: wait for the rest of it
        cut = self._stops.find(text)
        if cut is not None:
            self.stopped = True
            self._text = text[:cut]
            return
        self._text = text
        self._flush(len(text) - self._stops.holdback)

    def end(self) -> None:
        """Called by `generate` when it stops; the final delta comes from `finish`."""

    def flush(self) -> None:
        """Send the text held back for stop strings; call once generation is over."""
        self._flush(len(self._text))

    def _flush(self, upto: int) -> None:
        if upto > self._sent:
            self._emit(StreamDelta(text=self._text[self._sent : upto]))
            self._sent = upto

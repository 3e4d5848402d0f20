"""Counting and cutting text in the base model's tokens, for prompt budgets."""

from __future__ import annotations

import copy
import logging
from array import array
from bisect import bisect_right
from collections import OrderedDict
from typing import Any, TypeAlias

from ragtune.errors import RagtuneError
from ragtune.settings import Settings

log = logging.getLogger(__name__)
# Without the model's tokenizer, budgets assume this many characters per token (a
# conservative figure for English with BPE vocabularies).
_CHARS_PER_TOKEN = 3.0
# Character offsets where a text's tokens end, one per token.
Ends: TypeAlias = "array[int]"


class TokenCounter:
    """The base model's tokenizer when it is on disk; a character estimate otherwise.

    Texts are measured by the character offsets where their tokens end, so that counting and
    cutting at a token boundary come from one tokenization.
    """

    def __init__(self, tokenizer: Any | None, cache_size: int = 8_192) -> None:
        # A `tokenizers.Tokenizer` (the Rust tokenizer behind a fast HF tokenizer): its
        # encode_batch releases the GIL and skips the Python wrapper's conversions.
        self._tokenizer = tokenizer
        # Token ends of retrieved sources: the same chunks come back for many questions, and
        # tokenizing them was most of the API's own time on a retrieval request.
        self._cache: OrderedDict[str, Ends] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def for_settings(cls, settings: Settings) -> TokenCounter:
        """Load the tokenizer of the served base model from its local folder, if there is one."""
        from engine.model import resolve_base_model

        try:
            path = resolve_base_model(settings)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (RagtuneError, OSError, ValueError) as exc:
            log.warning(
                "the base model's tokenizer is not on disk (%s); prompt budgets are estimated "
                "at %.0f characters per token",
                exc,
                _CHARS_PER_TOKEN,
            )
            return cls(None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            log.warning(
                "the base model's tokenizer in %s has no fast (Rust) version; prompt budgets "
                "are estimated at %.0f characters per token",
                path,
                _CHARS_PER_TOKEN,
            )
            return cls(None)
        # Counting only: no cut to the model's length, no padding (a copy: the HF tokenizer
        # keeps its own settings).
        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()
        return cls(backend)

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def _ends(self, texts: list[str]) -> list[Ends]:
        """For each text, the character offset at which each of its tokens ends."""
        if self._tokenizer is None:
            # One token per _CHARS_PER_TOKEN characters, the last one shorter.
            step = int(_CHARS_PER_TOKEN)
            return [array("I", [*range(step, len(t), step), len(t)] if t else []) for t in texts]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [array("I", [end for _, end in e.offsets]) for e in encodings]

    def count(self, text: str) -> int:
        return len(self._ends([text])[0])

    def ends_many(self, texts: list[str]) -> list[Ends]:
        """`_ends` of each text: remembered ones from a bounded cache, the others in one
        tokenizer batch (its Rust side does the loop)."""
        if not texts:
            return []
        cache = self._cache
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            for text, ends in zip(missing, self._ends(missing), strict=True):
                cache[text] = ends
        found = []
        for text in texts:
            cache.move_to_end(text)
            found.append(cache[text])
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return found

    def count_many(self, texts: list[str]) -> list[int]:
        """`count` of each text, through the cache of `ends_many`."""
        return [len(ends) for ends in self.ends_many(texts)]

    def split(self, text: str, max_tokens: int) -> list[str]:
        """`text` cut into consecutive pieces of at most `max_tokens`, at paragraph or line
        breaks where possible."""
        pieces: list[str] = []
        current: list[str] = []
        size = 0
        for block in _blocks(text):
            tokens = self.count(block)
            if tokens > max_tokens:
                if current:
                    pieces.append("".join(current))
                    current, size = [], 0
                pieces.extend(self._hard_split(block, max_tokens))
                continue
            if size + tokens > max_tokens and current:
                pieces.append("".join(current))
                current, size = [], 0
            current.append(block)
            size += tokens
        if current:
            pieces.append("".join(current))
        # Whitespace alone is not worth a model call: it joins the piece before it.
        merged: list[str] = []
        for piece in pieces:
            if merged and not piece.strip():
                merged[-1] += piece
            else:
                merged.append(piece)
        return [p for p in merged if p.strip()]

    def _hard_split(self, text: str, max_tokens: int) -> list[str]:
        """Cut into pieces of at most `max_tokens` tokens at character boundaries; nothing is
        lost between pieces."""
        ends = self._ends([text])[0]
        pieces: list[str] = []
        start, first = 0, 0  # character offset and token index where the piece starts
        while first < len(ends):
            end = cut_at(ends, first + max_tokens)
            if end <= start:  # one character longer than max_tokens tokens: kept whole
                end = ends[first]
            pieces.append(text[start:end])
            start, first = end, bisect_right(ends, end)
        if start < len(text):
            pieces.append(text[start:])
        return pieces


def cut_at(ends: Ends, tokens: int) -> int:
    """The character offset that keeps the first `tokens` tokens, or fewer where a character
    spans several (byte-level) tokens and the cut would fall inside it."""
    if tokens >= len(ends):
        return ends[-1] if ends else 0
    while tokens > 0 and ends[tokens - 1] == ends[tokens]:
        tokens -= 1
    return ends[tokens - 1] if tokens > 0 else 0


def _blocks(text: str) -> list[str]:
    """Paragraphs (keeping their separators), so pieces join back into the original text."""
    blocks: list[str] = []
    start = 0
    while True:
        end = text.find("\n\n", start)
        if end < 0:
            blocks.append(text[start:])
            return [b for b in blocks if b]
        blocks.append(text[start : end + 2])
        start = end + 2

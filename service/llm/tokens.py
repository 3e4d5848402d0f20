"""Counting and cutting text in the base model's tokens, for prompt budgets."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.settings import Settings

log = logging.getLogger(__name__)
# Without the model's tokenizer, budgets assume this many characters per token (a
# conservative figure for English with BPE vocabularies).
_CHARS_PER_TOKEN = 3.0


class TokenCounter:
    """The base model's tokenizer when it is on disk; a character estimate otherwise."""

    def __init__(self, tokenizer: Any | None, cache_size: int = 8_192) -> None:
        self._tokenizer = tokenizer
        # Counts of retrieved sources: the same chunks come back for many questions, and
        # tokenizing them was most of the API's own time on a retrieval request.
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def for_settings(cls, settings: Settings) -> TokenCounter:
        """Load the tokenizer of the served base model from its local folder, if there is one."""
        from service.llm.model import resolve_base_model

        try:
            path = resolve_base_model(settings)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            # Only counting: texts longer than the model reads are expected (map-reduce input).
            tokenizer.model_max_length = 1 << 62
            return cls(tokenizer)
        except (RagtuneError, OSError, ValueError) as exc:
            log.warning(
                "the base model's tokenizer is not on disk (%s); prompt budgets are estimated "
                "at %.0f characters per token",
                exc,
                _CHARS_PER_TOKEN,
            )
            return cls(None)

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return math.ceil(len(text) / _CHARS_PER_TOKEN)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_many(self, texts: list[str]) -> list[int]:
        """`count` of each text: remembered ones from a bounded cache, the others in one
        tokenizer batch (its Rust side does the loop)."""
        if self._tokenizer is None or not texts:
            return [self.count(t) for t in texts]
        cache = self._cache
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            ids = self._tokenizer(missing, add_special_tokens=False)["input_ids"]
            for text, tokens in zip(missing, ids, strict=True):
                cache[text] = len(tokens)
        counts = []
        for text in texts:
            cache.move_to_end(text)
            counts.append(cache[text])
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return counts

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` within `max_tokens`."""
        if max_tokens <= 0:
            return ""
        if self._tokenizer is None:
            return text[: int(max_tokens * _CHARS_PER_TOKEN)]
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        return str(self._tokenizer.decode(ids[:max_tokens]))

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
        if self._tokenizer is None:
            step = int(max_tokens * _CHARS_PER_TOKEN)
            return [text[i : i + step] for i in range(0, len(text), step)]
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        return [
            str(self._tokenizer.decode(ids[i : i + max_tokens]))
            for i in range(0, len(ids), max_tokens)
        ]


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

"""BM25 sparse vectors: term-frequency weights per document, IDF applied by Qdrant at query time.

Documents get BM25's saturated, length-normalised term frequency; queries get weight 1 per
distinct term. With `Modifier.IDF` on the collection's sparse vector, Qdrant multiplies in
each term's inverse document frequency, so the dot product is the BM25 score. This mirrors
Qdrant's own BM25 (fastembed's `Qdrant/bm25`): lowercase, drop stopwords, Snowball-stem,
hash each term to a 32-bit index.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from qdrant_client import models

from ragtune.settings import SparseSettings

_TOKEN = re.compile(r"\w+", re.UNICODE)
# A short English stopword list (the words that carry no lexical signal for ranking).
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()  # noqa: SIM905 (a word list reads better as prose)
)
VERSION = 1


@lru_cache(maxsize=1_000_000)
def _term_index(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


class SparseEncoder:
    """Text to BM25 sparse vectors."""

    def __init__(self, settings: SparseSettings) -> None:
        import Stemmer

        self._settings = settings
        try:
            self._stemmer = Stemmer.Stemmer(settings.language)
        except KeyError as exc:
            raise ValueError(
                f"sparse.language {settings.language!r} has no Snowball stemmer; "
                f"use one of {', '.join(Stemmer.algorithms())}"
            ) from exc
        self._stopwords = STOPWORDS if settings.language == "english" else frozenset()

    def terms(self, text: str) -> list[str]:
        """The stemmed, stopword-free terms of `text`, in order."""
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]
        return list(self._stemmer.stemWords(words))

    def encode_document(self, text: str) -> models.SparseVector:
        counts = Counter(self.terms(text))
        if not counts:
            return models.SparseVector(indices=[], values=[])
        k1, b, avg = self._settings.k1, self._settings.b, self._settings.avg_len
        length = sum(counts.values())
        norm = k1 * (1 - b + b * length / avg)
        weights: dict[int, float] = {}
        for term, tf in counts.items():
            index = _term_index(term)
            # Two terms hashing to one index (rare in 32 bits) share it; weights add.
            weights[index] = weights.get(index, 0.0) + tf * (k1 + 1) / (tf + norm)
        return models.SparseVector(indices=list(weights), values=list(weights.values()))

    def encode_query(self, text: str) -> models.SparseVector:
        indices = sorted({_term_index(t) for t in self.terms(text)})
        return models.SparseVector(indices=indices, values=[1.0] * len(indices))

    def info(self) -> dict[str, Any]:
        s = self._settings
        return {
            "kind": "bm25",
            "version": VERSION,
            "k1": s.k1,
            "b": s.b,
            "avg_len": s.avg_len,
            "language": s.language,
        }

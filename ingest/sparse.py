"""BM25 sparse vectors, index for index and weight for weight those of fastembed's `Qdrant/bm25`.

Documents get BM25's saturated, length-normalised term frequency; queries get weight 1 per
distinct term. With `Modifier.IDF` on the collection's sparse vector, Qdrant multiplies in
each term's inverse document frequency, so the dot product is the BM25 score.

Text is processed as fastembed's `Bm25` does (fastembed/sparse/bm25.py, 0.9): punctuation to
spaces, lowercase, split on non-word characters, drop NLTK's English stopwords and tokens over
40 characters, Snowball-stem with the same Rust stemmer (py_rust_stemmers), and index each stem
by `abs(mmh3.hash(stem))`. So vectors written here and by other Qdrant tools (fastembed, or
qdrant-client's `models.Document(model="Qdrant/bm25")`) share one index space; a congruence
test checks it against vectors fastembed itself produced. fastembed is not a dependency: it
pins huggingface-hub below 2 (transformers here runs on 2.x) and brings onnxruntime, which
BM25 never uses, and its model files for BM25 are only stopword lists. On SciFact
(`python -m bench.sparse`) the switch from ragtune's former blake2b encoder left sparse
nDCG@10 on ingested chunks where it was (0.682); on whole abstracts NLTK's list, which drops
"d" and "t" (vitamin D, T cells), costs 0.006.

For languages other than English, fastembed also drops that language's NLTK stopwords; no
such list ships here, so only English vectors are fastembed's exactly.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

import mmh3
from py_rust_stemmers import SnowballStemmer
from qdrant_client import models

from ragtune.settings import SparseSettings

# fastembed's `remove_non_alphanumeric`, then its `SimpleTokenizer` (after lowercasing).
_NON_ALPHANUMERIC = re.compile(r"[^\w\s]", re.UNICODE)
_NON_WORD = re.compile(r"[^\w]", re.UNICODE)
# fastembed's default `token_max_length`: longer tokens (hashes, sequences) are dropped.
TOKEN_MAX_LENGTH = 40
# NLTK's English stopword list, which is what `Qdrant/bm25` ships as english.txt. The entries
# with an apostrophe can never match a token (the tokenizer splits on it) but are kept so the
# list is NLTK's verbatim.
ENGLISH_STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too
    very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
    couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
    mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren
    weren't won won't wouldn wouldn't""".split()  # noqa: SIM905 (a word list reads better as prose)
)
# Recorded in each collection's manifest: a collection built with other token ids (version 1
# hashed with blake2b) is refused until rebuilt with --reindex.
VERSION = 2


@lru_cache(maxsize=1_000_000)
def term_index(term: str) -> int:
    """The sparse index of a stemmed term: fastembed's `abs(mmh3.hash(term))`, in [0, 2**31]."""
    return abs(mmh3.hash(term))


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens, split as fastembed splits them."""
    text = _NON_ALPHANUMERIC.sub(" ", text)
    return _NON_WORD.sub(" ", text.lower()).split()


def _is_punctuation(token: str) -> bool:
    # fastembed drops tokens found in the set of all Unicode punctuation characters; of those
    # only "_" (a word character) survives the tokenizer.
    return len(token) == 1 and unicodedata.category(token).startswith("P")


class SparseEncoder:
    """Text to BM25 sparse vectors in fastembed's `Qdrant/bm25` index space."""

    def __init__(self, settings: SparseSettings) -> None:
        self._settings = settings
        try:
            self._stemmer = SnowballStemmer(settings.language)
        except ValueError as exc:
            raise ValueError(
                f"sparse.language {settings.language!r} has no Snowball stemmer ({exc}); "
                f"set RAGTUNE_SPARSE__LANGUAGE to one of them"
            ) from exc
        self._stopwords = ENGLISH_STOPWORDS if settings.language == "english" else frozenset()

    def terms(self, text: str) -> list[str]:
        """The stemmed, stopword-free terms of `text`, in order."""
        words = [
            token
            for token in tokenize(text)
            if token not in self._stopwords
            and len(token) <= TOKEN_MAX_LENGTH
            and not _is_punctuation(token)
        ]
        return [stem for stem in self._stemmer.stem_words(words) if stem]

    def encode_document(self, text: str) -> models.SparseVector:
        """BM25's term-frequency part per term; Qdrant's IDF modifier supplies the rest."""
        counts = Counter(self.terms(text))
        if not counts:
            return models.SparseVector(indices=[], values=[])
        k1, b, avg = self._settings.k1, self._settings.b, self._settings.avg_len
        length = sum(counts.values())
        norm = k1 * (1 - b + b * length / avg)
        weights: dict[int, float] = {}
        for term, tf in counts.items():
            # Two stems hashing to one index (one 100-term text in about 400,000 has such a
            # pair) keep the later stem's weight, as fastembed's dict assignment does.
            weights[term_index(term)] = tf * (k1 + 1) / (tf + norm)
        return models.SparseVector(indices=list(weights), values=list(weights.values()))

    def encode_query(self, text: str) -> models.SparseVector:
        """Weight 1 per distinct term, as fastembed's `query_embed`."""
        indices = sorted({term_index(t) for t in self.terms(text)})
        return models.SparseVector(indices=indices, values=[1.0] * len(indices))

    def info(self) -> dict[str, Any]:
        """What a collection records; any change makes ingestion ask for --reindex."""
        s = self._settings
        return {
            "kind": "bm25",
            "version": VERSION,
            "tokens": "fastembed-Qdrant/bm25",
            "k1": s.k1,
            "b": s.b,
            "avg_len": s.avg_len,
            "language": s.language,
        }

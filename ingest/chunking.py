"""Split documents into chunks that fit the embedder, measured in the embedder's own tokens.

Markdown is split on its headers first (the header path is kept with each chunk), then every
section, like every other document, goes through LangChain's recursive splitter. Each chunk
is embedded with a short context line (the title, or the Markdown header path) in front, and
the budget counts that line too, so what the embedder reads is never truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from ingest.documents import Document
from ragtune.errors import InvalidInput
from ragtune.settings import ChunkingSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VERSION = 1
# The context line may take at most this share of a chunk's budget.
_HEADER_SHARE = 0.25
_MD_HEADERS = [("#" * n, f"h{n}") for n in range(1, 7)]
# Pieces up to this many characters (words, mostly) have their token counts cached.
_CACHED_LENGTH = 48


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    # What the embedder reads: the context line, then the text.
    embed_text: str
    headers: tuple[str, ...] = ()


class Chunker:
    """Cuts documents into token-bounded chunks; its `info()` is remembered by collections."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        token_limit: int,
        settings: ChunkingSettings,
    ) -> None:
        size = settings.size if settings.size is not None else token_limit
        if size > token_limit:
            raise InvalidInput(
                f"chunking.size {size} is larger than the {token_limit} tokens the embedder "
                f"reads; set RAGTUNE_CHUNKING__SIZE to at most {token_limit}"
            )
        if settings.overlap >= size:
            raise InvalidInput(
                f"chunking.overlap {settings.overlap} must be smaller than chunking.size {size}"
            )
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._encode_length: Callable[[str], int] = lambda text: len(
                backend.encode(text, add_special_tokens=False).ids
            )
        else:
            self._encode_length = lambda text: len(tokenizer.tokenize(text))
        self._count_short = lru_cache(maxsize=262_144)(self._encode_length)
        self.size = size
        self.overlap = settings.overlap
        self._splitters: dict[int, RecursiveCharacterTextSplitter] = {}
        self._markdown = MarkdownHeaderTextSplitter(_MD_HEADERS, strip_headers=True)

    def info(self) -> dict[str, Any]:
        return {"size": self.size, "overlap": self.overlap, "version": VERSION}

    def count(self, text: str) -> int:
        """Tokens of `text` without special tokens.

        The recursive splitter measures every word it splits off, so short pieces are
        cached; the fast (Rust) tokenizer is called directly, which is ~4x faster than
        going through transformers.
        """
        if len(text) <= _CACHED_LENGTH:
            return self._count_short(text)
        return self._encode_length(text)

    def split(self, doc: Document) -> list[Chunk]:
        """The chunks of `doc`, numbered from 0, each within the token budget."""
        sections: list[tuple[tuple[str, ...], str]] = []
        if doc.file_type == "md":
            for part in self._markdown.split_text(doc.text):
                headers = tuple(str(part.metadata[k]) for _, k in _MD_HEADERS if k in part.metadata)
                sections.append((headers, part.page_content))
        if not sections:
            sections = [((), doc.text)]
        chunks: list[Chunk] = []
        for headers, body in sections:
            context = self._context(doc.title, headers)
            # One token of slack for the line break, for tokenizers that count it.
            budget = self.size - (self.count(context) + 1 if context else 0)
            for piece in self._splitter(budget).split_text(body):
                for text in self._enforce(piece, budget):
                    embed_text = f"{context}\n{text}" if context else text
                    chunks.append(Chunk(len(chunks), text, embed_text, headers))
        return chunks

    def _context(self, title: str, headers: tuple[str, ...]) -> str:
        path = [title] if title else []
        path += [h for h in headers if h != title]
        line = " > ".join(path)
        cap = int(self.size * _HEADER_SHARE)
        if self.count(line) <= cap:
            return line
        ids = self._tokenizer(line, add_special_tokens=False)["input_ids"][:cap]
        # Decoding may not round-trip exactly; trim until it fits.
        text = str(self._tokenizer.decode(ids))
        while text and self.count(text) > cap:
            text = text[: int(len(text) * 0.9)]
        return text

    def _splitter(self, budget: int) -> RecursiveCharacterTextSplitter:
        splitter = self._splitters.get(budget)
        if splitter is None:
            splitter = RecursiveCharacterTextSplitter(
                chunk_size=budget,
                chunk_overlap=min(self.overlap, budget // 2),
                length_function=self.count,
                strip_whitespace=True,
            )
            self._splitters[budget] = splitter
        return splitter

    def _enforce(self, text: str, budget: int) -> list[str]:
        """Cut `text` on token boundaries if the splitter's merge still left it too long.

        Token counts of joined pieces are not always the sum of their parts (a word split
        across pieces, say), so the limit is checked on the real text.
        """
        if self.count(text) <= budget:
            return [text]
        encoded = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        out = []
        for start in range(0, len(offsets), budget):
            window = offsets[start : start + budget]
            piece = text[window[0][0] : window[-1][1]].strip()
            if piece:
                out.append(piece)
        return out

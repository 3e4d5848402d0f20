"""What loaders produce: documents, and the reasons a file or line was not one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One document, ready to chunk.

    `doc_id` is stable across runs: the absolute file path, or a JSONL record's `_id`.
    `source` is the absolute path of the file it came from, which scopes `--prune`.
    """

    doc_id: str
    text: str
    title: str
    source: str
    file_type: str
    # File facts (name, size, relative path, pages) that become top-level payload.
    file_meta: dict[str, Any] = field(default_factory=dict)
    # Extra fields of a JSONL record; stored under `meta` so they never clash with ours.
    meta: dict[str, Any] = field(default_factory=dict)

    def content_hash(self) -> str:
        """A digest of everything that ends up in the document's points."""
        blob = json.dumps(
            [self.title, self.text, self.source, self.file_meta, self.meta],
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A file that was not ingested, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class LineError:
    """A JSONL line that could not be read as a document."""

    path: str
    line: int
    reason: str


@dataclass
class LoadReport:
    """Everything the loaders noticed besides the documents themselves."""

    skipped: list[Skipped] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)
    # Files in walked directories whose type no loader reads, counted by extension.
    unsupported: dict[str, int] = field(default_factory=dict)
    # (doc_id, source, first_source): a document id that came twice in one run.
    duplicate_ids: list[tuple[str, str, str]] = field(default_factory=list)

    def damaged_sources(self) -> set[str]:
        """Files that were only partly read: their documents are never pruned."""
        return {e.path for e in self.line_errors} | {
            s.path for s in self.skipped if s.reason.startswith(("unreadable", "not UTF-8"))
        }

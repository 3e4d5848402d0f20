"""What loaders produce: documents, and the reasons a file or line was not one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One document, ready to chunk.

    `doc_id` is stable across runs and machines: a file's path relative to the ingest root
    (the path given to `ragtune ingest`; a file given by itself is its name), or a JSONL
    record's `_id`. `source` is the relative path of the file it came from, which scopes
    `--prune`; `location` is where that file was read, which no payload or hash holds.
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
    # The file's absolute path; empty for documents not read from a file.
    location: str = ""

    def content_hash(self) -> str:
        """A digest of everything that ends up in the document's points."""
        return _digest([self.title, self.text, self.source, self.file_meta, self.meta])

    def legacy_id(self) -> str:
        """The id ragtune gave this document before ids were relative: a file's absolute
        path (JSONL records kept their `_id`)."""
        return self.doc_id if self.file_type == "jsonl" else self.location

    def legacy_hash(self) -> str:
        """The content hash of the same content under the absolute-path scheme."""
        return _digest([self.title, self.text, self.location, self.file_meta, self.meta])


def _digest(parts: list[Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
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

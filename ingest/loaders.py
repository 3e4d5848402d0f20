"""Find files under the given paths and read each into documents (.txt .md .html .pdf .jsonl)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.documents import Document, LineError, LoadReport, Skipped
from ingest.html_text import html_to_text
from ragtune.errors import InvalidInput

SUPPORTED = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl",
}
_SNIFF = 8192
# JSONL keys the BEIR format gives a meaning; the rest of a record becomes `meta`.
_JSONL_KEYS = ("_id", "title", "text")


@dataclass(frozen=True)
class FoundFile:
    path: Path
    root: Path


def discover(
    paths: Sequence[str | Path],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    report: LoadReport | None = None,
) -> list[FoundFile]:
    """Expand the path arguments into files, recursing into directories.

    Globs match a file's path relative to its root, or its bare name; hidden files and
    folders in a walked directory are left out. A path that does not exist is refused
    before anything is read.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InvalidInput(f"no such file or directory: {', '.join(missing)}")
    found: list[FoundFile] = []
    seen: set[Path] = set()
    for arg in paths:
        root = Path(arg).resolve()
        candidates = [root] if root.is_file() else _walk(root)
        for path in candidates:
            if path in seen:
                continue
            seen.add(path)
            rel = path.name if path == root else path.relative_to(root).as_posix()
            if include and not _matches(rel, path.name, include):
                continue
            if exclude and _matches(rel, path.name, exclude):
                continue
            if path.suffix.lower() not in SUPPORTED:
                if path == root:
                    _skip(
                        report,
                        path,
                        f"unsupported file type '{path.suffix or '(none)'}'; "
                        f"ragtune reads {', '.join(sorted(set(SUPPORTED)))}",
                    )
                elif report is not None:
                    ext = path.suffix.lower() or "(none)"
                    report.unsupported[ext] = report.unsupported.get(ext, 0) + 1
                continue
            found.append(FoundFile(path=path, root=root))
    return found


def _walk(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel_parts):
            continue
        if path.is_file():
            out.append(path)
    return out


def _matches(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _skip(report: LoadReport | None, path: Path, reason: str) -> None:
    if report is not None:
        report.skipped.append(Skipped(path=str(path), reason=reason))


def load(files: Sequence[FoundFile], report: LoadReport) -> Iterator[Document]:
    """Read each file into documents; problems go to `report`, never raise."""
    for found in files:
        yield from _load_one(found, report)


def _load_one(found: FoundFile, report: LoadReport) -> Iterator[Document]:
    path = found.path
    kind = SUPPORTED[path.suffix.lower()]
    try:
        data = path.read_bytes()
    except OSError as exc:
        _skip(report, path, f"unreadable: {exc.strerror or exc}")
        return
    if not data.strip():
        _skip(report, path, "empty file")
        return
    if kind == "pdf":
        yield from _pdf(found, data, report)
        return
    if b"\x00" in data[:_SNIFF]:
        _skip(report, path, "binary content (NUL bytes) in a text file")
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _skip(report, path, f"not UTF-8 text (byte {exc.start}); convert it to UTF-8")
        return
    if kind == "jsonl":
        yield from _jsonl(found, text, report)
        return
    title = ""
    if kind == "html":
        title, text = html_to_text(text)
    elif kind == "md":
        title = _markdown_title(text)
    text = text.strip()
    if not text:
        _skip(report, path, "no text after removing markup")
        return
    yield _file_document(found, text, title or path.stem, kind, len(data))


def relative_source(path: Path, root: Path) -> str:
    """A file's id-forming path: relative to the ingest root, or its name if it is the root."""
    return path.name if path == root else path.relative_to(root).as_posix()


def _file_document(
    found: FoundFile, text: str, title: str, kind: str, size: int, **extra: Any
) -> Document:
    path = found.path
    relative = relative_source(path, found.root)
    return Document(
        doc_id=relative,
        text=text,
        title=title,
        source=relative,
        file_type=kind,
        file_meta={"file_name": path.name, "relative_path": relative, "size_bytes": size, **extra},
        location=path.as_posix(),
    )


def _markdown_title(text: str) -> str:
    in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith("# "):
            return stripped[2:].strip()
    return ""


def _pdf(found: FoundFile, data: bytes, report: LoadReport) -> Iterator[Document]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        _skip(report, found.path, f"unreadable PDF: {exc}")
        return
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        _skip(report, found.path, "PDF has no extractable text (scanned images need OCR first)")
        return
    title = str(meta_title).strip() if meta_title else found.path.stem
    yield _file_document(found, text, title, "pdf", len(data), pages=len(pages))


def _jsonl(found: FoundFile, text: str, report: LoadReport) -> Iterator[Document]:
    path = found.path
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        problem, record = _parse_record(line)
        if record is not None:
            doc_id = str(record["_id"])
            if doc_id in first_line:
                problem = f"duplicate _id {doc_id!r} (first on line {first_line[doc_id]})"
            else:
                first_line[doc_id] = lineno
        if problem or record is None:
            report.line_errors.append(LineError(path=str(path), line=lineno, reason=problem))
            continue
        yield Document(
            doc_id=doc_id,
            text=record["text"].strip(),
            title=str(record.get("title") or "").strip(),
            source=relative_source(path, found.root),
            file_type="jsonl",
            # No line number here: moving a line must not count as changing the document.
            file_meta={"file_name": path.name},
            meta={k: v for k, v in record.items() if k not in _JSONL_KEYS},
            location=path.as_posix(),
        )


def _parse_record(line: str) -> tuple[str, dict[str, Any] | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} at column {exc.colno}", None
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}", None
    if "_id" not in record or record["_id"] in (None, ""):
        return "missing '_id'", None
    if not isinstance(record["_id"], str | int):
        return "'_id' must be a string or an integer", None
    if not isinstance(record.get("text"), str):
        return "missing 'text' (a string)", None
    if not record["text"].strip():
        return "empty 'text'", None
    return "", record

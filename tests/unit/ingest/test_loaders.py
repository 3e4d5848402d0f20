from __future__ import annotations

from pathlib import Path

import pytest

from ingest.documents import LoadReport
from ingest.loaders import discover, load
from ragtune.errors import InvalidInput
from tests.fixtures.corpus import make_pdf, write_jsonl, write_tree


def _load(*paths: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
    report = LoadReport()
    docs = list(load(discover(paths, include, exclude, report), report))
    return {Path(d.source).name: d for d in docs}, report


def test_directory_recurses_and_reads_every_type(tmp_path: Path) -> None:
    docs, report = _load(write_tree(tmp_path / "corpus"))
    assert sorted(docs) == ["fruit.txt", "guide.md", "notes.pdf", "tides.html", "voyager.txt"]
    assert report.skipped == []
    assert docs["voyager.txt"].file_meta["relative_path"] == "space/voyager.txt"
    assert docs["fruit.txt"].doc_id == "fruit.txt"
    assert docs["voyager.txt"].doc_id == "space/voyager.txt"
    assert docs["voyager.txt"].location == (tmp_path / "corpus/space/voyager.txt").as_posix()


def test_ids_are_relative_to_the_root_so_another_checkout_gives_the_same(tmp_path: Path) -> None:
    one, _ = _load(write_tree(tmp_path / "a" / "corpus"))
    two, _ = _load(write_tree(tmp_path / "elsewhere"))
    assert {(d.doc_id, d.source, d.content_hash()) for d in one.values()} == {
        (d.doc_id, d.source, d.content_hash()) for d in two.values()
    }
    # A file given by itself is its name.
    alone, _ = _load(tmp_path / "a" / "corpus" / "space" / "voyager.txt")
    assert alone["voyager.txt"].doc_id == "voyager.txt"


def test_markdown_title_is_the_first_heading(tmp_path: Path) -> None:
    docs, _ = _load(write_tree(tmp_path / "c"))
    assert docs["guide.md"].title == "Kitchen guide"
    assert docs["fruit.txt"].title == "fruit"


def test_html_keeps_text_and_title_but_no_markup_or_scripts(tmp_path: Path) -> None:
    docs, _ = _load(write_tree(tmp_path / "c"))
    html = docs["tides.html"]
    assert html.title == "Tide tables"
    assert "High tide at the harbour" in html.text
    assert "Spring tides" in html.text
    assert "<" not in html.text
    assert "secret" not in html.text
    assert "color" not in html.text


def test_pdf_text_of_every_page(tmp_path: Path) -> None:
    docs, _ = _load(write_tree(tmp_path / "c"))
    pdf = docs["notes.pdf"]
    assert "Comets have icy nuclei." in pdf.text
    assert "Tails point away." in pdf.text
    assert pdf.file_meta["pages"] == 2


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "c")
    docs, _ = _load(root, include=("*.txt",))
    assert sorted(docs) == ["fruit.txt", "voyager.txt"]
    docs, _ = _load(root, exclude=("space/*",))
    assert "voyager.txt" not in docs
    assert "notes.pdf" not in docs
    assert "fruit.txt" in docs


def test_hidden_files_and_folders_are_left_out(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "c")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.txt").write_text("ref: main")
    (root / ".draft.md").write_text("# secret")
    docs, _ = _load(root)
    assert ".draft.md" not in docs
    assert "HEAD.txt" not in docs


def test_empty_binary_and_non_utf8_files_are_skipped_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "empty.txt").write_text("   \n")
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "tags.html").write_text("<html><script>x()</script></html>")
    (root / "good.txt").write_text("fine")
    docs, report = _load(root)
    assert list(docs) == ["good.txt"]
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons["empty.txt"] == "empty file"
    assert "binary" in reasons["binary.txt"]
    assert "not UTF-8" in reasons["latin1.txt"]
    assert "no text" in reasons["tags.html"]


def test_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("hidden")
    real = Path.read_bytes

    # The file system is the boundary here: root (CI) can read any file whatever its mode.
    def deny(self: Path) -> bytes:
        if self.name == "secret.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    _, report = _load(path)
    assert report.skipped[0].reason == "unreadable: Permission denied"


def test_unsupported_types_counted_in_directories_listed_when_named(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "photo.png").write_bytes(b"\x89PNG")
    (root / "a.txt").write_text("text")
    _, report = _load(root)
    assert report.unsupported == {".png": 1}
    _, report = _load(root / "photo.png")
    assert "unsupported file type '.png'" in report.skipped[0].reason


def test_missing_path_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no such file or directory: .*nope"):
        discover([tmp_path / "nope"])


def test_broken_pdf_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 garbage")
    (tmp_path / "blank.pdf").write_bytes(make_pdf([""]))
    _, report = _load(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons["bad.pdf"].startswith("unreadable PDF")
    assert "no extractable text" in reasons["blank.pdf"]


def test_jsonl_records_become_documents_with_extra_fields_as_meta(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"_id": "a1", "title": "T", "text": "alpha", "year": 2020, "tags": ["x"]},
            {"_id": 7, "text": "beta"},
        ],
    )
    report = LoadReport()
    docs = list(load(discover([path]), report))
    assert [d.doc_id for d in docs] == ["a1", "7"]
    assert docs[0].meta == {"year": 2020, "tags": ["x"]}
    assert docs[0].title == "T"
    assert docs[1].title == ""
    assert report.line_errors == []


def test_malformed_jsonl_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"_id": "ok", "text": "fine"}\n'
        "{not json\n"
        "\n"
        '["a list"]\n'
        '{"text": "no id"}\n'
        '{"_id": "x", "text": ""}\n'
        '{"_id": "ok", "text": "again"}\n'
        '{"_id": "y", "text": 5}\n'
    )
    report = LoadReport()
    docs = list(load(discover([path]), report))
    assert [d.doc_id for d in docs] == ["ok"]
    errors = {e.line: e.reason for e in report.line_errors}
    assert errors[2].startswith("invalid JSON")
    assert errors[4].startswith("expected a JSON object")
    assert errors[5] == "missing '_id'"
    assert errors[6] == "empty 'text'"
    assert errors[7] == "duplicate _id 'ok' (first on line 1)"
    assert errors[8] == "missing 'text' (a string)"
    assert 3 not in errors


def test_content_hash_changes_with_text_not_with_line_position(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"_id": "1", "text": "same"}])
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"_id": "0", "text": "other"}, {"_id": "1", "text": "same"}]
    )
    report = LoadReport()
    (da,) = load(discover([a]), report)
    db = list(load(discover([b]), report))[1]
    assert da.content_hash() != db.content_hash()  # different source file
    b.write_text(b.read_text().replace("other", "changed"))
    db2 = list(load(discover([b]), report))[1]
    assert db.content_hash() == db2.content_hash()

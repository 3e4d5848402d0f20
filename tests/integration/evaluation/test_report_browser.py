"""report.html opened in a real headless Chromium: the charts decode and render, nothing runs
that came from a case or an answer, and the page draws."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from evaluation.report import write_outputs
from tests.fixtures.eval_results import results, summary


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH: `make browser` installs it (Debian's chromium)")
        pytest.skip("chromium is not on PATH: `make browser` installs it (Debian's chromium)")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    write_outputs(out, "Review sentiment", results(), summary())
    return out / "report.html"


def headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class _Dom(HTMLParser):
    """The attributes of <title>, <body> and every chart <img> in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.images: list[dict[str, str | None]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        elif tag == "img" and "chart" in (found.get("class") or "").split():
            self.images.append(found)
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_the_charts_render_in_chromium(chromium: str, report: Path, tmp_path: Path) -> None:
    done = headless(
        chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", report.as_uri()
    )
    dom = _Dom()
    dom.feed(done.stdout)
    assert dom.body.get("data-charts-rendered") == "3/3", done.stdout[:2000]
    assert [image.get("alt") for image in dom.images] == [
        "Quality per strategy",
        "Quality against prompt tokens",
        "Latency",
    ]
    for image in dom.images:
        assert image.get("data-rendered") == "true"
        assert int(image.get("data-natural-width") or 0) > 300
    # c3's text sets the title if it runs: it must stay text.
    assert dom.title == "Review sentiment · ragtune eval"


def test_the_page_draws(chromium: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    headless(
        chromium,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    # A blank or unstyled page has a handful of colours; text, badges and charts have thousands.
    assert colours is not None
    assert len(colours) > 1000

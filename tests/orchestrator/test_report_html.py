"""`referloop report --html`: one self-contained page, drawn by a real browser.

The page is rendered by headless Chromium (Debian's `chromium`); the DOM it
leaves behind must hold each chart's SVG with its bars, lines or interval marks
actually drawn, and nothing the page would fetch from the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestrator.report_html import CHART_IDS
from simulator.population import Planted, write_to

ROOT = Path(__file__).resolve().parents[2]
BROWSER_TIMEOUT_S = 120
WORKSPACE = """\
name: report page
metrics:
  events:
    user_activated: Activated
"""
HOSTILE = '<img src=x onerror="alert(1)">'


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is needed to render the report: apt-get install chromium",
            pytrace=False,
        )
    return found


def _render(page: Path, profile: Path) -> str:
    """The DOM after Chromium has loaded the page and run its scripts."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,3000",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Drawn(HTMLParser):
    """Per chart: SVG roots, and marks with geometry (non-empty path `d`)."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.depth = 0
        self.svgs: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.attributes: list[tuple[str, str | None]] = []
        self.fetches: list[str] = []
        self.in_point = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.attributes.extend(attrs)
        for name in ("src", "href"):
            if found.get(name) and tag in ("script", "link", "img", "iframe"):
                self.fetches.append(f"{tag} {name}={found[name]}")
        if tag == "div" and found.get("data-chart"):
            self.chart, self.depth = found["data-chart"], 0
        if self.chart is None:
            return
        if tag == "div":
            self.depth += 1
        classes = (found.get("class") or "").split()
        if tag == "svg" and "main-svg" in classes:
            self.svgs[self.chart] = self.svgs.get(self.chart, 0) + 1
        if tag == "g" and "point" in classes:
            self.in_point = True
        drawn = tag == "path" and len(found.get("d") or "") > 3
        marks = {"point", "js-line", "xerror"} & set(classes)
        if drawn and (marks or self.in_point):
            self.marks[self.chart] = self.marks.get(self.chart, 0) + 1
            self.in_point = False

    def handle_endtag(self, tag: str) -> None:
        if self.chart is not None and tag == "div":
            self.depth -= 1
            if self.depth == 0:
                self.chart = None


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report page of two planted playbooks, one of them with a hostile name."""
    folder = tmp_path_factory.mktemp("report-page")
    (folder / "referloop.yaml").write_text(WORKSPACE)
    export = folder / "export.jsonl"
    with export.open("w") as out:
        write_to(Planted(users=4_000, playbook="pack-reviewers"), 7, out)
        write_to(Planted(users=1_500, playbook=HOSTILE, invite_nudged=0.2), 8, out)
    target = folder / "report.html"
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "report",
        "--events",
        str(export),
        "--playbooks",
        str(folder),
        "--html",
        str(target),
    ]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"Wrote {target}" in done.stderr
    return target


def test_the_page_needs_no_network(page: Path) -> None:
    parser = _Drawn()
    text = page.read_text()
    parser.feed(text)

    assert parser.fetches == []
    assert "Plotly.newPlot" in text


def test_every_chart_is_drawn_by_a_browser(page: Path, tmp_path: Path) -> None:
    parser = _Drawn()
    parser.feed(_render(page, tmp_path / "profile"))

    assert set(parser.svgs) == set(CHART_IDS)
    for chart in CHART_IDS:
        assert parser.marks.get(chart, 0) >= 2, f"{chart}: {parser.marks}"


def test_names_from_the_export_are_shown_as_text(page: Path, tmp_path: Path) -> None:
    """A playbook called like an HTML tag shows as its name, runs as nothing."""
    parser = _Drawn()
    dom = _render(page, tmp_path / "profile")
    parser.feed(dom)

    assert ("onerror", "alert(1)") not in parser.attributes
    assert "&lt;img src=x onerror=" in dom

"""How long `referloop report` takes, and how much memory, to turn a 1,000,000-event
Mixpanel export into a full report, beside DuckDB counting the events of the same
file.

Method: a Mixpanel raw export (JSON lines) is generated once, before any clock
starts, into a temporary folder by `simulator.population`: POPULATIONS, three
playbooks with their own channels, variants, invite rates and seeds, appended to
one file of at least MIN_EVENTS events. Beside it, a workspace file whose
`metrics:` names the product's `Activated` event, so that loop time is computed
too. Every event of the file is one the report keeps.

- report: a fresh process of this Python runs the real command, `python -m
  orchestrator report --events FILE --playbooks FOLDER --format json --html
  PAGE`, its output to a file. Start-up and imports, reading the export into
  DuckDB, every metric, the bootstrap, the JSON and writing the HTML page are
  all inside. The exit status must be 0, the output valid JSON whose event count
  is the file's, and the page a whole HTML document.
- baseline: a fresh process of the same Python imports DuckDB and counts the
  events of the same file, `SELECT count(*)` over `read_json` with the reader
  settings the report uses (newline-delimited, errors ignored, `event` as
  VARCHAR and `properties` as JSON). The count must be the file's. It is a
  floor, not a rival: a count lets DuckDB skip building the `properties` values.

Wall time is the parent's, from starting the process to reaping it. Peak memory
is the child's own maximum resident set size, as `os.wait4` returns it for that
child alone (`ru_maxrss`, KiB on Linux); MB here are 10^6 bytes. ROUNDS rounds
run baseline then report; the fastest run of each side is kept (noise on a
shared machine only slows a run down), and the report's peak is the largest of
its runs.

Where the report's time goes is measured once more after the rounds, against
no target: start-up (a fresh `python -m orchestrator --help`, which imports what
the command imports), then in this process reading the export into DuckDB
(`Funnel.read_mixpanel_export`), `metrics.compute` step by step (between the
steps its progress callback names) and `report_html.page`.

Targets: the report under TARGET_WALL_S seconds, its peak under TARGET_PEAK_MB
MB, and within TARGET_RATIO times the baseline's wall time.

Run: `uv run python bench/bench_report.py`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

from orchestrator import metrics, report_html
from orchestrator.loader import load
from orchestrator.model import MetricsSettings
from simulator.population import Planted, write_to

POPULATIONS = (
    (Planted(users=150_000, playbook="pack-reviewers"), 11),
    (
        Planted(
            users=150_000,
            playbook="room-reviewers",
            channels=("customerio",),
            invite_nudged=0.2,
            invite_holdout=0.15,
        ),
        12,
    ),
    (
        Planted(
            users=150_000,
            playbook="deal-sharers",
            channels=("braze", "outbox"),
            variants=("a", "b", "c"),
            holdout=0.2,
        ),
        13,
    ),
)
MIN_EVENTS = 1_000_000
ROUNDS = 3
TIMEOUT_S = 600.0
TARGET_WALL_S = 60.0
TARGET_PEAK_MB = 1_000.0
TARGET_RATIO = 5.0
WORKSPACE = """\
metrics:
  events:
    user_activated: Activated
"""
BASELINE_CODE = """\
import sys
import duckdb

query = (
    "SELECT count(*) FROM read_json(?, format = 'newline_delimited', "
    "ignore_errors = true, columns = {'event': 'VARCHAR', 'properties': 'JSON'})"
)
print(duckdb.connect().execute(query, [sys.argv[1]]).fetchone()[0])
"""
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""

T = TypeVar("T")
# Where a report's time goes: what, and seconds, in the order it is spent.
Split = list[tuple[str, float]]


class BenchError(Exception):
    """The benchmark could not measure what it set out to; one line says why."""


@dataclass(frozen=True)
class Export:
    """The generated export and the folder it sits in."""

    folder: Path
    path: Path
    events: int
    generate_s: float

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


@dataclass(frozen=True)
class Run:
    """One process: its side, wall time, peak RSS and what it printed."""

    side: str
    wall_s: float
    peak_mb: float
    output: Path


# --- the export -------------------------------------------------------------------


def _generate(folder: Path) -> Export:
    path = folder / "export.jsonl"
    start = time.perf_counter()
    with path.open("w", encoding="utf-8") as out:
        events = sum(write_to(planted, seed, out) for planted, seed in POPULATIONS)
    generate_s = time.perf_counter() - start
    if events < MIN_EVENTS:
        raise BenchError(f"the export holds {events:,} events, under {MIN_EVENTS:,}")
    (folder / "referloop.yaml").write_text(WORKSPACE, encoding="utf-8")
    return Export(folder, path, events, generate_s)


# --- the processes ----------------------------------------------------------------


def _run(side: str, command: list[str], folder: Path, number: int) -> Run:
    """Run `command` to its end; its wall time and its own peak RSS."""
    output = folder / f"{side}-{number}.out"
    with output.open("wb") as out, (folder / f"{side}.err").open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=err)
        guard = threading.Timer(TIMEOUT_S, process.kill)
        guard.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - start
        guard.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = (folder / f"{side}.err").read_text(errors="replace")[-500:]
        raise BenchError(f"{side} exited with {process.returncode}: {tail}")
    return Run(side, wall_s, usage.ru_maxrss * 1024 / 1e6, output)


def _baseline(export: Export, number: int) -> Run:
    command = [sys.executable, "-c", BASELINE_CODE, str(export.path)]
    run = _run("baseline", command, export.folder, number)
    counted = int(run.output.read_text())
    if counted != export.events:
        raise BenchError(f"baseline counted {counted:,} of {export.events:,}")
    return run


def _report(export: Export, number: int) -> Run:
    page = export.folder / f"report-{number}.html"
    command = [
        *(sys.executable, "-m", "orchestrator", "report"),
        *("--events", str(export.path), "--playbooks", str(export.folder)),
        *("--format", "json", "--html", str(page)),
    ]
    run = _run("report", command, export.folder, number)
    _check_report(run.output, page, export.events)
    return run


def _check_report(output: Path, page: Path, events: int) -> None:
    try:
        reported = json.loads(output.read_text())["events"]
    except (ValueError, KeyError) as exc:
        raise BenchError(f"the report's JSON is not whole: {exc!r}") from exc
    if reported != events:
        raise BenchError(f"the report counted {reported:,} events of {events:,}")
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    if not text.rstrip().endswith("</html>"):
        raise BenchError(f"the HTML page {page.name} is missing or cut short")
    page.unlink()


def _rounds(export: Export) -> list[Run]:
    runs = []
    for number in range(1, ROUNDS + 1):
        runs.append(_baseline(export, number))
        runs.append(_report(export, number))
    return runs


# --- the split --------------------------------------------------------------------


def _timed(work: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def _split(export: Export) -> Split:
    command = [sys.executable, "-m", "orchestrator", "--help"]
    start_up = _run("start-up", command, export.folder, 1).wall_s
    catalog = load([export.folder])
    if catalog.problems:
        raise BenchError(f"the workspace does not load: {catalog.problems}")
    settings = catalog.workspace.metrics
    funnel = metrics.Funnel()
    try:
        read_s, _ = _timed(lambda: funnel.read_mixpanel_export(export.path, settings))
        steps, result = _compute_steps(funnel, settings)
    finally:
        funnel.close()
    page_s, _ = _timed(lambda: report_html.page(result))
    return [
        ("start-up and imports (python -m orchestrator --help)", start_up),
        ("reading the export (Funnel.read_mixpanel_export)", read_s),
        *steps,
        ("the HTML page (report_html.page)", page_s),
    ]


def _compute_steps(
    funnel: metrics.Funnel, settings: MetricsSettings
) -> tuple[Split, metrics.Report]:
    """`metrics.compute`, timed between the steps its progress callback names."""
    marks: list[tuple[str, float]] = []
    result = metrics.compute(
        funnel, settings, lambda step: marks.append((step, time.perf_counter()))
    )
    marks.append(("", time.perf_counter()))
    steps = [
        (f"metrics.compute: {step}", later - at)
        for (step, at), (_, later) in pairwise(marks)
    ]
    return steps, result


# --- the figures ------------------------------------------------------------------


def _best(runs: list[Run], side: str) -> Run:
    return min((run for run in runs if run.side == side), key=lambda run: run.wall_s)


def _peak_mb(runs: list[Run], side: str) -> float:
    return max(run.peak_mb for run in runs if run.side == side)


def _print_export(export: Export) -> None:
    for planted, seed in POPULATIONS:
        print(
            f"population {planted.playbook}: {planted.users:,} users, seed {seed}, "
            f"channels {', '.join(planted.channels)}, holdout {planted.holdout:.0%}"
        )
    print(
        f"export: {export.events:,} events, {export.size_mb:,.1f} MB, generated "
        f"in {export.generate_s:.1f} s (not measured)"
    )


def _print_runs(runs: list[Run]) -> None:
    print(f"{'run':<14}{'wall s':>10}{'peak MB':>10}")
    numbers: dict[str, int] = {}
    for run in runs:
        numbers[run.side] = numbers.get(run.side, 0) + 1
        label = f"{run.side} {numbers[run.side]}"
        print(f"{label:<14}{run.wall_s:>10.2f}{run.peak_mb:>10.1f}")


def _print_split(split: Split, report_s: float) -> None:
    print("where the report's time goes (measured once, not against a target):")
    for label, seconds in split:
        print(f"  {label:<62}{seconds:>8.2f} s")
    total_s = sum(seconds for _, seconds in split)
    print(f"  {'sum':<62}{total_s:>8.2f} s (best report run: {report_s:.2f} s)")


def _print_verdict(runs: list[Run], export: Export) -> None:
    base, report = _best(runs, "baseline"), _best(runs, "report")
    peak_mb = _peak_mb(runs, "report")
    ratio = report.wall_s / base.wall_s
    print(
        f"baseline: {base.wall_s:.2f} s, peak {_peak_mb(runs, 'baseline'):.1f} MB "
        f"(DuckDB count(*) of the export, best of {ROUNDS})"
    )
    print(
        f"report: {report.wall_s:.2f} s, peak {peak_mb:.1f} MB (python -m "
        f"orchestrator report, JSON and HTML, best of {ROUNDS}; peak the largest)"
    )
    print(f"report throughput: {export.events / report.wall_s:,.0f} events/s")
    print(f"ratio (report s / baseline s): {ratio:.2f}")
    checks = (
        (f"the report under {TARGET_WALL_S:.0f} s", report.wall_s, TARGET_WALL_S, "s"),
        (f"its peak under {TARGET_PEAK_MB:,.0f} MB", peak_mb, TARGET_PEAK_MB, "MB"),
        (f"within {TARGET_RATIO:.0f}x the baseline", ratio, TARGET_RATIO, "x"),
    )
    for label, value, target, unit in checks:
        verdict = "PASS" if value < target else "FAIL"
        print(f"target: {label} ({value:,.2f} {unit}): {verdict}")


def main() -> None:
    print(METHOD)
    print()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as name:
        try:
            export = _generate(Path(name))
            _print_export(export)
            runs = _rounds(export)
            split = _split(export)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    print()
    _print_runs(runs)
    print()
    _print_split(split, _best(runs, "report").wall_s)
    print()
    _print_verdict(runs, export)


if __name__ == "__main__":
    main()

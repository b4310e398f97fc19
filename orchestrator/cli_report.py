"""`referloop report`: the loop's metrics and each playbook's lift over its holdout.

referloop report --events export.jsonl          a Mixpanel raw export
referloop report --from 2026-11-01 --to 2026-11-30
                                                the same, fetched from Mixpanel
referloop report                                referloop's own records (REDIS_URL)
referloop report --by channel --by variant      slices too
referloop report --format markdown              for a pull request
referloop report --html report.html             one page with charts, offline
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from integrations.export_file import ExportResult
from integrations.vendors import amplitude_export, mixpanel_export
from orchestrator import metrics
from orchestrator import report as reports
from orchestrator.cli_options import export_files, playbooks_folder, vendor_option
from orchestrator.loader import load
from orchestrator.model import MetricsSettings, Workspace
from orchestrator.settings import Settings
from orchestrator.state import Store

EXIT_USAGE = 2
VENDOR_NAMES = {"mixpanel": "Mixpanel", "amplitude": "Amplitude"}

# Piped to a file, tables keep their rows whole rather than fit 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)


@click.command()
@export_files()
@click.option(
    "--from",
    "from_date",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Fetch Mixpanel's raw export from this day (with --to; UTC days, both "
    "included), with the Mixpanel service account the worker uses.",
)
@click.option(
    "--to",
    "to_date",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The last day of the Mixpanel export to fetch.",
)
@click.option(
    "--keep",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Keep the fetched export in this file (JSON lines), to report on again.",
)
@vendor_option()
@playbooks_folder(
    "The folder whose workspace file says how to read the events (`metrics:`)."
)
@click.option(
    "--by",
    "dimensions",
    multiple=True,
    type=click.Choice(metrics.DIMENSIONS),
    help="Also show each playbook by channel, variant or cohort week.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "csv", "markdown"]),
    default="text",
)
@click.option(
    "--html",
    "page",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report as one HTML page with charts (viewable offline).",
)
def report(
    exports: tuple[Path, ...],
    from_date: datetime | None,
    to_date: datetime | None,
    keep: Path | None,
    vendor: str,
    folder: Path,
    dimensions: tuple[str, ...],
    output: str,
    page: Path | None,
) -> None:
    """The loop's funnel, rates, K-factor, loop time, and lift over the holdout."""
    catalog = load([folder])
    settings = catalog.workspace.metrics
    if (from_date is None) != (to_date is None):
        _usage("give both --from and --to to fetch a Mixpanel export")
    if keep is not None and from_date is None:
        _usage("--keep keeps a fetched export: give --from and --to too")
    fetch = (from_date.date(), to_date.date()) if from_date and to_date else None
    funnel = metrics.Funnel()
    show = output == "text" and sys.stderr.isatty()
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not show,
        ) as progress:
            task = progress.add_task("reading", total=None)

            def say(what: str) -> None:
                progress.update(task, description=what)

            if fetch is not None:
                _fetch(funnel, catalog.workspace, vendor, fetch, keep, say)
            _read(funnel, exports, settings, say, fetched=fetch is not None)
            result = metrics.compute(
                funnel,
                settings,
                lambda step: progress.update(task, description=f"computing {step}"),
            )
    finally:
        funnel.close()
    _print(result, dimensions, output)
    if page is not None:
        # The charting library takes a while to import: only when a page is asked.
        from orchestrator import report_html

        page.write_text(report_html.page(result), encoding="utf-8")
        click.echo(f"Wrote {page}.", err=True)


def _fetch(
    funnel: metrics.Funnel,
    workspace: Workspace,
    vendor: str,
    days: tuple[date, date],
    keep: Path | None,
    say: Callable[[str], None],
) -> None:
    """Fetch Mixpanel's raw export of `days` (only the events the report reads)
    into `keep` or a private temporary file, and read it."""
    settings = workspace.metrics
    names = sorted({*metrics.OWN_EVENTS, *settings.event_kinds()})
    say(f"fetching the export, {days[0]} to {days[1]}")
    with tempfile.TemporaryDirectory(prefix="referloop-export-") as folder:
        path = keep or Path(folder) / "export.jsonl"
        chosen = _chosen(vendor)
        fetched = _download(workspace, chosen, path, days, names)
        click.echo(
            f"Fetched {fetched.events:,} events from {VENDOR_NAMES[chosen]} in "
            f"{fetched.chunks} requests" + (f"; kept in {keep}." if keep else "."),
            err=True,
        )
        say("reading the export")
        funnel.read_export(path, settings)


@click.command("fetch-events")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_date", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--to", "to_date", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option(
    "--event",
    "names",
    multiple=True,
    help="Only this event (repeatable); every event when none is given.",
)
@vendor_option()
@playbooks_folder(
    "The folder whose workspace file names the project and its residency."
)
def fetch_events(
    target: Path,
    from_date: datetime,
    to_date: datetime,
    names: tuple[str, ...],
    vendor: str,
    folder: Path,
) -> None:
    """Fetch Mixpanel's or Amplitude's raw export of some days into TARGET, for
    `report` and `backtest --events` (UTC days, both included)."""
    workspace = load([folder]).workspace
    chosen = _chosen(vendor)
    if chosen == "amplitude" and names:
        _usage("Amplitude's export cannot be filtered by event: leave out --event")
    days = (from_date.date(), to_date.date())
    fetched = _download(workspace, chosen, target, days, sorted(set(names)))
    click.echo(
        f"Fetched {fetched.events:,} events from {VENDOR_NAMES[chosen]} in "
        f"{fetched.chunks} requests into {target}."
    )


def _download(
    workspace: Workspace,
    vendor: str,
    path: Path,
    days: tuple[date, date],
    names: list[str],
) -> ExportResult:
    """Fetch `days` of `vendor`'s raw export into `path`; Mixpanel's only the
    events `names` (all when empty), Amplitude's whole (it has no filter)."""
    if vendor == "amplitude":
        with amplitude_export(workspace, os.environ) as amplitude:
            return amplitude.download(path, days[0], days[1])
    with mixpanel_export(workspace, os.environ) as mixpanel:
        return mixpanel.download(path, days[0], days[1], events=names)


def _chosen(vendor: str) -> str:
    """`vendor`, or for `auto` the one whose export credentials are set."""
    if vendor != "auto":
        return vendor
    if not os.environ.get("MIXPANEL_SERVICE_ACCOUNT") and os.environ.get(
        "AMPLITUDE_SECRET_KEY"
    ):
        return "amplitude"
    return "mixpanel"


def _read(
    funnel: metrics.Funnel,
    exports: tuple[Path, ...],
    settings: MetricsSettings,
    say: Callable[[str], None],
    *,
    fetched: bool,
) -> None:
    if fetched and not exports:
        return
    if exports:
        for path in exports:
            say(f"reading {path.name}")
            funnel.read_export(path, settings)
        return
    env = Settings.from_env()
    if env.is_embedded:
        _usage(
            "give --events EXPORT.jsonl, or --from and --to to fetch Mixpanel's "
            "export, or set REDIS_URL to read referloop's records"
        )
    say("reading referloop's records")
    funnel.add_rows(reports.redis_rows(Store.from_settings(env)))


def _print(result: metrics.Report, dimensions: tuple[str, ...], output: str) -> None:
    if dimensions:
        chosen = tuple(s for s in result.slices if s.dimension in dimensions)
    else:
        chosen = ()
    shown = metrics.Report(**{**result.__dict__, "slices": chosen})
    if output == "json":
        click.echo(json.dumps(reports.as_dict(shown), indent=2))
    elif output == "csv":
        click.echo(reports.as_csv(shown), nl=False)
    elif output == "markdown":
        click.echo(reports.as_markdown(shown), nl=False)
    else:
        console.print(
            f"{result.events:,} events; each exposed user followed for "
            f"{result.window_days} days."
        )
        for table in reports.tables(shown):
            console.print(table)
        if chosen:
            console.print(reports.arms_table(chosen, "By " + ", ".join(dimensions)))


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)

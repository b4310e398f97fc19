"""`referloop report`: the loop's metrics and each playbook's lift over its holdout.

referloop report --events export.jsonl          a Mixpanel raw export
referloop report                                referloop's own records (REDIS_URL)
referloop report --by channel --by variant      slices too
referloop report --format markdown              for a pull request
referloop report --html report.html             one page with charts, offline
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from orchestrator import metrics, report_html
from orchestrator import report as reports
from orchestrator.loader import load
from orchestrator.model import MetricsSettings
from orchestrator.settings import Settings
from orchestrator.state import Store

DEFAULT_PLAYBOOKS = Path("playbooks")
EXIT_USAGE = 2

# Piped to a file, tables keep their rows whole rather than fit 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)


@click.command()
@click.option(
    "--events",
    "exports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A Mixpanel raw export (JSON lines, the Export API's format); repeatable.",
)
@click.option(
    "--playbooks",
    "folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="REFERLOOP_PLAYBOOKS",
    default=DEFAULT_PLAYBOOKS,
    show_default=True,
    help="The folder whose workspace file says how to read the events (`metrics:`).",
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
    folder: Path,
    dimensions: tuple[str, ...],
    output: str,
    page: Path | None,
) -> None:
    """The loop's funnel, rates, K-factor, loop time, and lift over the holdout."""
    catalog = load([folder])
    settings = catalog.workspace.metrics
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
            _read(
                funnel,
                exports,
                settings,
                lambda what: progress.update(task, description=what),
            )
            result = metrics.compute(
                funnel,
                settings,
                lambda step: progress.update(task, description=f"computing {step}"),
            )
    finally:
        funnel.close()
    _print(result, dimensions, output)
    if page is not None:
        page.write_text(report_html.page(result), encoding="utf-8")
        click.echo(f"Wrote {page}.", err=True)


def _read(
    funnel: metrics.Funnel,
    exports: tuple[Path, ...],
    settings: MetricsSettings,
    say: Callable[[str], None],
) -> None:
    if exports:
        for path in exports:
            say(f"reading {path.name}")
            funnel.read_mixpanel_export(path, settings)
        return
    env = Settings.from_env()
    if env.is_embedded:
        _usage(
            "give --events EXPORT.jsonl, or set REDIS_URL to read referloop's records"
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

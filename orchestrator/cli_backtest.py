"""`referloop backtest`: past product events replayed through the playbooks.

referloop backtest --events export.jsonl                     every playbook
referloop backtest --events export.jsonl pack-reviewers      one, by id or file
referloop backtest --events export.jsonl --format markdown   for a pull request

Nothing is sent: the engine runs in this process on a simulated clock, with
channels that only record. Times are simulated and shown in UTC; decisions carry
ids only.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from orchestrator import backtest as backtests
from orchestrator.backtest import DAY, HOUR, Backtest, Decision, VendorLoad
from orchestrator.cli_options import export_files, playbooks_folder
from orchestrator.loader import Catalog, load
from orchestrator.units import format_duration

EXIT_PROBLEMS = 1
EXIT_USAGE = 2
FORMATS = ("text", "json", "csv", "markdown")
DECISION_COLUMNS = (
    "playbook",
    "step",
    "user_id",
    "account_id",
    "decided_at",
    "send_at",
    "outcome",
    "reason",
    "deferred_by",
    "channel",
)
SUMMARY_COLUMNS = (
    "playbook",
    "users nudged",
    "nudges",
    "held back",
    "deferred",
    "busiest day",
)
GUARDRAIL_COLUMNS = ("playbook", "guardrail", "held", "deferred")
OVERLAP_COLUMNS = ("playbook A", "playbook B", "users nudged by both")
# Columns of counts, aligned right.
NUMERIC = frozenset(
    {"users nudged", "nudges", "held back", "deferred", "held", "sends"}
    | {"users nudged by both"}
)
# How many ids a terminal or a pull request shows before "and N more".
IDS_SHOWN = 10

# Piped to a file, tables keep their rows whole rather than fit 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


@click.command()
@click.argument("names", nargs=-1, metavar="[PLAYBOOK]...")
@export_files()
@playbooks_folder("The folder of playbooks and the workspace file.")
@click.option(
    "--format",
    "output",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="`markdown` for a pull request; `json` and `csv` list every decision.",
)
def backtest(
    names: tuple[str, ...], exports: tuple[Path, ...], folder: Path, output: str
) -> None:
    """Replay past events through the playbooks: who would have been nudged, when,
    what each guardrail held back, each vendor's volume against its budget, and
    who two playbooks would both have nudged.

    PLAYBOOK is a playbook's id or file (default: every playbook in the folder).
    Nothing is sent. Exits 1 when a playbook asked for has errors.
    """
    if not exports:
        _usage("give --events EXPORT.jsonl: a Mixpanel raw export to replay")
    catalog = load([folder])
    result = _replay(catalog, exports, names, output)

    for problem in result.problems:
        errors.print(f"error: {problem}", markup=False)
    if output == "json":
        click.echo(json.dumps(as_dict(result), indent=2))
    elif output == "csv":
        click.echo(as_csv(result.decisions), nl=False)
    elif output == "markdown":
        click.echo(as_markdown(result), nl=False)
    else:
        _print_text(result)
    if result.has_errors:
        sys.exit(EXIT_PROBLEMS)


def _replay(
    catalog: Catalog, exports: Sequence[Path], names: Sequence[str], output: str
) -> Backtest:
    """The replay, with a progress bar on a terminal's stderr for text output."""
    shown = output == "text" and sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not shown,
    ) as bar:
        task = bar.add_task("reading the export", total=None)

        def advance(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total or None)

        return backtests.replay(catalog, exports, names, advance)


# --- JSON and CSV ---------------------------------------------------------------------


def as_dict(result: Backtest) -> dict[str, Any]:
    """Everything the replay found, for tools; decisions carry ids only."""
    return {
        "exports": result.exports,
        "lines": result.lines,
        "bad_lines": result.bad,
        "bad_lines_first": [vars(bad) for bad in result.bad_lines],
        "duplicates": result.duplicates,
        "replayed_events": result.replayed_events,
        "first_event": _iso(result.first_event),
        "last_event": _iso(result.last_event),
        "replay_end": _iso(result.replay_end),
        "playbooks": [_playbook_dict(result, s) for s in result.summaries],
        "not_replayed": [
            {"playbook": n.playbook, "path": str(n.path), "reason": n.reason}
            for n in result.not_replayed
        ],
        "problems": [problem.as_dict() for problem in result.problems],
        "vendors": [_vendor_dict(vendor) for vendor in result.vendors],
        "overlaps": [vars(overlap) for overlap in result.overlaps],
        "notes": result.notes,
        "decisions": [_decision_dict(d) for d in result.decisions],
    }


def _playbook_dict(
    result: Backtest, summary: backtests.PlaybookSummary
) -> dict[str, Any]:
    playbook = summary.playbook
    return {
        "id": playbook,
        "decisions": summary.decisions,
        "users_nudged": summary.users_nudged,
        "nudges": summary.nudges,
        "held": summary.held,
        "deferred": summary.deferred,
        "dead": summary.dead,
        "held_by": result.held.get(playbook, {}),
        "deferred_by": result.deferred.get(playbook, {}),
        "users_nudged_by_day": {
            day.isoformat(): users
            for day, users in result.nudged_by_day.get(playbook, {}).items()
        },
        "not_activated": result.not_activated.get(playbook, []),
    }


def _vendor_dict(vendor: VendorLoad) -> dict[str, Any]:
    peak_day = vendor.peak_day
    return {
        "channel": vendor.channel,
        "budget_name": vendor.budget_name or None,
        "budget": str(vendor.budget) if vendor.budget else None,
        "sends": vendor.sends,
        "by_day": {day.isoformat(): sends for day, sends in vendor.by_day.items()},
        "peak_day": peak_day.isoformat() if peak_day else None,
        "peak_day_sends": vendor.peak_day_sends,
        "allowed_a_day": vendor.allows(DAY),
        "peak_hour": _iso(vendor.peak_hour),
        "peak_hour_sends": vendor.peak_hour_sends,
        "allowed_an_hour": vendor.allows(HOUR),
        "peak_window_sends": vendor.peak_window_sends,
        "over_days": [day.isoformat() for day in vendor.over_days],
        "waits_in_a_window": vendor.is_over_in_window,
    }


def _decision_dict(decision: Decision) -> dict[str, str]:
    return {
        "playbook": decision.playbook,
        "step": decision.step,
        "user_id": decision.user_id,
        "account_id": decision.account_id,
        "decided_at": _iso(decision.decided_at) or "",
        "send_at": _iso(decision.send_at) or "",
        "outcome": decision.outcome,
        "reason": decision.reason,
        "deferred_by": decision.deferred_by,
        "channel": decision.channel,
    }


def as_csv(decisions: Sequence[Decision]) -> str:
    """Every decision, one row each, with a header row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DECISION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for decision in decisions:
        writer.writerow(_decision_dict(decision))
    return out.getvalue()


# --- Markdown -------------------------------------------------------------------------


def as_markdown(result: Backtest) -> str:
    """A short summary for a pull-request comment: a few small tables."""
    lines = ["### Backtest", "", _headline(result), ""]
    lines += _md_table(SUMMARY_COLUMNS, [_summary_row(s) for s in result.summaries])
    guardrails = _guardrail_rows(result)
    lines += _md_section(
        "Held back or deferred, by guardrail", GUARDRAIL_COLUMNS, guardrails
    )
    lines += _md_vendors(result.vendors)
    lines += _md_section(
        "Nudged by two playbooks", OVERLAP_COLUMNS, _overlap_rows(result)
    )
    lines += _md_list("Not replayed", [_not_replayed(n) for n in result.not_replayed])
    lines += _md_list("Worth knowing", _remarks(result))
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    aligns = ["---"] + ["--:" if h in NUMERIC else "---" for h in header[1:]]
    table = [_md_row(header), _md_row(aligns)]
    return [*table, *(_md_row(row) for row in rows), ""]


def _md_row(cells: Sequence[str]) -> str:
    escaped = [str(cell).replace("|", "\\|") for cell in cells]
    return "| " + " | ".join(escaped) + " |"


def _md_section(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> list[str]:
    if not rows:
        return []
    return [f"**{title}**", "", *_md_table(header, rows)]


def _md_vendors(vendors: Sequence[VendorLoad]) -> list[str]:
    if not vendors:
        return []
    header = ("vendor", "budget", "busiest day", "a day allows", "busiest hour", "")
    rows = [
        (
            vendor.channel,
            _budget_words(vendor),
            _peak_day(vendor),
            _allowed(vendor, DAY),
            _peak_hour(vendor),
            _verdict(vendor),
        )
        for vendor in vendors
    ]
    return ["**Vendors against their budgets** (UTC)", "", *_md_table(header, rows)]


def _md_list(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    return [f"**{title}**", "", *(f"- {item}" for item in items), ""]


# --- the terminal ---------------------------------------------------------------------


def _print_text(result: Backtest) -> None:
    console.print(_plain(_headline(result)), markup=False)
    console.print(_summary_table(result))
    if result.days():
        console.print(_days_table(result))
    rows = _guardrail_rows(result)
    if rows:
        title = "Held back or deferred, by guardrail"
        console.print(_table(title, GUARDRAIL_COLUMNS, rows))
    if result.vendors:
        console.print(_vendor_table(result.vendors))
    _print_overlaps(result)
    for title, items in (
        ("Not replayed", [_not_replayed(n) for n in result.not_replayed]),
        ("Worth knowing", _remarks(result)),
    ):
        if items:
            console.print(Text(title, style="bold"))
            for item in items:
                console.print(f"  {_plain(item)}", markup=False)


def _summary_table(result: Backtest) -> Table:
    rows = [_summary_row(s) for s in result.summaries]
    return _table("Per playbook", SUMMARY_COLUMNS, rows)


def _days_table(result: Backtest) -> Table:
    """Users nudged each day, a column for each playbook."""
    playbooks = [s.playbook for s in result.summaries]
    rows = [
        (
            day.isoformat(),
            *(str(result.nudged_by_day[p].get(day, 0)) for p in playbooks),
        )
        for day in result.days()
    ]
    return _table("Users nudged per day (UTC)", ("day", *playbooks), rows)


def _vendor_table(vendors: Sequence[VendorLoad]) -> Table:
    header = (
        "vendor",
        "budget",
        "sends",
        "busiest day",
        "a day allows",
        "busiest hour",
        "an hour allows",
        "",
    )
    table = _table("Vendors against their budgets (UTC)", header, [])
    for vendor in vendors:
        table.add_row(
            vendor.channel,
            _budget_words(vendor),
            str(vendor.sends),
            _peak_day(vendor),
            _allowed(vendor, DAY),
            _peak_hour(vendor),
            _allowed(vendor, HOUR),
            Text(_verdict(vendor), style=_verdict_style(vendor)),
        )
    return table


def _print_overlaps(result: Backtest) -> None:
    if len(result.playbooks) < 2:
        return
    if not result.overlaps:
        console.print("No user would have been nudged by two playbooks.")
        return
    title = "Nudged by two playbooks"
    console.print(_table(title, OVERLAP_COLUMNS, _overlap_rows(result)))


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in header:
        if column in NUMERIC:
            table.add_column(column, justify="right")
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


# --- words both the terminal and Markdown use -----------------------------------------


def _headline(result: Backtest) -> str:
    if result.first_event is None or result.last_event is None:
        return "The export holds no event that could be read: nothing was replayed."
    sources = ", ".join(f"`{Path(path).name}`" for path in result.exports)
    span = f"{_minute(result.first_event)} to {_minute(result.last_event)} UTC"
    end = ""
    if result.replay_end and result.replay_end > result.last_event:
        end = f", and deferred deliveries to {_minute(result.replay_end)}"
    return (
        f"Replayed **{result.replayed_events:,}** events of {sources}, "
        f"{span}{end}. Nothing was sent."
    )


def _summary_row(summary: backtests.PlaybookSummary) -> tuple[str, ...]:
    busiest = "-"
    if summary.busiest_day is not None:
        users = summary.busiest_day_users
        busiest = f"{summary.busiest_day} ({users} user{'' if users == 1 else 's'})"
    return (
        summary.playbook,
        str(summary.users_nudged),
        str(summary.nudges),
        str(summary.held),
        str(summary.deferred),
        busiest,
    )


def _overlap_rows(result: Backtest) -> list[tuple[str, ...]]:
    return [(o.first, o.second, str(o.users)) for o in result.overlaps]


def _guardrail_rows(result: Backtest) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for playbook in result.playbooks:
        held = result.held.get(playbook, {})
        deferred = result.deferred.get(playbook, {})
        for reason in sorted(held.keys() | deferred.keys()):
            rows.append(
                (
                    playbook,
                    reason,
                    str(held.get(reason, 0)),
                    str(deferred.get(reason, 0)),
                )
            )
    return rows


def _budget_words(vendor: VendorLoad) -> str:
    return str(vendor.budget) if vendor.budget is not None else "none"


def _peak_day(vendor: VendorLoad) -> str:
    peak = vendor.peak_day
    return f"{vendor.peak_day_sends:,} on {peak}" if peak else "-"


def _peak_hour(vendor: VendorLoad) -> str:
    if vendor.peak_hour is None:
        return "-"
    return f"{vendor.peak_hour_sends:,} at {vendor.peak_hour:%Y-%m-%d %H}:00"


def _allowed(vendor: VendorLoad, span: timedelta) -> str:
    allowed = vendor.allows(span)
    return "-" if allowed is None else f"{allowed:,}"


def _verdict(vendor: VendorLoad) -> str:
    over = vendor.over_days
    if over:
        return f"over on {len(over)} day(s), the first {over[0]}"
    if vendor.is_over_in_window and vendor.budget is not None:
        window = format_duration(vendor.budget.window)
        return f"sends wait: {vendor.peak_window_sends:,} in one {window}"
    return "within budget" if vendor.budget else ""


def _verdict_style(vendor: VendorLoad) -> str:
    if vendor.over_days:
        return "bold red"
    return "yellow" if vendor.is_over_in_window else "green"


def _not_replayed(item: backtests.NotReplayed) -> str:
    return f"`{item.playbook}` ({item.path}): {item.reason}"


def _remarks(result: Backtest) -> list[str]:
    """What a reader should know to trust the figures: skipped lines, gates."""
    remarks = []
    if result.bad:
        remarks.append(_bad_lines_words(result))
    if result.duplicates:
        remarks.append(
            f"{result.duplicates} duplicate event(s) (same `$insert_id`) counted once"
        )
    for playbook, users in result.not_activated.items():
        if users:
            remarks.append(_not_activated_words(result, playbook, users))
    return remarks + result.notes


def _bad_lines_words(result: Backtest) -> str:
    first = "; ".join(f"{b.path}:{b.line} {b.reason}" for b in result.bad_lines[:3])
    return (
        f"{result.bad} line(s) of {result.lines} could not be read and were "
        f"skipped ({first})"
    )


def _not_activated_words(result: Backtest, playbook: str, users: list[str]) -> str:
    shown = ", ".join(users[:IDS_SHOWN])
    more = f" and {len(users) - IDS_SHOWN} more" if len(users) > IDS_SHOWN else ""
    prop = result.gates.get(playbook)
    if not prop:
        why = "they did not meet the activation conditions"
    elif result.activation_event:
        event = result.activation_event
        why = f"the export showed no `{prop}` nor `{event}` event before their trigger"
    else:
        why = f"the export showed no `{prop}` before their trigger"
    count = f"{len(users)} user(s)"
    return f"{playbook}: {count} judged not activated, as {why}: {shown}{more}"


def _plain(markdown: str) -> str:
    """Markdown's emphasis and code marks left out, for the terminal."""
    return markdown.replace("**", "").replace("`", "")


def _iso(moment: datetime | date | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def _minute(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)

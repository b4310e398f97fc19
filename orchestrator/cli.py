"""The `referloop` command.

Exit codes: 0 when all is well, 1 when playbooks have errors (or the command's work
failed), 2 when the command was called wrongly or a setting is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import click
from rich.console import Console
from rich.json import JSON
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from integrations.base import Check, CohortSource, EventSource
from integrations.filesource import FileSource
from orchestrator import local, logs
from orchestrator import preview as previews
from orchestrator import schema as schemas
from orchestrator.cli_backtest import backtest
from orchestrator.cli_options import DEFAULT_PLAYBOOKS, playbooks_folder
from orchestrator.cli_report import fetch_events, report
from orchestrator.cli_rewards import rewards
from orchestrator.errors import (
    ConfigurationError,
    PlaybookError,
    ReferloopError,
    UsageError,
)
from orchestrator.ledger import Entry as LedgerEntry
from orchestrator.ledger import Ledger
from orchestrator.loader import Catalog, LoadedPlaybook, load
from orchestrator.problems import Problem
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import KEYS_SETTING, InviteSigner

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
DEFAULT_SOURCE = Path("examples/triggers.jsonl")
DEFAULT_OUTBOX = Path("outbox/nudges.jsonl")

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="referloop")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens, to stderr.")
def cli(verbose: bool) -> None:
    """referloop runs B2B referral loops declared in YAML playbooks."""
    logs.configure(logging.INFO if verbose else logging.ERROR, _log_style())


def _local_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--source` and `--playbooks`, shared by `run` and `plan`."""
    source = click.option(
        "--source",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=DEFAULT_SOURCE,
        show_default=True,
        help="Triggers: product events and cohort members, JSONL or CSV.",
    )
    folder = click.option(
        "--playbooks",
        "folder",
        type=click.Path(exists=True, path_type=Path),
        default=DEFAULT_PLAYBOOKS,
        show_default=True,
    )
    return source(folder(command))


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="`json` for tools, `github` for GitHub Actions annotations.",
)
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
def lint(paths: tuple[Path, ...], output: str, strict: bool) -> None:
    """Check playbooks and the workspace file; report every problem at its line.

    PATHS are files or folders (default: playbooks/).
    """
    catalog = load(list(paths) or [DEFAULT_PLAYBOOKS])
    problems = sorted(catalog.problems, key=_reading_order)
    if output == "json":
        click.echo(json.dumps(_lint_json(catalog, problems), indent=2))
    elif output == "github":
        for problem in problems:
            click.echo(_annotation(problem))
    else:
        _print_lint(catalog, problems)

    failed = catalog.has_errors or (strict and bool(problems))
    sys.exit(EXIT_PROBLEMS if failed else EXIT_OK)


@cli.command()
@click.argument("playbook")
@click.option(
    "--user",
    "user_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML or JSON with `user`, `account` and `event` fields to render with.",
)
@click.option(
    "--sample", is_flag=True, help="Render with the workspace's sample fields."
)
@click.option(
    "--step", default="nudge", show_default=True, help="`nudge` or a reinforcement."
)
@click.option("--channel", "channel_name", help="Preview a fallback channel instead.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def preview(
    playbook: str,
    user_file: Path | None,
    sample: bool,
    step: str,
    channel_name: str | None,
    output: str,
) -> None:
    """Show a nudge as the vendor would receive it and the recipient would read it.

    PLAYBOOK is a playbook file, or the id of one in playbooks/. Nothing is sent.
    """
    if user_file is not None and sample:
        _usage("give --user FILE or --sample, not both")
    loaded, catalog = _find(playbook)
    data = previews.sample(catalog.workspace, loaded.playbook, step)
    if user_file is not None:
        data = previews.read_sample(user_file, data)

    signer = _signer()
    built = previews.build(
        loaded.playbook,
        catalog.workspace,
        data,
        signer,
        step=step,
        channel_name=channel_name,
    )
    if output == "json":
        click.echo(json.dumps(built.as_dict(), indent=2, default=str))
    else:
        _print_preview(built, loaded)


@cli.command()
@click.argument("kind", type=click.Choice(["playbook", "workspace"]), required=False)
@click.option(
    "--write",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write both schemas into this folder (e.g. schema/).",
)
def schema(kind: str | None, folder: Path | None) -> None:
    """Print the JSON Schema of playbooks (or of the workspace file)."""
    if folder is not None:
        for written in schemas.write(folder):
            click.echo(f"wrote {written}")
        return
    click.echo(schemas.render(kind or "playbook"), nl=False)


@cli.command()
@_local_run_options
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTBOX,
    show_default=True,
    help="Where nudges are written (rewritten on each run).",
)
def run(source: Path, folder: Path, outbox: Path) -> None:
    """Run the loop locally: triggers from a file, nudges to the outbox.

    Uses an in-process broker and store, so nothing is durable and no vendor is
    called. For the real thing, set REDIS_URL and run `referloop worker`.
    """
    catalog = _load_for_running(folder)
    outbox.unlink(missing_ok=True)
    console.print(
        Text(
            "Local run: in-process broker and store, nothing is durable; "
            f"nudges go to {outbox}, not to vendors.",
            style="yellow",
        )
    )
    triggers = FileSource(source)
    report = _run_locally(catalog, triggers, {"*": triggers}, outbox)
    _print_report(report, "sent to the outbox")


@cli.command()
@_local_run_options
@click.option(
    "--configured",
    is_flag=True,
    help="Read cohorts from the sources configured in the environment instead.",
)
def plan(source: Path, folder: Path, configured: bool) -> None:
    """Dry run: what the playbooks would send for these triggers, and what not, why.

    Reads the trigger file, or with --configured the cohorts of the configured
    sources as a worker would poll them now. Nothing is sent or written.
    """
    catalog = _load_for_running(folder)
    if configured:
        from integrations import vendors
        from orchestrator import process

        settings = Settings.from_env()
        # With Redis, a plan's queries draw on the budgets the workers share.
        shared = None if settings.is_embedded else Store.from_settings(settings)
        built = vendors.build(catalog.workspace, os.environ, shared)
        cohorts = process.sources(settings, built)
        if not cohorts:
            _usage("no cohort source is configured (see docs/operations.md)")
        try:
            report = _run_locally(catalog, None, cohorts, None)
        finally:
            built.close()
    else:
        triggers = FileSource(source)
        report = _run_locally(catalog, triggers, {"*": triggers}, None)
    _print_report(report, "would be sent")


@cli.command()
@click.option("--user", "user_id", help="Every delivery to this user id.")
@click.option("--key", "delivery_key", help="One delivery, by its key.")
@click.option("--playbook", "playbook_id", help="Every delivery of this playbook.")
@click.option("--dead", is_flag=True, help="The dead letters.")
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text")
def ledger(
    user_id: str | None,
    delivery_key: str | None,
    playbook_id: str | None,
    dead: bool,
    output: str,
) -> None:
    """What happened to a user, a delivery or a playbook (ids and reasons only)."""
    chosen = [x for x in (user_id, delivery_key, playbook_id) if x] + (
        ["dead"] if dead else []
    )
    if len(chosen) != 1:
        _usage("give one of --user, --key, --playbook or --dead")
    settings = Settings.from_env()
    if settings.is_embedded:
        _usage("the ledger lives in Redis: set REDIS_URL (a local run keeps nothing)")

    book = Ledger(Store.from_settings(settings))
    if delivery_key:
        keys = [delivery_key]
    elif user_id:
        keys = book.keys_for_user(user_id)
    elif playbook_id:
        keys = book.keys_for_playbook(playbook_id)
    else:
        keys = book.dead_letters()
    entries = list(book.entries(keys))
    if output == "json":
        click.echo(json.dumps([_entry_dict(e) for e in entries], indent=2))
    else:
        console.print(_ledger_table(entries))


@cli.command()
@playbooks_folder("The folder whose workspace file holds the vendors' settings.")
@click.option("--vendor", "only", multiple=True, help="Check only this vendor.")
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text")
def doctor(folder: Path, only: tuple[str, ...], output: str) -> None:
    """Check each vendor: are its settings complete, do its credentials work?

    Credentials are tried with one read-only call each; nothing is sent. Secrets
    are never printed. Exits 1 when a configured vendor fails a check.
    """
    from integrations import vendors

    catalog = load([folder])
    unknown = sorted(set(only) - set(vendors.SETTINGS))
    if unknown:
        _usage(f"no vendor called {', '.join(unknown)}: {', '.join(vendors.SETTINGS)}")
    found = [
        check
        for check in vendors.checks(catalog.workspace, os.environ)
        if not only or check.vendor in only
    ]
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(check) for check in found], indent=2))
    else:
        console.print(_doctor_table(found))
    if not all(check.ok for check in found):
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.option("--threads", type=click.IntRange(1, 64), help="Worker threads.")
def worker(threads: int | None) -> None:
    """Run a worker: decide and deliver, until SIGTERM (then finish within 25 s)."""
    settings = Settings.from_env()
    if settings.is_embedded:
        _usage("a worker needs REDIS_URL; for a local try, use `referloop run`")
    from orchestrator import process

    _as_a_process()
    sys.exit(process.run_worker_process(settings, threads=threads))


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True)  # noqa: S104 - a dyno's port
@click.option("--port", type=int, envvar="PORT", default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web process (health check) on PORT."""
    import uvicorn

    from orchestrator.web import create_app

    _as_a_process()
    uvicorn.run(create_app(), host=host, port=port, log_level="info", access_log=False)


@cli.command()
def clock() -> None:
    """Run the clock: enqueue a poll of each cohort every REFERLOOP_POLL_MINUTES.

    Two clocks running at once (as during a Heroku restart) enqueue each poll once.
    """
    settings = Settings.from_env()
    if settings.is_embedded:
        _usage("a clock needs REDIS_URL; for a local try, use `referloop run`")
    from orchestrator import process

    _as_a_process()
    sys.exit(process.run_clock_process(settings))


cli.add_command(rewards)
cli.add_command(report)
cli.add_command(fetch_events)
cli.add_command(backtest)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command; a user's mistake prints one `error:` line, no traceback."""
    try:
        cli.main(args=argv, prog_name="referloop", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", EXIT_PROBLEMS)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PlaybookError as exc:
        for problem in sorted(exc.problems, key=_reading_order):
            errors.print(f"error: {problem}", markup=False)
        sys.exit(EXIT_PROBLEMS)
    except (ConfigurationError, UsageError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except ReferloopError as exc:
        _fail(str(exc), EXIT_PROBLEMS)
    sys.exit(EXIT_OK)


# --- helpers ---------------------------------------------------------------------


def _log_style() -> Literal["text", "json"]:
    return "json" if os.environ.get("LOG_FORMAT") == "json" else "text"


def _as_a_process() -> None:
    """Processes run unattended: their INFO lines are what ops read."""
    logs.configure(logging.INFO, _log_style())


def _load_for_running(folder: Path) -> Catalog:
    catalog = load([folder])
    for problem in sorted(catalog.problems, key=_reading_order):
        if problem.is_error:
            errors.print(f"error: {problem}", markup=False)
    for path in catalog.skipped:
        errors.print(f"skipped {path}: fix it and run again", markup=False)
    if not catalog.playbooks:
        raise PlaybookError([p for p in catalog.problems if p.is_error])
    return catalog


def _run_locally(
    catalog: Catalog,
    events: EventSource | None,
    cohorts: Mapping[str, CohortSource],
    outbox: Path | None,
) -> local.Report:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} triggers"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task("Reading triggers and deciding", total=None)

        def advance(_: str, count: int) -> None:
            bar.update(task, completed=count)

        return local.run(
            catalog, events, cohorts, outbox=outbox, signer=_signer(), progress=advance
        )


def _print_report(report: local.Report, sent_words: str) -> None:
    summary = Table(title="Summary", title_justify="left", box=None, pad_edge=False)
    summary.add_column("")
    summary.add_column("count", justify="right")
    rows = [
        ("triggers seen", report.triggers),
        ("duplicates ignored", report.duplicates),
        ("records rejected", len(report.rejected)),
        (f"deliveries {sent_words}", report.count("sent")),
        ("held back by a guardrail", report.count("held")),
        ("deferred (quiet hours, send window, delay)", report.count("deferred")),
        ("dead-lettered", report.count("dead")),
        ("unsure whether sent", report.count("ambiguous")),
    ]
    for label, count in rows:
        summary.add_row(label, str(count))
    console.print(summary)
    console.print(_playbook_outcomes(report))
    if report.loop:
        console.print(_loop_table(report))
    if report.deferred:
        times = sorted(until for _, _, until in report.deferred if until)
        first, last = (_utc(times[0]), _utc(times[-1])) if times else ("?", "?")
        console.print(f"deferred deliveries are due from {first} to {last} (UTC)")
    for cohort in report.unread:
        console.print(f"not read: no source for cohort {cohort}", markup=False)
    for rejected in report.rejected:
        console.print(f"rejected {rejected.where}: {rejected.reason}", markup=False)
    console.print(f"done in {report.seconds:.1f} s", style="dim")


def _playbook_outcomes(report: local.Report) -> Table:
    table = Table(title="By playbook", title_justify="left", box=None, pad_edge=False)
    for column in ("playbook", "sent", "deferred", "held", "held by", "dead"):
        table.add_column(column, overflow="fold")
    for playbook_id, tally in sorted(report.by_playbook.items()):
        held = {
            k.split(":", 1)[1]: n for k, n in tally.items() if k.startswith("held:")
        }
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(held.items()))
        table.add_row(
            playbook_id,
            str(tally.get("sent", 0)),
            str(tally.get("deferred", 0)),
            str(sum(held.values())),
            reasons or "-",
            str(tally.get("dead", 0)),
        )
    return table


def _loop_table(report: local.Report) -> Table:
    """Invites the product reported, and what attribution made of them."""
    table = Table(title="Referrals", title_justify="left", box=None, pad_edge=False)
    table.add_column("")
    table.add_column("count", justify="right")
    loop = report.loop
    refused = {
        name.split(":", 1)[1]: n
        for name, n in loop.items()
        if name.startswith("refused:")
    }
    accepted = loop.get("invite_accepted", 0)
    rows = [
        ("invites sent", loop.get("invite_sent", 0)),
        ("invites accepted", accepted),
        ("  credited to a referrer", accepted - sum(refused.values())),
        *((f"  not credited: {reason}", n) for reason, n in sorted(refused.items())),
        ("invitees activated", loop.get("invitee_activated", 0)),
    ]
    for label, count in rows:
        table.add_row(label, str(count))
    return table


def _doctor_table(checks: Sequence[Check]) -> Table:
    from integrations import vendors

    table = Table(title="Vendors", title_justify="left")
    for column in ("vendor", "check", "", "detail"):
        table.add_column(column)
    for check in checks:
        if not check.ok:
            mark = Text("FAIL", style="bold red")
        elif check.detail == vendors.NOT_CONFIGURED:
            mark = Text("-", style="dim")
        else:
            mark = Text("ok", style="green")
        table.add_row(check.vendor, check.what, mark, check.detail)
    return table


def _utc(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _entry_dict(entry: LedgerEntry) -> dict[str, Any]:
    return {"delivery_key": entry.delivery_key, **dict(entry.fields)}


def _ledger_table(entries: list[LedgerEntry]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("delivery key", "playbook", "user", "outcome", "channel"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for entry in entries:
        fields = entry.fields
        table.add_row(
            entry.delivery_key,
            fields.get("playbook", ""),
            fields.get("user", ""),
            entry.outcome,
            fields.get("channel", ""),
            entry.reason,
        )
    return table


def _find(name: str) -> tuple[LoadedPlaybook, Catalog]:
    path = Path(name)
    if not path.is_file():
        path = DEFAULT_PLAYBOOKS / f"{name}.yaml"
    if not path.is_file():
        _usage(f"no playbook file or id `{name}`")

    catalog = load([path])
    problems = [p for p in catalog.problems if p.is_error]
    if problems or not catalog.playbooks:
        raise PlaybookError(problems)
    return catalog.playbooks[0], catalog


def _signer() -> InviteSigner:
    if os.environ.get(KEYS_SETTING):
        return InviteSigner.from_env()
    return InviteSigner.throwaway()


def _reading_order(problem: Problem) -> tuple[str, int, int]:
    return (str(problem.path), problem.position.line, problem.position.column)


def _lint_json(catalog: Catalog, problems: list[Problem]) -> dict[str, Any]:
    return {
        "playbooks": [
            {"id": p.playbook.id, "path": str(p.path)} for p in catalog.playbooks
        ],
        "skipped": [str(path) for path in catalog.skipped],
        "problems": [problem.as_dict() for problem in problems],
        "errors": sum(problem.is_error for problem in problems),
        "warnings": sum(not problem.is_error for problem in problems),
    }


def _annotation(problem: Problem) -> str:
    level = "error" if problem.is_error else "warning"
    where = f"file={problem.path},line={problem.position.line}"
    message = problem.message.replace("%", "%25").replace("\n", "%0A")
    return f"::{level} {where},col={problem.position.column}::{message}"


def _print_lint(catalog: Catalog, problems: list[Problem]) -> None:
    for problem in problems:
        style = "red" if problem.is_error else "yellow"
        line = Text(
            f"{problem.path}:{problem.position.line}:{problem.position.column}: "
        )
        line.append(("" if problem.is_error else "warning: ") + problem.message, style)
        console.print(line)
    if catalog.playbooks:
        console.print(_playbook_table(catalog))
    console.print(_summary(catalog, problems))


def _playbook_table(catalog: Catalog) -> Table:
    table = Table(title="Playbooks", title_justify="left", box=None, pad_edge=False)
    for column in ("id", "priority", "trigger", "channels", "holdout", "reward on"):
        table.add_column(column, overflow="fold")
    for loaded in sorted(catalog.playbooks, key=lambda p: -p.playbook.priority):
        playbook = loaded.playbook
        reward = playbook.reward
        table.add_row(
            playbook.id if playbook.enabled else f"{playbook.id} (disabled)",
            str(playbook.priority),
            playbook.trigger.source.removeprefix("event:"),
            " > ".join(playbook.nudge.channels()),
            f"{playbook.holdout:g}%",
            reward.earned_on.removeprefix("invitee_") if reward else "-",
        )
    return table


def _summary(catalog: Catalog, problems: list[Problem]) -> Text:
    error_count = sum(p.is_error for p in problems)
    warning_count = len(problems) - error_count
    skipped = ", ".join(path.name for path in catalog.skipped)
    text = Text(f"{len(catalog.playbooks)} playbook(s) loaded")
    if catalog.skipped:
        text.append(f", {len(catalog.skipped)} skipped ({skipped})", "red")
    text.append(f"; {error_count} error(s), {warning_count} warning(s)")
    return text


def _print_preview(built: previews.Preview, loaded: LoadedPlaybook) -> None:
    request = built.request
    title = f"{built.playbook_id} · {built.step} · {built.channel}"
    console.print(Text(title, style="bold"))
    console.print(f"delivery key {built.nudge.delivery_key}  (from {loaded.path})")

    sent = Text(f"{request.method} {request.url}\n", style="bold")
    for name, value in request.headers.items():
        sent.append(f"{name}: {value}\n")
    console.print(Panel(sent, title="What the vendor receives", title_align="left"))
    console.print(JSON(json.dumps(request.json, default=str)))

    read = Text(overflow="fold")
    if built.nudge.subject:
        read.append(f"Subject: {built.nudge.subject}\n\n", style="bold")
    read.append(built.nudge.body.rstrip() + "\n")
    panel = Panel(read, title="What the recipient reads", title_align="left")
    console.print(panel, soft_wrap=False)
    console.print(Text("Invite link: ", style="bold") + Text(built.invite_link))
    console.print(Text("Trust: ", style="bold") + Text(built.trust))
    if built.signed_with_throwaway_key:
        note = f"signed with a throwaway key: set {KEYS_SETTING} to sign for real"
        console.print(Text(note, style="dim"))


def _usage(message: str) -> NoReturn:
    _fail(message, EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    errors.print(f"error: {message}", markup=False)
    sys.exit(code)

"""`referloop rewards`: the grants that wait, and the people who approve them.

    referloop rewards pending               grants awaiting approval
    referloop rewards list --user U         a user's grants (as referrer or invitee)
    referloop rewards list --on-hold        grants inside their hold period
    referloop rewards approve ID... --by ME give them (now, or when their hold ends)
    referloop rewards reject ID... --by ME --reason TEXT

Tables show ids, grants, states and reasons: never a name or an address.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

from orchestrator.ledger import Entry
from orchestrator.loader import load
from orchestrator.model import Playbook
from orchestrator.rewards import ON_HOLD, Rewards, describe
from orchestrator.settings import Settings
from orchestrator.state import Store

# Piped to a file or to grep, a table keeps its rows whole rather than fit 80
# columns.
console = Console(width=None if sys.stdout.isatty() else 200)
EXIT_USAGE = 2
EXIT_REFUSED = 1


@click.group()
def rewards() -> None:
    """Grants: list those that wait, approve or reject them."""


@rewards.command()
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text")
def pending(output: str) -> None:
    """Grants that wait for someone's approval, oldest first."""
    _show(_rewards().pending(), output, "No grant awaits approval.")


@rewards.command(name="list")
@click.option("--user", "user_id", help="Every grant to this user id.")
@click.option("--on-hold", is_flag=True, help="Grants inside their hold period.")
@click.option("--dead", is_flag=True, help="Grants the target refused for good.")
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text")
def list_grants(user_id: str | None, on_hold: bool, dead: bool, output: str) -> None:
    """A user's grants, the grants on hold, or the dead ones."""
    if sum(bool(x) for x in (user_id, on_hold, dead)) != 1:
        _usage("give one of --user, --on-hold or --dead")
    book = _rewards()
    if on_hold:
        entries = book.on_hold()
    else:
        keys = book.ledger.keys_for_user(user_id) if user_id else []
        entries = list(book.ledger.entries(keys or book.ledger.dead_letters()))
        if user_id and not keys:
            entries = []
    _show(entries, output, "No grant found.")


@rewards.command()
@click.argument("grant_ids", nargs=-1, required=True)
@click.option("--by", "by", required=True, help="Who approves (recorded).")
def approve(grant_ids: Sequence[str], by: str) -> None:
    """Approve grants: given now when due, or when their hold ends."""
    from orchestrator import actors
    from orchestrator.broker import build_broker

    settings = _settings()
    book = _rewards(settings)
    catalog = load([settings.playbooks])

    def playbook_of(playbook_id: str) -> Playbook | None:
        loaded = catalog.get(playbook_id)
        return loaded.playbook if loaded is not None else None

    broker = build_broker(settings)
    declared = actors.declare(broker)
    refused = 0
    try:
        for gid in grant_ids:
            verdict = book.approve(gid, by, int(time.time() * 1000), playbook_of)
            if verdict == "give":
                declared.grant.send(gid)
                click.echo(f"{gid}: approved; it is being given.")
            elif verdict == ON_HOLD:
                click.echo(f"{gid}: approved; it is given when its hold ends.")
            else:
                refused += 1
                click.echo(f"{gid}: not approved: {verdict}.")
    finally:
        broker.close()
    sys.exit(EXIT_REFUSED if refused else 0)


@rewards.command()
@click.argument("grant_ids", nargs=-1, required=True)
@click.option("--by", "by", required=True, help="Who rejects (recorded).")
@click.option("--reason", required=True, help="Why, for the record (no personal data).")
def reject(grant_ids: Sequence[str], by: str, reason: str) -> None:
    """Reject grants that have not been given."""
    book = _rewards()
    refused = 0
    for gid in grant_ids:
        verdict = book.reject(gid, by, reason)
        if verdict == "rejected":
            click.echo(f"{gid}: rejected.")
        else:
            refused += 1
            click.echo(f"{gid}: not rejected: {verdict}.")
    sys.exit(EXIT_REFUSED if refused else 0)


def _settings() -> Settings:
    settings = Settings.from_env()
    if settings.is_embedded:
        _usage("grants live in Redis: set REDIS_URL (a local run keeps nothing)")
    return settings


def _rewards(settings: Settings | None = None) -> Rewards:
    return Rewards(Store.from_settings(settings or _settings()))


def _show(entries: list[Entry], output: str, empty: str) -> None:
    rows = [describe(entry) for entry in entries]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(empty)
        return
    table = Table(box=None, pad_edge=False)
    # Ids are copied into `approve` and `reject`: never shortened.
    table.add_column("id", no_wrap=True, min_width=35)
    for column in ("playbook", "party", "user", "grant", "state", "due", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        due = row["due_ms"]
        table.add_row(
            row["id"],
            row["playbook"],
            row["party"],
            row["user"],
            f"{row['grant']} x{row['amount']}" if row["amount"] else row["grant"],
            row["state"],
            _utc(int(due)) if due.isdigit() else "",
            row["reason"],
        )
    console.print(table)


def _utc(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)

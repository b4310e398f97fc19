"""The loop report in words and tables: for a terminal, a pull request, a machine.

`as_dict` is the whole report as plain data (`--format json`); `as_csv` one row
per playbook slice and arm; `as_markdown` fits in a pull-request comment;
`tables` gives rich tables for the terminal.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import redis
from rich.table import Table

from orchestrator.ledger import Outcome
from orchestrator.metrics import Arm, Lift, LoopTime, Report, Segment, TriggerPath
from orchestrator.state import Store

METRICS = (
    ("invite_rate", "invite rate"),
    ("acceptance", "acceptance"),
    ("activation", "activation"),
    ("k_factor", "K-factor"),
)
METRIC_NAMES = dict(METRICS)
VERDICT_WORDS = {
    "lift": "real lift",
    "harm": "real harm",
    "not distinguishable yet": "not distinguishable from noise yet",
    "too few users yet": "too few users to tell yet",
    "no data": "no data",
}
TRIGGER_WORDS = {"event": "product event", "cohort": "cohort sync or poll"}
SCAN_COUNT = 1_000
FUNNEL_COLUMNS = (
    "eligible",
    "held back",
    "sent",
    "invited",
    "accepted",
    "activated",
    "rewarded",
)


# --- plain data ------------------------------------------------------------------


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "events": report.events,
        "window_days": report.window_days,
        "first": report.first.isoformat() if report.first else None,
        "last": report.last.isoformat() if report.last else None,
        "funnel": {k: dict(v) for k, v in report.funnel.items()},
        "playbooks": [_segment_dict(s) for s in report.playbooks],
        "slices": [_segment_dict(s) for s in report.slices],
        "loop_time": _loop_dict(report.loop_time),
        "loop_time_by_playbook": {
            k: _loop_dict(v) for k, v in report.loop_time_by_playbook.items()
        },
        "trigger_paths": [
            {
                "playbook": path.playbook or None,
                "trigger": path.trigger,
                "nudges": path.nudges,
                "median_minutes": path.median_s / 60,
                "p90_minutes": path.p90_s / 60,
            }
            for path in report.trigger_paths
        ],
    }


def as_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = list(Arm().as_dict())
    writer.writerow(["playbook", "dimension", "value", "arm", *columns])
    for segment in (*report.playbooks, *report.slices):
        for arm_name, arm in (("nudged", segment.nudged), ("holdout", segment.holdout)):
            values = arm.as_dict()
            writer.writerow(
                [segment.playbook, segment.dimension, segment.value, arm_name]
                + ["" if values[c] is None else values[c] for c in columns]
            )
    return out.getvalue()


def as_markdown(report: Report) -> str:
    lines = [
        f"**Loop report**: {report.events:,} events, each exposed user followed "
        f"for {report.window_days} days.",
        "",
        "| playbook | arm | users | invite rate | invites/inviter | acceptance "
        "| activation | K-factor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for segment in report.playbooks:
        for name, arm in (("nudged", segment.nudged), ("holdout", segment.holdout)):
            lines.append(
                f"| {segment.playbook} | {name} | {arm.users:,} | "
                f"{percent(arm.invite_rate)} | {number(arm.invites_per_inviter)} | "
                f"{percent(arm.acceptance)} | {percent(arm.activation)} | "
                f"{number(arm.k_factor, 3)} |"
            )
    lines += [
        "",
        "| playbook | metric | nudged - holdout | 95% interval | verdict |",
        "|---|---|---:|---|---|",
    ]
    for segment in report.playbooks:
        for lift in segment.lifts:
            lines.append(
                f"| {segment.playbook} | {metric_name(lift.metric)} | "
                f"{signed(lift)} | {interval(lift)} | {verdict(lift)} |"
            )
    return "\n".join(lines) + "\n"


# --- terminal tables ---------------------------------------------------------------


def tables(report: Report) -> Iterator[Table]:
    yield _funnel_table(report)
    yield arms_table(report.playbooks, "The loop, per playbook")
    yield _lift_table(report.playbooks)
    yield _loop_time_table(report)
    if report.trigger_paths:
        yield _trigger_path_table(report)


def _funnel_table(report: Report) -> Table:
    table = Table(
        title="Funnel (users)", title_justify="left", box=None, pad_edge=False
    )
    table.add_column("playbook")
    names = (
        "eligible",
        "held back",
        "sent",
        "invited",
        "accepted",
        "activated",
        "rewarded",
    )
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("held back by", overflow="fold")
    for playbook, stages in sorted(report.funnel.items()):
        held = {
            k.split(":", 1)[1]: n for k, n in stages.items() if k.startswith("held:")
        }
        table.add_row(
            playbook,
            _int(stages.get("eligible", 0)),
            _int(sum(held.values())),
            _int(stages.get("nudge_sent", 0)),
            _int(stages.get("invited", 0)),
            _int(stages.get("accepted", 0)),
            _int(stages.get("activated", 0)),
            _int(stages.get("rewarded", 0)),
            ", ".join(f"{k} {n:,}" for k, n in sorted(held.items())) or "-",
        )
    return table


def arms_table(segments: Iterable[Segment], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("playbook", "arm"):
        table.add_column(column)
    for column in (
        "users",
        "invite rate",
        "invites/inviter",
        "acceptance",
        "activation",
        "K-factor",
    ):
        table.add_column(column, justify="right")
    for segment in segments:
        label = segment.playbook + (
            f" ({segment.dimension} {segment.value})" if segment.dimension else ""
        )
        for name, arm in (("nudged", segment.nudged), ("holdout", segment.holdout)):
            table.add_row(
                label,
                name,
                _int(arm.users),
                percent(arm.invite_rate),
                number(arm.invites_per_inviter),
                percent(arm.acceptance),
                percent(arm.activation),
                number(arm.k_factor, 3),
            )
    return table


def _lift_table(segments: Iterable[Segment]) -> Table:
    table = Table(
        title="Lift over the holdout", title_justify="left", box=None, pad_edge=False
    )
    for column in ("playbook", "metric"):
        table.add_column(column)
    table.add_column("nudged - holdout", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("verdict", overflow="fold")
    for segment in segments:
        for lift in segment.lifts:
            table.add_row(
                segment.playbook,
                metric_name(lift.metric),
                signed(lift),
                interval(lift),
                verdict(lift),
            )
    return table


def _loop_time_table(report: Report) -> Table:
    table = Table(
        title="Loop time: activation to first accepted invite",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column("playbook")
    for column in ("referrers", "median", "90th percentile"):
        table.add_column(column, justify="right")
    rows = [("all referrers", report.loop_time)]
    rows += sorted(report.loop_time_by_playbook.items())
    for name, loop in rows:
        table.add_row(
            name, _int(loop.referrers), duration(loop.median_s), duration(loop.p90_s)
        )
    return table


def _trigger_path_table(report: Report) -> Table:
    table = Table(
        title="Trigger to send: from the moment a trigger fired to the vendor "
        "taking the nudge (delays and quiet hours included)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column("playbook")
    table.add_column("trigger")
    for column in ("nudges", "median", "90th percentile"):
        table.add_column(column, justify="right")
    for path in report.trigger_paths:
        table.add_row(*trigger_path_cells(path))
    return table


def trigger_path_cells(path: TriggerPath) -> list[str]:
    return [
        path.playbook or "all playbooks",
        TRIGGER_WORDS.get(path.trigger, path.trigger),
        _int(path.nudges),
        duration(path.median_s),
        duration(path.p90_s),
    ]


# --- reading referloop's own records -------------------------------------------------


def redis_rows(store: Store) -> Iterator[dict[str, Any]]:
    """Funnel rows from the ledger, the loop events and the referrers' records."""
    client = store.redis
    prefix = store.key("ledger", "dk_")
    for key in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
        fields = cast(dict[str, str], client.hgetall(key))
        row = _ledger_row(fields)
        if row is not None:
            yield row
    stream = store.key("loop-events")
    last = "-"
    while True:
        batch = cast(
            list[tuple[str, dict[str, str]]],
            client.xrange(stream, min=last, max="+", count=SCAN_COUNT),
        )
        if last != "-":
            batch = batch[1:]
        if not batch:
            break
        for _, fields in batch:
            row = _loop_row(fields)
            if row is not None:
                yield row
        last = batch[-1][0]
    records = store.key("referrer", "")
    for key in client.scan_iter(match=f"{records}*", count=SCAN_COUNT):
        if key.count(":") != records.count(":"):
            continue
        try:
            activated = client.hget(key, "activated_ms")
        except redis.ResponseError:
            continue
        if activated:
            yield {
                "time": _when(str(activated)),
                "kind": "user_activated",
                "user_id": key[len(records) :],
            }


def _ledger_row(fields: dict[str, str]) -> dict[str, Any] | None:
    """A decision: sent (dated when the vendor took it) or held back (dated when
    decided)."""
    outcome = fields.get("outcome")
    if outcome not in (Outcome.SENT, Outcome.HELD) or not fields.get("user"):
        return None
    sent = outcome == Outcome.SENT
    decided = fields.get("created_ms", fields.get("updated_ms", "0"))
    trigger_ms = fields.get("trigger_ms", "")
    return {
        "time": _when(fields.get("updated_ms", decided) if sent else decided),
        "kind": "nudge_sent" if sent else "nudge_held",
        "user_id": fields["user"],
        "account_id": fields.get("account") or None,
        "playbook": fields.get("playbook") or None,
        "step": fields.get("step") or None,
        "channel": fields.get("channel") or None,
        "variant": fields.get("variant") or None,
        "reason": None if sent else fields.get("reason", "").split(":", 1)[0],
        "trigger": fields.get("trigger") or None,
        "trigger_time": _when(trigger_ms) if trigger_ms.isdigit() else None,
        "segment": fields.get("segment") or None,
    }


def _loop_row(fields: dict[str, str]) -> dict[str, Any] | None:
    kind = fields.get("kind", "")
    if kind == "invite_sent":
        user = fields.get("referrer", "")
    elif kind in ("invite_accepted", "invitee_activated"):
        if fields.get("reason"):
            return None
        user = fields.get("invitee", "")
    elif kind == "reward_granted":
        user = fields.get("user", "")
    else:
        return None
    if not user:
        return None
    return {
        "time": _when(fields.get("at_ms", "0")),
        "kind": kind,
        "user_id": user,
        "account_id": fields.get("account") or None,
        "referrer": fields.get("referrer") if kind != "invite_sent" else None,
        "playbook": fields.get("playbook") or None,
        "variant": fields.get("variant") or None,
    }


def _when(ms: str) -> datetime:
    return datetime.fromtimestamp(int(ms or 0) / 1000, UTC)


# --- words and numbers ----------------------------------------------------------------


def _segment_dict(segment: Segment) -> dict[str, Any]:
    return {
        "playbook": segment.playbook,
        "dimension": segment.dimension or None,
        "value": segment.value or None,
        "nudged": segment.nudged.as_dict(),
        "holdout": segment.holdout.as_dict(),
        "lift": [lift.as_dict() for lift in segment.lifts],
    }


def _loop_dict(loop: LoopTime) -> dict[str, Any]:
    return {
        "referrers": loop.referrers,
        "median_hours": None if math.isnan(loop.median_s) else loop.median_s / 3600,
        "p90_hours": None if math.isnan(loop.p90_s) else loop.p90_s / 3600,
    }


def verdict(lift: Lift) -> str:
    words = VERDICT_WORDS[lift.verdict]
    waiting = ("not distinguishable yet", "too few users yet")
    if lift.verdict in waiting and lift.users_needed:
        words += f"; about {lift.users_needed:,} users per arm would tell"
    return words


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def signed(lift: Lift) -> str:
    value = lift.difference.estimate
    if math.isnan(value):
        return "-"
    if lift.metric == "k_factor":
        return f"{value:+.3f}"
    return f"{value * 100:+.1f} pts"


def interval(lift: Lift) -> str:
    low, high = lift.difference.low, lift.difference.high
    if math.isnan(low) or math.isnan(high):
        return "-"
    if lift.metric == "k_factor":
        return f"{low:+.3f} to {high:+.3f}"
    return f"{low * 100:+.1f} to {high * 100:+.1f}"


def percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.1f}%"


def number(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _int(value: int) -> str:
    return f"{value:,}"


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"

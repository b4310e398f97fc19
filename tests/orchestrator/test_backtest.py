"""`referloop backtest`: a Mixpanel raw export replayed through playbooks on a
simulated clock, with the engine's own guardrails and nothing sent."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import backtest, guardrails
from orchestrator.backtest import DAY, Backtest, Decision, Overlap
from orchestrator.cli_backtest import as_csv, as_dict, as_markdown
from orchestrator.errors import UsageError
from orchestrator.loader import load
from simulator import population
from tests.orchestrator.conftest import PlaybookFolder

ROOT = Path(__file__).resolve().parents[2]

# Dates in March 2026, before the clocks change: London is on UTC.
WORKSPACE = """\
name: backtest tests
time_zone: Europe/London
quiet_hours: 20:00-08:00
activation:
  property: user.activated_at
metrics:
  events:
    user_activated: Activated
fields:
  user:
    first_name: Priya
"""

PLAYBOOK = """\
id: {id}
description: Ask for a reviewer when a pack is uploaded.
owner: growth
priority: {priority}
trigger:
  {trigger}
holdout: {holdout}
nudge:
  channel: intercom
  intercom: {{from_admin: 1}}
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
{limits}"""

ACTIVATED = "2026-01-05T09:00:00Z"


def playbook(
    playbook_id: str = "pack-reviewers",
    *,
    trigger: str = "event: pack_uploaded",
    priority: int = 0,
    holdout: str = "0%",
    limits: str = "",
) -> str:
    return PLAYBOOK.format(
        id=playbook_id,
        trigger=trigger,
        priority=priority,
        holdout=holdout,
        limits=limits,
    )


def event(name: str, user: str, at: str, **properties: Any) -> dict[str, Any]:
    """An event as the Export API writes it; the user is activated unless told."""
    moment = datetime.fromisoformat(at)
    given = {"activated_at": ACTIVATED, **properties}
    return {
        "event": name,
        "properties": {
            "time": int(moment.timestamp()),
            "distinct_id": user,
            "$insert_id": f"{name}-{user}-{at}",
            "account_id": "acct-1",
            **{key: value for key, value in given.items() if value is not None},
        },
    }


def uploaded(user: str, at: str, **properties: Any) -> dict[str, Any]:
    return event("pack_uploaded", user, at, **properties)


def write_export(path: Path, lines: Sequence[object]) -> Path:
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def playbooks(tmp_path: Path, *texts: str, workspace: str = WORKSPACE) -> Path:
    folder = PlaybookFolder(tmp_path / "playbooks")
    folder.workspace(workspace)
    for text in texts:
        playbook_id = text.split("\n", 1)[0].removeprefix("id: ")
        folder.playbook(text, f"{playbook_id}.yaml")
    return folder.root


def replay(
    tmp_path: Path,
    lines: Sequence[object],
    *texts: str,
    workspace: str = WORKSPACE,
) -> Backtest:
    """Replay `lines` through `texts` (the default playbook when none)."""
    folder = playbooks(tmp_path, *(texts or (playbook(),)), workspace=workspace)
    export = write_export(tmp_path / "export.jsonl", lines)
    return backtest.replay(load([folder]), [export])


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def of(result: Backtest, user: str) -> list[Decision]:
    return [d for d in result.decisions if d.user_id == user]


# --- who, when ------------------------------------------------------------------------


def test_a_nudge_is_decided_and_sent_at_the_time_of_its_event(tmp_path: Path):
    result = replay(tmp_path, [uploaded("u-1", "2026-03-10T10:00:00+00:00")])

    (decision,) = result.decisions
    assert decision == Decision(
        playbook="pack-reviewers",
        step="nudge",
        user_id="u-1",
        account_id="acct-1",
        decided_at=utc("2026-03-10T10:00:00+00:00"),
        send_at=utc("2026-03-10T10:00:00+00:00"),
        outcome="sent",
        reason="",
        deferred_by="",
        channel="intercom",
    )
    (summary,) = result.summaries
    assert (summary.users_nudged, summary.nudges, summary.held) == (1, 1, 0)
    assert result.nudged_by_day == {"pack-reviewers": {date(2026, 3, 10): 1}}
    assert result.replayed_events == 1


def test_the_holdout_holds_back_its_users(tmp_path: Path):
    users = [f"u-{n}" for n in range(40)]
    held = next(u for u in users if guardrails.in_holdout("pack-reviewers", u, 50))
    nudged = next(
        u for u in users if not guardrails.in_holdout("pack-reviewers", u, 50)
    )
    lines = [uploaded(u, "2026-03-10T10:00:00+00:00") for u in (held, nudged)]

    result = replay(tmp_path, lines, playbook(holdout="50%"))

    assert [d.reason for d in of(result, held)] == ["holdout"]
    assert [d.outcome for d in of(result, nudged)] == ["sent"]
    assert result.held == {"pack-reviewers": {"holdout": 1}}


def test_a_cap_holds_a_second_nudge_within_its_period_but_not_after_it(
    tmp_path: Path,
):
    """The cap counts on the replayed days, not on the day the replay runs."""
    limits = "limits:\n  per_user: 1 per 7d\n  reentry: every time\n"
    lines = [
        uploaded("u-1", "2026-03-02T10:00:00+00:00"),
        uploaded("u-1", "2026-03-05T10:00:00+00:00"),
        uploaded("u-1", "2026-03-10T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, playbook(limits=limits))

    assert [(d.outcome, d.reason) for d in result.decisions] == [
        ("sent", ""),
        ("held", "cap:per_user:1 per 7d"),
        ("sent", ""),
    ]
    assert [d.send_at for d in result.decisions if d.send_at] == [
        utc("2026-03-02T10:00:00+00:00"),
        utc("2026-03-10T10:00:00+00:00"),
    ]


def test_quiet_hours_defer_a_delivery_to_the_morning_of_the_replayed_day(
    tmp_path: Path,
):
    """Given quiet hours 20:00-08:00 in each recipient's time zone, an early
    upload waits for 08:00 that day, one in New York for 08:00 there, and a late
    one for the next morning, after the export's last event."""
    lines = [
        uploaded("early", "2026-03-10T06:30:00+00:00"),
        uploaded("york", "2026-03-10T11:00:00+00:00", time_zone="America/New_York"),
        uploaded("late", "2026-03-10T21:15:00+00:00"),
    ]

    result = replay(tmp_path, lines)

    sends = {
        d.user_id: (d.decided_at, d.send_at, d.deferred_by) for d in result.decisions
    }
    assert sends == {
        "early": (
            utc("2026-03-10T06:30:00+00:00"),
            utc("2026-03-10T08:00:00+00:00"),
            "quiet_hours",
        ),
        "york": (
            utc("2026-03-10T11:00:00+00:00"),
            utc("2026-03-10T12:00:00+00:00"),
            "quiet_hours",
        ),
        "late": (
            utc("2026-03-10T21:15:00+00:00"),
            utc("2026-03-11T08:00:00+00:00"),
            "quiet_hours",
        ),
    }
    assert result.deferred == {"pack-reviewers": {"quiet_hours": 3}}
    assert result.last_event == utc("2026-03-10T21:15:00+00:00")
    assert result.replay_end == utc("2026-03-11T08:00:00+00:00")


def test_a_deferred_delivery_goes_before_a_later_event_is_judged(tmp_path: Path):
    """The delivery due at 08:00 takes the cap before the 09:00 upload asks for it."""
    limits = "limits:\n  per_user: 1 per 1d\n  reentry: every time\n"
    lines = [
        uploaded("u-1", "2026-03-10T06:30:00+00:00"),
        uploaded("u-1", "2026-03-10T09:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, playbook(limits=limits))

    assert [(d.outcome, d.reason, d.send_at) for d in result.decisions] == [
        ("sent", "", utc("2026-03-10T08:00:00+00:00")),
        ("held", "cap:per_user:1 per 1d", None),
    ]


# --- what the export cannot say -------------------------------------------------------


def test_users_the_export_never_shows_activated_are_judged_not_activated(
    tmp_path: Path,
):
    """The activation property on an event, or the workspace's activation event
    before the trigger, activates a user; one after it does not."""
    lines = [
        event("Activated", "by-event", "2026-03-01T09:00:00+00:00", activated_at=None),
        uploaded("by-event", "2026-03-10T10:00:00+00:00", activated_at=None),
        uploaded("by-property", "2026-03-10T10:00:00+00:00"),
        uploaded("never", "2026-03-10T10:00:00+00:00", activated_at=None),
        uploaded("too-late", "2026-03-10T10:00:00+00:00", activated_at=None),
        event("Activated", "too-late", "2026-03-11T09:00:00+00:00", activated_at=None),
    ]

    result = replay(tmp_path, lines)

    outcomes = {d.user_id: (d.outcome, d.reason) for d in result.decisions}
    assert outcomes == {
        "by-event": ("sent", ""),
        "by-property": ("sent", ""),
        "never": ("held", "not_activated"),
        "too-late": ("held", "not_activated"),
    }
    assert result.not_activated == {"pack-reviewers": ["never", "too-late"]}
    assert result.gates == {"pack-reviewers": "user.activated_at"}


def test_a_field_a_condition_reads_is_the_users_own_never_the_example(
    tmp_path: Path,
):
    """`fields.user.role` has the example `admin`; the playbook asks for admins.
    Only the user whose events said so is one; a null property says nothing."""
    workspace = WORKSPACE.replace(
        "    first_name: Priya\n", "    first_name: Priya\n    role: admin\n"
    )
    admins_only = playbook().replace(
        "  event: pack_uploaded",
        "  event: pack_uploaded\n  where:\n    user.role: admin",
    )
    said_nothing = uploaded("admin", "2026-03-10T10:00:00+00:00")
    said_nothing["properties"]["role"] = None
    lines = [
        event("Logged In", "admin", "2026-03-09T10:00:00+00:00", role="admin"),
        said_nothing,
        uploaded("unknown", "2026-03-10T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, admins_only, workspace=workspace)

    outcomes = {d.user_id: (d.outcome, d.reason) for d in result.decisions}
    assert outcomes == {"admin": ("sent", ""), "unknown": ("held", "conditions")}


def test_a_cohort_triggered_playbook_is_listed_as_not_replayed(tmp_path: Path):
    cohort = playbook("cohort-reviewers", trigger="cohort: mixpanel:61877")
    lines = [uploaded("u-1", "2026-03-10T10:00:00+00:00")]

    result = replay(tmp_path, lines, playbook(), cohort)

    (left_out,) = result.not_replayed
    assert left_out.playbook == "cohort-reviewers"
    assert "cohort mixpanel:61877" in left_out.reason
    assert result.playbooks == ["pack-reviewers"]
    assert [d.outcome for d in result.decisions] == ["sent"]
    assert not result.has_errors


def test_a_broken_playbook_is_reported_at_its_line_while_the_good_one_replays(
    tmp_path: Path,
):
    folder = PlaybookFolder(tmp_path / "playbooks")
    folder.workspace(WORKSPACE)
    folder.playbook(playbook(), "pack-reviewers.yaml")
    broken_text = playbook("late-reviewers").replace(
        "  event: pack_uploaded", "  event: pack_uploaded\n  delay: 2 hourz"
    )
    broken = folder.playbook(broken_text, "late-reviewers.yaml")
    export = write_export(
        tmp_path / "e.jsonl", [uploaded("u-1", "2026-03-10T10:00:00+00:00")]
    )

    result = backtest.replay(folder.load(), [export])

    (problem,) = result.problems
    assert problem.path == broken.path
    assert problem.position == broken.at("2 hourz")
    assert "2 hourz" in problem.message
    (left_out,) = result.not_replayed
    assert left_out.path == broken.path
    assert f"{broken.path}:{problem.position.line}" in left_out.reason
    assert [(d.playbook, d.outcome) for d in result.decisions] == [
        ("pack-reviewers", "sent")
    ]
    assert result.has_errors


def test_a_bad_export_line_is_counted_and_skipped(tmp_path: Path):
    lines: list[object] = [
        "this is not JSON",
        {"event": "pack_uploaded", "properties": {"distinct_id": "u-9"}},
        ["an", "array"],
        uploaded("u-1", "2026-03-10T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines)

    assert (result.lines, result.bad) == (4, 3)
    assert [(b.line, b.reason) for b in result.bad_lines] == [
        (1, "not JSON"),
        (2, "no `time`"),
        (3, "not a JSON object"),
    ]
    assert [(d.user_id, d.outcome) for d in result.decisions] == [("u-1", "sent")]


def test_an_event_exported_twice_is_replayed_once(tmp_path: Path):
    once = uploaded("u-1", "2026-03-10T10:00:00+00:00")

    result = replay(tmp_path, [once, once])

    assert result.duplicates == 1
    assert result.replayed_events == 1
    assert len(result.decisions) == 1


def test_a_follow_up_on_a_product_event_is_replayed_for_users_nudged_first(
    tmp_path: Path,
):
    """A follow-up answers the user the playbook nudged; one on an invite event
    would need referloop's own invite links, so the report says it is left out."""
    step = """\
  - on: {event}
    nudge:
      channel: intercom
      intercom: {{from_admin: 1}}
      invite: {{share: review_request}}
      trust: Reviewers see one pack.
      message:
        body: "Done together. Invite the next one: {{{{ invite.link }}}}"
"""
    follow_ups = "reinforcement:\n" + "".join(
        step.format(event=name)
        for name in ("collaboration_completed", "invitee_activated")
    )
    lines = [
        uploaded("nudged", "2026-03-10T10:00:00+00:00"),
        event("collaboration_completed", "nudged", "2026-03-11T10:00:00+00:00"),
        event("collaboration_completed", "stranger", "2026-03-11T10:00:00+00:00"),
        event("invitee_activated", "nudged", "2026-03-12T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, playbook(limits=follow_ups))

    assert [(d.user_id, d.step, d.outcome) for d in result.decisions] == [
        ("nudged", "nudge", "sent"),
        ("nudged", "reinforcement:collaboration_completed", "sent"),
    ]
    (note,) = result.notes
    assert "`invitee_activated` is not replayed" in note


# --- across playbooks and vendors -----------------------------------------------------


def test_two_playbooks_on_the_same_event_give_an_overlap(tmp_path: Path):
    big_packs = playbook("big-packs", priority=10).replace(
        "  event: pack_uploaded",
        "  event: pack_uploaded\n  where:\n    event.document_count: {at_least: 5}",
    )
    lines = [
        uploaded("u-1", "2026-03-10T10:00:00+00:00", document_count=8),
        uploaded("u-2", "2026-03-10T11:00:00+00:00", document_count=2),
    ]

    result = replay(tmp_path, lines, playbook(priority=20), big_packs)

    assert result.overlaps == [Overlap("big-packs", "pack-reviewers", 1)]
    assert result.held["big-packs"] == {"conditions": 1}
    users = {s.playbook: s.users_nudged for s in result.summaries}
    assert users == {"pack-reviewers": 2, "big-packs": 1}


def test_a_day_over_a_vendors_budget_is_flagged(tmp_path: Path):
    workspace = WORKSPACE + "vendors:\n  intercom:\n    budget: 2 per 1d\n"
    lines = [
        uploaded("u-1", "2026-03-10T10:00:00+00:00"),
        uploaded("u-2", "2026-03-10T10:00:00+00:00"),
        uploaded("u-3", "2026-03-10T14:00:00+00:00"),
        uploaded("u-4", "2026-03-11T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, workspace=workspace)

    (intercom,) = result.vendors
    assert (intercom.channel, intercom.budget_name) == ("intercom", "intercom:api")
    assert intercom.by_day == {date(2026, 3, 10): 3, date(2026, 3, 11): 1}
    assert intercom.allows(DAY) == 2
    assert intercom.over_days == [date(2026, 3, 10)]
    assert (intercom.peak_day, intercom.peak_day_sends) == (date(2026, 3, 10), 3)
    assert intercom.peak_hour == utc("2026-03-10T10:00:00+00:00")
    assert intercom.peak_hour_sends == 2
    assert intercom.is_over_in_window


def test_a_vendors_documented_budget_applies_when_the_workspace_sets_none(
    tmp_path: Path,
):
    result = replay(tmp_path, [uploaded("u-1", "2026-03-10T10:00:00+00:00")])

    (intercom,) = result.vendors
    assert str(intercom.budget) == "9800 per 1m"
    assert intercom.allows(DAY) == 9800 * 24 * 60
    assert intercom.over_days == []


def test_a_customerio_broadcast_draws_on_its_own_budget(tmp_path: Path):
    """Transactional sends share Customer.io's 3,000 per 3 s (paced 2% under);
    API-triggered broadcasts have one per 10 s, so two at once must wait."""
    intercom = "  channel: intercom\n  intercom: {from_admin: 1}"
    broadcast = playbook("broadcast", priority=10).replace(
        intercom, "  channel: customerio\n  customerio: {broadcast: 7}"
    )
    transactional = playbook("transactional", priority=20).replace(
        intercom, "  channel: customerio\n  customerio: {transactional_message: 42}"
    )
    lines = [
        uploaded("u-1", "2026-03-10T10:00:00+00:00"),
        uploaded("u-2", "2026-03-10T10:00:00+00:00"),
    ]

    result = replay(tmp_path, lines, broadcast, transactional)

    loads = {v.budget_name: v for v in result.vendors}
    assert sorted(loads) == ["customerio:broadcast", "customerio:track"]
    assert str(loads["customerio:broadcast"].budget) == "1 per 10s"
    assert str(loads["customerio:track"].budget) == "2940 per 3s"
    assert loads["customerio:broadcast"].peak_window_sends == 2
    assert loads["customerio:broadcast"].is_over_in_window
    assert not loads["customerio:track"].is_over_in_window


def test_only_the_playbooks_named_are_replayed(tmp_path: Path):
    lines = [uploaded("u-1", "2026-03-10T10:00:00+00:00")]
    texts = (playbook(priority=20), playbook("big-packs", priority=10))
    folder = playbooks(tmp_path, *texts)
    export = write_export(tmp_path / "e.jsonl", lines)
    by_id = backtest.replay(load([folder]), [export], ["big-packs"])
    by_file = backtest.replay(
        load([folder]), [export], [str(folder / "pack-reviewers.yaml")]
    )

    assert {d.playbook for d in by_id.decisions} == {"big-packs"}
    assert {d.playbook for d in by_file.decisions} == {"pack-reviewers"}
    with pytest.raises(UsageError, match="big-pack"):
        backtest.replay(load([folder]), [export], ["big-pack"])


def test_a_generated_export_replays_each_user_once_in_time_order(tmp_path: Path):
    """A seeded population's export, not sorted by time, with a playbook that
    asks each user once they activate: every user is judged once, the holdout
    takes exactly its users, and nothing goes out before it was decided."""
    planted = population.Planted(users=300, weeks=2)
    export = tmp_path / "population.jsonl"
    population.write(planted, seed=7, path=export)
    folder = playbooks(tmp_path, playbook(trigger="event: Activated", holdout="10%"))
    result = backtest.replay(load([folder]), [export])

    users = {f"{planted.playbook}-u{n}" for n in range(planted.users)}
    held_out = {u for u in users if guardrails.in_holdout("pack-reviewers", u, 10)}
    assert {d.user_id for d in result.decisions} == users
    assert len(result.decisions) == planted.users
    assert {d.user_id for d in result.decisions if d.reason == "holdout"} == held_out
    assert {d.user_id for d in result.decisions if d.is_sent} == users - held_out
    decided = [d.decided_at for d in result.decisions]
    assert decided == sorted(decided)
    assert all(d.send_at >= d.decided_at for d in result.decisions if d.send_at)
    assert result.bad == 0


def test_an_amplitude_export_replays_as_the_same_mixpanel_one(tmp_path: Path):
    """The same population exported in Amplitude's shape, gzipped inside a zip
    as its Export API answers: the same decisions, at the same times."""
    planted = population.Planted(users=200, weeks=2)
    mixpanel_export = tmp_path / "population.jsonl"
    population.write(planted, seed=9, path=mixpanel_export)
    plain = tmp_path / "amplitude.json"
    population.write_amplitude(planted, 9, plain)
    archive = tmp_path / "amplitude.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            "314/314_2026-09-07_9#0.json.gz", gzip.compress(plain.read_bytes())
        )
    folder = playbooks(tmp_path, playbook(trigger="event: Activated", holdout="10%"))

    def decisions(path: Path) -> list[tuple[str, str, object]]:
        replayed = backtest.replay(load([folder]), [path])
        assert replayed.bad == 0
        return sorted((d.user_id, d.outcome, d.decided_at) for d in replayed.decisions)

    expected = decisions(mixpanel_export)
    assert len(expected) == planted.users
    assert decisions(archive) == expected
    assert decisions(plain) == expected


# --- what the report shows ------------------------------------------------------------


def test_decisions_carry_ids_and_never_names_or_emails(tmp_path: Path):
    lines = [
        uploaded(
            "u-1",
            "2026-03-10T10:00:00+00:00",
            email="dana.reviewer@example.com",
            first_name="Dana",
        )
    ]

    result = replay(tmp_path, lines)
    written = as_csv(result.decisions) + json.dumps(as_dict(result))

    assert "u-1" in written
    assert "acct-1" in written
    for personal in ("dana.reviewer@example.com", "Dana", "Priya"):
        assert personal not in written
    header = as_csv(result.decisions).splitlines()[0]
    assert header == (
        "playbook,step,user_id,account_id,decided_at,send_at,outcome,reason,"
        "deferred_by,channel"
    )


def test_the_markdown_is_short_and_holds_the_key_tables(tmp_path: Path):
    workspace = WORKSPACE + "vendors:\n  intercom:\n    budget: 2 per 1d\n"
    texts = (
        playbook(priority=20, holdout="50%"),
        playbook("big-packs", priority=10),
        playbook("owners", trigger="event: deadline_set"),
        playbook("cohort-reviewers", trigger="cohort: mixpanel:61877"),
    )
    lines: list[object] = ["not JSON"]
    for day in range(1, 29):
        for n in range(6):
            at = f"2026-02-{day:02d}T{9 + n:02d}:00:00+00:00"
            lines.append(uploaded(f"u-{day}-{n}", at))
            lines.append(event("deadline_set", f"u-{day}-{n}", at))

    result = replay(tmp_path, lines, *texts, workspace=workspace)
    markdown = as_markdown(result)

    assert len(markdown.splitlines()) < 60
    for heading in (
        "| playbook | users nudged | nudges | held back | deferred | busiest day |",
        "**Held back or deferred, by guardrail**",
        "**Vendors against their budgets** (UTC)",
        "**Nudged by two playbooks**",
        "**Not replayed**",
    ):
        assert heading in markdown
    assert "| playbook A | playbook B | users nudged by both |" in markdown
    assert "| big-packs | owners | 168 |" in markdown
    assert "over on 28 day(s)" in markdown
    assert "`cohort-reviewers`" in markdown
    assert "1 line(s) of 337 could not be read" in markdown


# --- the command ----------------------------------------------------------------------


def _referloop(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REFERLOOP_PLAYBOOKS"}
    command = [sys.executable, "-m", "orchestrator", *map(str, args)]
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with `playbooks/` and an export, as a team's repository."""
    playbooks(tmp_path, playbook(priority=20), playbook("big-packs", priority=10))
    write_export(
        tmp_path / "export.jsonl",
        [
            uploaded("u-1", "2026-03-10T10:00:00+00:00"),
            uploaded("u-2", "2026-03-10T21:00:00+00:00"),
            "not JSON",
        ],
    )
    return tmp_path


def test_the_command_prints_tables_in_a_terminal(project: Path):
    result = _referloop("backtest", "--events", "export.jsonl", cwd=project)

    assert result.returncode == 0, result.stderr
    for title in (
        "Per playbook",
        "Users nudged per day (UTC)",
        "Held back or deferred, by guardrail",
        "Vendors against their budgets (UTC)",
        "Nudged by two playbooks",
    ):
        assert title in result.stdout
    assert "Replayed 2 events of export.jsonl" in result.stdout
    assert "1 line(s) of 3 could not be read" in result.stdout


def test_the_command_lists_every_decision_as_json(project: Path):
    result = _referloop(
        "backtest", "--events", "export.jsonl", "--format", "json", cwd=project
    )

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    decisions = [(d["playbook"], d["user_id"], d["send_at"]) for d in data["decisions"]]
    assert sorted(decisions) == [
        ("big-packs", "u-1", "2026-03-10T10:00:00Z"),
        ("big-packs", "u-2", "2026-03-11T08:00:00Z"),
        ("pack-reviewers", "u-1", "2026-03-10T10:00:00Z"),
        ("pack-reviewers", "u-2", "2026-03-11T08:00:00Z"),
    ]
    assert data["overlaps"] == [
        {"first": "big-packs", "second": "pack-reviewers", "users": 2}
    ]
    assert data["bad_lines"] == 1
    assert data["replay_end"] == "2026-03-11T08:00:00Z"


def test_the_command_writes_markdown_for_a_pull_request(project: Path):
    result = _referloop(
        "backtest",
        "--events",
        "export.jsonl",
        "pack-reviewers",
        "--format",
        "markdown",
        cwd=project,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("### Backtest\n")
    assert "| pack-reviewers | 2 | 2 | 0 | 1 | 2026-03-10 (1 user) |" in result.stdout
    assert "big-packs" not in result.stdout


def test_the_command_says_what_it_needs_and_exits_2(project: Path):
    missing = _referloop("backtest", cwd=project)
    unknown = _referloop(
        "backtest", "--events", "export.jsonl", "no-such-playbook", cwd=project
    )

    assert missing.returncode == 2
    assert "--events" in missing.stderr
    assert unknown.returncode == 2
    assert "error: no playbook `no-such-playbook`" in unknown.stderr


def test_the_command_exits_1_when_a_playbook_has_errors(project: Path):
    broken = project / "playbooks" / "broken.yaml"
    broken.write_text("id: broken\ndescription: [unclosed\n", encoding="utf-8")

    result = _referloop(
        "backtest", "--events", "export.jsonl", "--format", "json", cwd=project
    )

    assert result.returncode == 1
    assert "error: " in result.stderr
    assert str(Path("playbooks") / "broken.yaml") + ":" in result.stderr
    data = json.loads(result.stdout)
    assert [n["playbook"] for n in data["not_replayed"]] == ["broken"]
    assert len(data["decisions"]) == 4

"""Loop metrics on hand-computed datasets, empty and degenerate ones included,
and on seeded synthetic populations whose planted parameters they must recover."""

from __future__ import annotations

import gzip
import json
import math
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator import stats
from orchestrator.metrics import Funnel, Report, compute, export_form
from orchestrator.model import MetricsEvents, MetricsSettings
from orchestrator.report import as_dict
from simulator.population import Planted, write, write_amplitude

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday
SETTINGS = MetricsSettings(events=MetricsEvents(user_activated="Activated"))


def export(path: Path, events: list[tuple[str, float, str, dict[str, Any]]]) -> Path:
    """Write (event, hours after T0, user, properties) as a Mixpanel raw export."""
    with path.open("w") as out:
        for name, hours, user, properties in events:
            at = T0 + timedelta(hours=hours)
            props = {"time": int(at.timestamp()), "distinct_id": user, **properties}
            out.write(json.dumps({"event": name, "properties": props}) + "\n")
    return path


def report_of(path: Path, settings: MetricsSettings = SETTINGS) -> Report:
    funnel = Funnel()
    try:
        funnel.read_mixpanel_export(path, settings)
        return compute(funnel, settings)
    finally:
        funnel.close()


SENT = "referloop nudge sent"
HELD = "referloop nudge held back"
PB = {"playbook": "pack-reviewers", "step": "nudge", "channel": "intercom"}


def small_dataset() -> list[tuple[str, float, str, dict[str, Any]]]:
    """Four nudged users and two held out, with a worked example's numbers:

    nudged: u1 sends 2 invites, both accepted, one activates; u2 sends 1, not
    accepted; u3 and u4 send none. holdout: h1 sends 1, accepted and activated;
    h2 sends none. One more user is held back by a cap, and is in no arm.
    """
    return [
        ("Activated", -240, "u1", {}),
        (SENT, 0, "u1", PB),
        (SENT, 1, "u2", PB),
        (SENT, 2, "u3", PB),
        (SENT, 3, "u4", {**PB, "channel": "braze"}),
        (HELD, 0, "h1", {**PB, "reason": "holdout"}),
        (HELD, 0, "h2", {**PB, "reason": "holdout"}),
        (HELD, 0, "c1", {**PB, "reason": "cap"}),
        ("invite_sent", 5, "u1", {}),
        ("invite_sent", 6, "u1", {}),
        ("invite_sent", 7, "u2", {}),
        ("invite_sent", 8, "h1", {}),
        ("invite_accepted", 24, "i1", {"referrer_id": "u1"}),
        ("invite_accepted", 30, "i2", {"referrer_id": "u1"}),
        ("invite_accepted", 31, "i3", {"referrer_id": "h1"}),
        ("invitee_activated", 48, "i1", {"referrer_id": "u1"}),
        ("invitee_activated", 50, "i3", {"referrer_id": "h1"}),
        # Outside u2's 28-day window: not counted.
        ("invite_accepted", 24 * 40, "i4", {"referrer_id": "u2"}),
        ("referloop reward granted", 200, "u1", {"playbook": "pack-reviewers"}),
    ]


def test_the_metrics_of_a_small_dataset_are_the_hand_computed_ones(tmp_path: Path):
    report = report_of(export(tmp_path / "e.jsonl", small_dataset()))

    (segment,) = report.playbooks
    nudged, holdout = segment.nudged, segment.holdout
    assert (nudged.users, nudged.inviters, nudged.invites) == (4, 2, 3)
    assert (nudged.accepted, nudged.activated) == (2, 1)
    assert nudged.invite_rate == pytest.approx(2 / 4)
    assert nudged.invites_per_inviter == pytest.approx(3 / 2)
    assert nudged.acceptance == pytest.approx(2 / 3)
    assert nudged.activation == pytest.approx(1 / 2)
    assert nudged.k_factor == pytest.approx(1 / 4)
    assert nudged.k_factor == pytest.approx(
        nudged.invite_rate
        * nudged.invites_per_inviter
        * nudged.acceptance
        * nudged.activation
    )
    assert (holdout.users, holdout.inviters, holdout.invites) == (2, 1, 1)
    assert holdout.k_factor == pytest.approx(1 / 2)
    assert report.funnel["pack-reviewers"] == {
        "nudge_sent": 4,
        "held:holdout": 2,
        "held:cap": 1,
        "eligible": 7,
        "invited": 2,
        "accepted": 1,
        "activated": 1,
        "rewarded": 1,
    }
    # u1 activated 240 h before the nudge and had an invite accepted 24 h after it.
    assert report.loop_time.referrers == 1
    assert report.loop_time.median_s == pytest.approx(264 * 3600)


def test_slices_split_a_playbook_by_channel(tmp_path: Path):
    report = report_of(export(tmp_path / "e.jsonl", small_dataset()))

    by_channel = {s.value: s for s in report.slices if s.dimension == "channel"}
    assert by_channel["intercom"].nudged.users == 3
    assert by_channel["braze"].nudged.users == 1
    assert by_channel["intercom"].holdout.users == 2


def test_small_samples_are_flagged_and_never_called_a_lift(tmp_path: Path):
    report = report_of(export(tmp_path / "e.jsonl", small_dataset()))

    lifts = {lift.metric: lift for lift in report.playbooks[0].lifts}
    assert all(lift.small_sample for lift in lifts.values())
    assert all(lift.verdict == "too few users yet" for lift in lifts.values())
    # Equal invite rates: no number of users would tell them apart.
    assert lifts["invite_rate"].users_needed is None


def test_an_empty_export_gives_an_empty_report(tmp_path: Path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")

    report = report_of(path)

    assert (report.events, report.playbooks, report.funnel) == (0, (), {})
    assert report.loop_time.referrers == 0
    assert math.isnan(report.loop_time.median_s)


def test_a_playbook_without_a_holdout_has_no_lift_to_show(tmp_path: Path):
    events = [e for e in small_dataset() if e[0] != HELD]

    report = report_of(export(tmp_path / "e.jsonl", events))

    lifts = report.playbooks[0].lifts
    assert report.playbooks[0].holdout.users == 0
    assert {lift.verdict for lift in lifts} == {"no data"}


def test_users_who_never_invite_give_rates_of_zero_and_no_ratio(tmp_path: Path):
    events = [(SENT, n, f"u{n}", PB) for n in range(5)]
    events += [(HELD, n, f"h{n}", {**PB, "reason": "holdout"}) for n in range(5)]

    report = report_of(export(tmp_path / "e.jsonl", events))

    nudged = report.playbooks[0].nudged
    assert nudged.invite_rate == 0
    assert nudged.k_factor == 0
    assert math.isnan(nudged.acceptance)
    lifts = {lift.metric: lift for lift in report.playbooks[0].lifts}
    assert lifts["acceptance"].verdict == "no data"
    assert lifts["invite_rate"].difference.estimate == 0


def test_lines_that_are_not_events_are_skipped(tmp_path: Path):
    path = export(tmp_path / "e.jsonl", small_dataset())
    with path.open("a") as out:
        out.write("{not json\n")
        out.write('{"event": "invite_sent", "properties": {"distinct_id": "u9"}}\n')
        out.write(
            '{"event": "Page Viewed", "properties": {"time": 1, "distinct_id": "x"}}\n'
        )

    report = report_of(path)

    assert report.events == len(small_dataset())


def test_the_workspace_names_the_products_events(tmp_path: Path):
    renamed = {
        "invite_sent": "Invite Sent",
        "invite_accepted": "Invite Accepted",
        "invitee_activated": "Became Active",
    }
    events = [
        (
            renamed.get(name, name),
            hours,
            user,
            {("inviter" if k == "referrer_id" else k): v for k, v in props.items()},
        )
        for name, hours, user, props in small_dataset()
    ]
    settings = MetricsSettings(
        events=MetricsEvents(
            invite_sent="Invite Sent",
            invite_accepted="Invite Accepted",
            invitee_activated="Became Active",
        ),
        referrer_property="inviter",
    )

    report = report_of(export(tmp_path / "e.jsonl", events), settings)

    assert report.playbooks[0].nudged.k_factor == pytest.approx(1 / 4)


def test_trigger_to_send_is_timed_per_kind_of_trigger(tmp_path: Path):
    """Nudges say what fired them and when: a product event minutes before, a
    cohort sync an hour before; held-back ones and reinforcements have no say."""

    def fired(hours_before: float, trigger: str) -> dict[str, Any]:
        at = T0 + timedelta(hours=10 - hours_before)
        return {**PB, "trigger": trigger, "trigger_time": int(at.timestamp())}

    events = [
        (SENT, 10, "u1", fired(1 / 60, "event")),
        (SENT, 10, "u2", fired(3 / 60, "event")),
        (SENT, 10, "u3", fired(5 / 60, "event")),
        (SENT, 10, "u4", fired(1, "cohort")),
        (HELD, 10, "h1", {**fired(2, "event"), "reason": "holdout"}),
        (SENT, 10, "u5", {**PB, "trigger": "event"}),
    ]

    paths = report_of(export(tmp_path / "e.jsonl", events)).trigger_paths

    by_key = {(p.playbook, p.trigger): p for p in paths}
    event = by_key[("pack-reviewers", "event")]
    assert (event.nudges, event.median_s) == (3, 180)
    assert event.p90_s == pytest.approx(276)
    assert by_key[("pack-reviewers", "cohort")].median_s == 3600
    assert by_key[("", "event")].nudges == 3
    assert [p.playbook for p in paths][-1] == ""


def test_accounts_are_sliced_by_their_segment(tmp_path: Path):
    """The segment comes from referloop's own events or from the product's, under
    the property the workspace names; a user with none is `unknown`."""
    events = [
        ("Signed Up", -100, "u1", {"plan": "enterprise"}),
        ("Signed Up", -100, "u2", {"plan": "team"}),
        (SENT, 0, "u1", PB),
        (SENT, 0, "u2", PB),
        (SENT, 0, "u3", {**PB, "account_segment": "team"}),
        (SENT, 0, "u4", PB),
        ("invite_sent", 5, "u1", {}),
    ]
    settings = MetricsSettings(segment_property="plan")

    report = report_of(export(tmp_path / "e.jsonl", events), settings)

    segments = {s.value: s for s in report.slices if s.dimension == "segment"}
    assert set(segments) == {"enterprise", "team", "unknown"}
    assert segments["enterprise"].nudged.inviters == 1
    assert segments["team"].nudged.users == 2
    assert segments["unknown"].nudged.users == 1


def test_an_amplitude_export_gives_the_same_report_as_mixpanels(tmp_path: Path):
    """One population, exported in each vendor's shape (Amplitude's as the zip
    of gzipped files its Export API answers): the same report, to the digit."""
    planted = Planted(users=4_000)
    mixpanel_export = tmp_path / "mixpanel.jsonl"
    write(planted, 21, mixpanel_export)
    amplitude_export = tmp_path / "amplitude.json"
    write_amplitude(planted, 21, amplitude_export)
    archive = tmp_path / "amplitude.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            "314/314_2026-09-07_9#0.json.gz",
            gzip.compress(amplitude_export.read_bytes()),
        )

    def report_dict(path: Path) -> dict[str, Any]:
        funnel = Funnel()
        try:
            funnel.read_export(path, SETTINGS)
            return as_dict(compute(funnel, SETTINGS))
        finally:
            funnel.close()

    expected = report_dict(mixpanel_export)
    assert expected["playbooks"][0]["nudged"]["users"] > 3_000
    assert report_dict(amplitude_export) == expected
    assert report_dict(archive) == expected
    assert export_form(archive) == "amplitude"
    assert export_form(mixpanel_export) == "mixpanel"


# --- the statistics ---------------------------------------------------------------


def test_wilson_and_newcombe_give_the_published_values():
    # Newcombe (1998), "Interval estimation for the difference between
    # independent proportions", example (a): 56/70 - 48/80, method 10.
    interval = stats.newcombe(56, 70, 48, 80)
    assert interval.estimate == pytest.approx(0.2)
    assert (interval.low, interval.high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # Wilson's interval for 0 of 10 and 10 of 10 stays inside [0, 1].
    assert stats.wilson(0, 10).low == 0
    assert stats.wilson(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    assert stats.wilson(10, 10).high == 1


def test_the_sample_size_needed_matches_the_usual_formula():
    # 10% against 12%, two-sided 5%, 80% power: 3,841 per arm.
    assert stats.users_needed(0.12, 0.10) == 3841
    assert stats.users_needed(0.1, 0.1) is None


def test_the_sample_size_for_a_ratio_reduces_to_the_rates_one():
    """When every user is one trial, a ratio of sums is a rate: the delta method
    gives the unpooled form of the usual formula, within a user or two per cent."""
    nudged = {(1, 1): 1_200, (0, 1): 8_800}
    holdout = {(1, 1): 1_000, (0, 1): 9_000}

    needed = stats.users_needed_ratio(nudged, holdout)

    assert needed == pytest.approx(3841, rel=0.01)
    assert stats.users_needed_ratio(nudged, nudged) is None
    assert stats.users_needed_ratio({(1, 1): 1}, holdout) is None
    assert stats.users_needed_ratio({(0, 0): 50}, holdout) is None


def test_a_ratio_that_is_not_told_apart_yet_says_how_many_users_would(
    tmp_path: Path,
):
    path = tmp_path / "e.jsonl"
    write(Planted(users=3_000, holdout=0.3), 5, path)

    report = report_of(path)

    k = next(lift for lift in report.playbooks[0].lifts if lift.metric == "k_factor")
    assert k.verdict in ("not distinguishable yet", "lift")
    assert k.users_needed is not None
    assert k.users_needed > 1_000


# --- planted populations -------------------------------------------------------------


def test_the_metrics_recover_a_planted_population(tmp_path: Path):
    planted = Planted(users=40_000, holdout=0.5)
    write(planted, seed=7, path=tmp_path / "pop.jsonl")

    report = report_of(tmp_path / "pop.jsonl")

    segment = report.playbooks[0]
    lifts = {lift.metric: lift for lift in segment.lifts}
    assert segment.nudged.k_factor == pytest.approx(planted.k_nudged, rel=0.15)
    assert segment.holdout.k_factor == pytest.approx(planted.k_holdout, rel=0.15)
    invite = lifts["invite_rate"].difference
    k = lifts["k_factor"].difference
    assert invite.low <= planted.invite_nudged - planted.invite_holdout <= invite.high
    assert k.low <= planted.k_nudged - planted.k_holdout <= k.high
    assert lifts["invite_rate"].verdict == "lift"
    assert lifts["k_factor"].verdict == "lift"


def test_a_nudge_without_effect_is_rarely_called_a_lift(tmp_path: Path):
    """No planted effect: over 20 seeds a 95% interval calls about one a lift or
    a harm by chance; four or more would happen less than 2% of the time."""
    planted = Planted(users=8_000, holdout=0.5, invite_nudged=0.1, invite_holdout=0.1)
    called = 0
    for seed in range(20):
        path = tmp_path / f"pop-{seed}.jsonl"
        write(planted, seed=seed, path=path)
        lifts = {lift.metric: lift for lift in report_of(path).playbooks[0].lifts}
        called += lifts["invite_rate"].verdict != "not distinguishable yet"

    assert called <= 3


def test_the_intervals_cover_the_truth_at_close_to_their_nominal_rate(tmp_path: Path):
    """Over 120 seeds, the 95% intervals of the invite-rate lift and the K-factor
    lift should contain the planted difference about 95% of the time; with 120
    trials, anything from 88% up is within sampling noise of that."""
    planted = Planted(users=3_000, holdout=0.5, weeks=1)
    truth_rate = planted.invite_nudged - planted.invite_holdout
    truth_k = planted.k_nudged - planted.k_holdout
    covered_rate = covered_k = 0
    seeds = range(1000, 1120)
    for seed in seeds:
        path = tmp_path / f"pop-{seed}.jsonl"
        write(planted, seed=seed, path=path)
        lifts = {
            lift.metric: lift.difference for lift in report_of(path).playbooks[0].lifts
        }
        path.unlink()
        covered_rate += (
            lifts["invite_rate"].low <= truth_rate <= lifts["invite_rate"].high
        )
        covered_k += lifts["k_factor"].low <= truth_k <= lifts["k_factor"].high

    assert 0.88 <= covered_rate / len(seeds) <= 1.0
    assert 0.88 <= covered_k / len(seeds) <= 1.0

"""Rewards: the hold, revocation, caps, approval, the fraud policy, grants given
once, and the reinforcement nudges that follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.base import GrantRequest
from orchestrator.errors import AmbiguousError, PermanentError, TransientError
from orchestrator.ledger import Outcome
from orchestrator.rewards import GrantRetry, grant_id
from orchestrator.state import Store
from tests.orchestrator.loop_rig import PLAYBOOK_ID, Rig, make_rig


@pytest.fixture
def rig(store: Store, tmp_path: Path) -> Rig:
    return make_rig(store, tmp_path)


def referrer_grant(invitee: str) -> str:
    return grant_id(PLAYBOOK_ID, "referrer", invitee)


def invitee_grant(invitee: str) -> str:
    return grant_id(PLAYBOOK_ID, "invitee", invitee)


def invite(rig: Rig, referrer: str, invitee: str, *, activate: bool = True) -> None:
    """A nudge to `referrer`, accepted by `invitee`, who then activates."""
    key = rig.nudge(referrer)
    rig.event("invite_accepted", invitee, props={"token": rig.token(referrer, key)})
    if activate:
        rig.event("invitee_activated", invitee)


def test_a_reward_is_held_then_granted_once_to_each_party(rig: Rig):
    invite(rig, "u-ref", "u-new")

    assert rig.grant_of(referrer_grant("u-new")).reason == "on_hold"
    rig.later(days=6, hours=23)
    assert rig.settle() == []
    assert rig.target.grants == []

    rig.later(hours=2)
    given = rig.settle()
    rig.settle()

    assert sorted(given) == sorted([referrer_grant("u-new"), invitee_grant("u-new")])
    by_user = {g.user_id: g for g in rig.target.grants}
    assert len(rig.target.grants) == 2
    assert (by_user["u-ref"].grant, by_user["u-ref"].amount) == ("guest_seats", 2)
    assert by_user["u-ref"].note == "Two seats for a reviewer."
    assert by_user["u-ref"].expires_s == 180 * 86_400
    assert by_user["u-new"].grant == "onboarding_session"
    assert by_user["u-ref"].idempotency_key == referrer_grant("u-new")
    assert rig.grant_of(referrer_grant("u-new")).outcome == Outcome.SENT


def test_a_reward_is_earned_on_the_event_the_playbook_names_only(rig: Rig):
    invite(rig, "u-ref", "u-new", activate=False)
    rig.later(days=8)

    rig.settle()

    assert rig.grants.get(referrer_grant("u-new")) is None
    assert rig.target.grants == []


def test_replayed_events_and_due_runs_give_no_duplicate_grant(rig: Rig):
    key = rig.nudge("u-ref")
    token = rig.token("u-ref", key)
    for _ in range(3):
        rig.event("invite_accepted", "u-new", props={"token": token}, event_id="a-1")
        rig.event("invitee_activated", "u-new", event_id="a-2")
    rig.later(days=8)

    for _ in range(3):
        rig.settle()
        for gid in (referrer_grant("u-new"), invitee_grant("u-new")):
            rig.engine.give(gid)

    assert len(rig.target.grants) == 2


@pytest.mark.parametrize("event", ["invitee_removed", "invite_reversed"])
def test_a_credit_revoked_during_the_hold_is_not_paid(rig: Rig, event: str):
    invite(rig, "u-ref", "u-new")
    rig.later(days=2)
    rig.event(event, "u-new")
    rig.later(days=6)

    rig.settle()

    assert rig.target.grants == []
    entry = rig.grant_of(referrer_grant("u-new"))
    assert (entry.outcome, entry.reason) == (Outcome.HELD, f"revoked:{event}")


def test_a_reversed_invite_named_by_its_id_revokes_its_invitees_credit(rig: Rig):
    key = rig.nudge("u-ref")
    rig.event(
        "invite_sent",
        "u-ref",
        props={"invite_id": "inv-1", "token": rig.token("u-ref", key)},
    )
    rig.event("invite_accepted", "u-new", props={"invite_id": "inv-1"})
    rig.event("invitee_activated", "u-new")
    rig.event("invite_reversed", "u-ref", props={"invite_id": "inv-1"})
    rig.later(days=8)

    rig.settle()

    assert rig.target.grants == []
    assert rig.grant_of(referrer_grant("u-new")).reason == "revoked:invite_reversed"


def test_the_cap_per_referrer_refuses_grants_past_it(store: Store, tmp_path: Path):
    rig = make_rig(store, tmp_path, per_referrer="1 per 365d")
    invite(rig, "u-ref", "u-new-1")
    invite(rig, "u-ref", "u-new-2")
    rig.later(days=8)

    rig.settle()

    referrer_grants = [g for g in rig.target.grants if g.user_id == "u-ref"]
    assert len(referrer_grants) == 1
    refused = [
        rig.grant_of(referrer_grant(invitee)).reason
        for invitee in ("u-new-1", "u-new-2")
    ]
    assert sorted(refused)[0] == "cap:per_referrer:1 per 365d"
    # The invitees' own grants are not capped by their referrer's.
    assert {g.user_id for g in rig.target.grants} >= {"u-new-1", "u-new-2"}


def test_the_cap_per_account_counts_every_referrer_in_it(store: Store, tmp_path: Path):
    rig = make_rig(store, tmp_path, per_account="2 per 30d")
    for n in range(3):
        invite(rig, f"u-ref-{n}", f"u-new-{n}")
    rig.later(days=8)

    rig.settle()

    reasons = sorted(
        rig.grant_of(referrer_grant(f"u-new-{n}")).reason for n in range(3)
    )
    assert reasons.count("cap:per_account:2 per 30d") == 1
    assert len([g for g in rig.target.grants if g.user_id.startswith("u-ref")]) == 2


def test_manual_approval_holds_a_grant_until_approved(store: Store, tmp_path: Path):
    rig = make_rig(store, tmp_path, approval="manual")
    invite(rig, "u-ref", "u-new")
    rig.later(days=8)

    assert rig.settle() == []
    pending = [e.delivery_key for e in rig.engine.loop.rewards.pending()]
    assert sorted(pending) == sorted([referrer_grant("u-new"), invitee_grant("u-new")])

    rewards = rig.engine.loop.rewards
    playbook_of = lambda pid: rig.engine.catalog.get(pid).playbook  # noqa: E731
    now_ms = int(rig.now[0].timestamp() * 1000)
    assert rewards.approve(referrer_grant("u-new"), "marta", now_ms, playbook_of) == (
        "give"
    )
    assert rewards.reject(invitee_grant("u-new"), "marta", "a test account") == (
        "rejected"
    )
    rig.engine.give(referrer_grant("u-new"))
    rig.engine.give(invitee_grant("u-new"))

    assert [g.user_id for g in rig.target.grants] == ["u-ref"]
    assert rig.grant_of(referrer_grant("u-new")).fields["approved_by"] == "marta"
    rejected = rig.grant_of(invitee_grant("u-new"))
    assert (rejected.outcome, rejected.reason) == (Outcome.HELD, "rejected")
    assert rewards.pending() == []
    assert rewards.approve(invitee_grant("u-new"), "marta", now_ms, playbook_of) == (
        "it is rejected already"
    )


def test_approval_during_the_hold_lets_the_grant_go_when_due(
    store: Store, tmp_path: Path
):
    rig = make_rig(store, tmp_path, approval="manual")
    invite(rig, "u-ref", "u-new")
    rewards = rig.engine.loop.rewards
    playbook_of = lambda pid: rig.engine.catalog.get(pid).playbook  # noqa: E731

    verdict = rewards.approve(referrer_grant("u-new"), "marta", 0, playbook_of)
    rig.later(days=8)
    rig.settle()

    assert verdict == "on_hold"
    assert [g.user_id for g in rig.target.grants] == ["u-ref"]


def test_a_referrer_whose_invitees_never_activate_is_farming(rig: Rig):
    for n in range(3):
        invite(rig, "u-farmer", f"u-idle-{n}", activate=False)
    rig.later(days=15)
    invite(rig, "u-farmer", "u-real")
    rig.later(days=8)

    rig.settle()

    assert [g.user_id for g in rig.target.grants] == []
    entry = rig.grant_of(referrer_grant("u-real"))
    assert (entry.outcome, entry.reason) == (Outcome.HELD, "fraud:farming")


def test_a_referrer_with_active_invitees_is_not_farming(rig: Rig):
    for n in range(3):
        invite(rig, "u-good", f"u-active-{n}")
    rig.later(days=15)
    invite(rig, "u-good", "u-next")
    rig.later(days=8)

    rig.settle()

    users = [g.user_id for g in rig.target.grants]
    assert users.count("u-good") == 4


def test_invitees_still_in_their_grace_period_do_not_count_as_farming(rig: Rig):
    for n in range(3):
        invite(rig, "u-new-ref", f"u-fresh-{n}", activate=False)
    invite(rig, "u-new-ref", "u-real")
    rig.later(days=8)

    rig.settle()

    assert "u-new-ref" in [g.user_id for g in rig.target.grants]


def test_a_self_invite_records_its_refused_grant_with_the_reason(rig: Rig):
    key = rig.nudge("u-ref")
    rig.event("invite_accepted", "u-ref", props={"token": rig.token("u-ref", key)})
    rig.event("invitee_activated", "u-ref")
    rig.later(days=8)
    rig.settle()

    entry = rig.grant_of(referrer_grant("u-ref"))
    assert (entry.outcome, entry.reason) == (Outcome.HELD, "fraud:self_invite")
    assert rig.target.grants == []


def test_a_grant_the_target_cannot_take_now_is_retried_and_kept(rig: Rig):
    invite(rig, "u-ref", "u-new")
    rig.later(days=8)
    answers = iter(
        [
            TransientError("product", "down"),
            AmbiguousError("product", "no answer"),
            TransientError("product", "slow down", retry_after_s=30),
        ]
    )

    def answer(request: GrantRequest) -> None:
        error = next(answers, None)
        if error is not None:
            raise error

    rig.target.answer = answer
    gid = referrer_grant("u-new")
    ready = rig.engine.grants_due()
    assert gid in ready

    retries = []
    for _ in range(3):
        with pytest.raises(GrantRetry) as caught:
            rig.engine.give(gid)
        retries.append((caught.value.delay_ms, caught.value.counts))
    rig.engine.give(gid)

    assert retries == [(0, True), (0, True), (30_000, False)]
    assert [g.idempotency_key for g in rig.target.grants] == [gid]
    assert rig.grant_of(gid).outcome == Outcome.SENT


def test_a_grant_the_target_refuses_for_good_is_dead_with_its_reason(rig: Rig):
    invite(rig, "u-ref", "u-new")
    rig.later(days=8)

    def refuse(request: GrantRequest) -> None:
        raise PermanentError("product", "no such plan", status=422)

    rig.target.answer = refuse
    gid = referrer_grant("u-new")
    rig.engine.grants_due()

    rig.engine.give(gid)

    entry = rig.grant_of(gid)
    assert entry.outcome == Outcome.DEAD
    assert "422" in entry.reason
    assert gid in rig.grants.dead_letters()


def test_no_reward_target_keeps_grants_waiting(rig: Rig):
    rig.engine.loop.rewards.target = None
    invite(rig, "u-ref", "u-new")
    rig.later(days=8)
    gid = referrer_grant("u-new")
    rig.engine.grants_due()

    with pytest.raises(GrantRetry) as caught:
        rig.engine.give(gid)

    assert caught.value.counts is False
    assert rig.grant_of(gid).outcome == Outcome.RETRYING


# --- reinforcement --------------------------------------------------------------


def test_an_activated_invitee_brings_the_referrer_a_reinforcement_once(rig: Rig):
    key = rig.nudge("u-ref")
    token = rig.token("u-ref", key)
    for _ in range(2):
        rig.event("invite_accepted", "u-new", props={"token": token}, event_id="x-1")
        rig.event("invitee_activated", "u-new", event_id="x-2")
    rig.deliver()

    sent = [(n.recipient.user_id, n.step) for n in rig.channel.sent]
    assert sent == [
        ("u-ref", "nudge"),
        ("u-ref", "reinforcement:invitee_activated"),
    ]


def test_a_granted_reward_brings_its_referrer_a_reinforcement(rig: Rig):
    invite(rig, "u-ref", "u-new")
    rig.deliver()
    rig.later(days=8)

    rig.settle()
    rig.settle()

    steps = [(n.recipient.user_id, n.step) for n in rig.channel.sent]
    assert steps.count(("u-ref", "reinforcement:reward_granted")) == 1
    assert ("u-new", "reinforcement:reward_granted") not in steps


def test_a_collaboration_reinforces_users_the_playbook_nudged_only(rig: Rig):
    rig.nudge("u-ref")
    rig.event("collaboration_completed", "u-ref", project_name="Falcon")
    rig.event("collaboration_completed", "u-stranger")
    rig.deliver()

    steps = [(n.recipient.user_id, n.step) for n in rig.channel.sent]
    assert ("u-ref", "reinforcement:collaboration_completed") in steps
    assert all(user != "u-stranger" for user, _ in steps)


def test_reinforcements_count_against_the_same_caps(store: Store, tmp_path: Path):
    rig = make_rig(store, tmp_path)
    folder = tmp_path / "playbooks"
    workspace = (folder / "referloop.yaml").read_text()
    (folder / "referloop.yaml").write_text(workspace + "caps:\n  per_user: 1 per 7d\n")
    from orchestrator.loader import load

    rig.engine.catalog = load([folder])
    rig.nudge("u-ref")
    rig.event("collaboration_completed", "u-ref")
    rig.deliver()

    steps = [n.step for n in rig.channel.sent]
    assert steps == ["nudge"]
    held = [
        entry.reason
        for entry in rig.engine.ledger.entries(rig.engine.ledger.keys_for_user("u-ref"))
        if entry.fields.get("step") == "reinforcement:collaboration_completed"
    ]
    assert held == ["cap:workspace_per_user:1 per 7d"]


def test_a_grant_given_is_exported_to_the_analytics_sink_once(store: Store, rig: Rig):
    from integrations.base import LoopEvent
    from orchestrator.journal import Journal

    class Sink:
        name = "sink"

        def __init__(self) -> None:
            self.events: list[LoopEvent] = []

        def record(self, events: list[LoopEvent]) -> None:
            self.events += events

    sink = Sink()
    journal = Journal(store)
    rig.engine.journal = rig.engine.loop.journal = journal
    rig.engine.sink = sink
    invite(rig, "u-ref", "u-new")
    rig.later(days=8)
    rig.settle()
    rig.engine.give(referrer_grant("u-new"))

    rig.engine.export_journal()

    granted = [e for e in sink.events if e.name == "referloop reward granted"]
    assert sorted(e.user_id for e in granted) == ["u-new", "u-ref"]
    seats = next(e for e in granted if e.user_id == "u-ref")
    assert seats.properties["playbook"] == PLAYBOOK_ID
    assert seats.properties["step"] == "reward:referrer"
    assert seats.insert_id == f"{referrer_grant('u-new')}:granted"

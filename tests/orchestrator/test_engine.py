"""The engine on a real Redis: decisions, guardrails, and deliveries sent once."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from engine_rig import NOW, PLAYBOOK, WORKSPACE, make_rig

from integrations.base import Member, RenderedNudge
from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.engine import Retry
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
)
from orchestrator.ledger import Outcome
from orchestrator.loader import load
from orchestrator.settings import Settings


def test_a_trigger_becomes_one_delivery_sent_through_the_channel(store, tmp_path):
    """Given an activated user and a product event, the playbook schedules one
    delivery and the deliver step sends it once and commits it."""
    rig = make_rig(store, tmp_path)

    keys = rig.engine.decide(rig.event("u-1"))
    outcome = rig.engine.deliver(keys[0])

    assert outcome == Outcome.SENT
    assert rig.intercom.sent == keys
    assert rig.scheduled == [(keys[0], 0)]
    entry = rig.engine.ledger.get(keys[0])
    assert entry is not None
    assert (entry.outcome, entry.fields["channel"]) == ("sent", "intercom")


def test_deciding_the_same_occurrence_twice_sends_once(store, tmp_path):
    """A redelivered decide message (its worker died before acknowledging it)
    judges again, since the first run may have been cut off before scheduling;
    the delivery it schedules twice is still sent once."""
    rig = make_rig(store, tmp_path)
    occurrence_id = rig.event("u-1")

    first = rig.engine.decide(occurrence_id)
    second = rig.engine.decide(occurrence_id)
    for key, _ in rig.scheduled:
        rig.engine.deliver(key)

    assert first == second
    assert rig.intercom.sent == first


def test_a_decision_already_carried_out_is_not_made_again(store, tmp_path):
    """Once the delivery was sent (or held), a redelivered decide does nothing."""
    rig = make_rig(store, tmp_path)
    occurrence_id = rig.event("u-1")
    key = rig.engine.decide(occurrence_id)[0]
    rig.engine.deliver(key)

    again = rig.engine.decide(occurrence_id)

    assert (again, len(rig.scheduled)) == ([], 1)


def test_sixteen_threads_racing_one_delivery_key_send_it_once(store, tmp_path):
    """Sixteen workers holding the same message: one sends, the others find the
    key busy (and would retry) or done."""
    rig = make_rig(store, tmp_path)
    rig.intercom.delay_s = 0.2
    key = rig.engine.decide(rig.event("u-1"))[0]
    answers: list[str] = []
    start = threading.Barrier(16)

    def race() -> None:
        start.wait()
        try:
            answers.append(str(rig.engine.deliver(key)))
        except Retry:
            answers.append("busy")

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert rig.intercom.sent == [key]
    assert answers.count("sent") >= 1
    assert len(answers) == 16


def test_a_delivery_sent_and_redelivered_is_not_sent_again(store, tmp_path):
    """A message redelivered after its send was committed (say its worker died
    before the broker heard of it) finds the ledger final."""
    rig = make_rig(store, tmp_path)
    key = rig.engine.decide(rig.event("u-1"))[0]

    rig.engine.deliver(key)
    again = rig.engine.deliver(key)

    assert (again, rig.intercom.sent) == (Outcome.SENT, [key])


def test_a_send_cut_off_before_its_commit_is_counted_as_ambiguous(store, tmp_path):
    """A worker killed between send and commit leaves a reserved record; the next
    attempt, once the lease is gone, does not resend blindly: it is ambiguous."""
    rig = make_rig(store, tmp_path)
    key = rig.engine.decide(rig.event("u-1"))[0]
    rig.engine.ledger.reserve(key, "dead-worker", lease_ms=1)
    time.sleep(0.01)

    outcome = rig.engine.deliver(key)

    assert outcome == Outcome.AMBIGUOUS
    assert rig.intercom.sent == []
    assert rig.engine.ledger.counts().get("ambiguous") == 1


def test_a_vendor_that_says_later_releases_the_key_and_asks_for_a_retry(
    store, tmp_path
):
    """429 with Retry-After: the key is released and the retry waits as asked."""
    rig = make_rig(store, tmp_path)

    def throttled(nudge: RenderedNudge) -> None:
        raise TransientError("intercom", "429", retry_after_s=30)

    rig.intercom.answer = throttled
    key = rig.engine.decide(rig.event("u-1"))[0]

    with pytest.raises(Retry) as retry:
        rig.engine.deliver(key)
    rig.intercom.answer = lambda nudge: None
    outcome = rig.engine.deliver(key)

    assert retry.value.delay_ms == 30_000
    assert outcome == Outcome.SENT


def test_a_channel_down_for_good_hands_over_to_the_fallback(store, tmp_path):
    """A permanent refusal from the first channel sends through the next one."""
    rig = make_rig(store, tmp_path)

    def refused(nudge: RenderedNudge) -> None:
        raise PermanentError("intercom", "no such admin", status=404)

    rig.intercom.answer = refused
    key = rig.engine.decide(rig.event("u-1"))[0]

    outcome = rig.engine.deliver(key)

    entry = rig.engine.ledger.get(key)
    assert entry is not None
    assert (outcome, entry.fields["channel"]) == (Outcome.SENT, "braze")


def test_every_channel_refusing_dead_letters_the_delivery_with_reasons(store, tmp_path):
    """No channel left: dead letter, with each channel's reason, and the cap
    it had taken is given back."""
    rig = make_rig(store, tmp_path)

    def refused(nudge: RenderedNudge) -> None:
        raise PermanentError("vendor", "bad request", status=400)

    rig.intercom.answer = rig.braze.answer = refused
    key = rig.engine.decide(rig.event("u-1"))[0]

    outcome = rig.engine.deliver(key)

    entry = rig.engine.ledger.get(key)
    assert entry is not None
    assert outcome == Outcome.DEAD
    assert "intercom: refused (400)" in entry.reason
    assert "braze: refused (400)" in entry.reason
    assert rig.engine.ledger.dead_letters() == [key]
    cap = rig.engine.workspace.caps.per_user[0]
    now_ms = int(NOW.timestamp() * 1000)
    assert rig.engine.caps.used("user:u-1", cap, now_ms) == 0


def test_an_ambiguous_send_is_held_when_the_playbook_says_hold(store, tmp_path):
    """A timeout after the request went out is recorded, not resent."""
    rig = make_rig(store, tmp_path)

    def timed_out(nudge: RenderedNudge) -> None:
        raise AmbiguousError("intercom", "read timeout")

    rig.intercom.answer = timed_out
    key = rig.engine.decide(rig.event("u-1"))[0]

    outcome = rig.engine.deliver(key)

    assert outcome == Outcome.AMBIGUOUS
    assert rig.braze.sent == []


def test_an_ambiguous_send_is_retried_when_the_playbook_says_resend(store, tmp_path):
    """`on_ambiguous: resend` takes the risk of a duplicate and retries."""
    rig = make_rig(
        store, tmp_path, [{"id": "pack-reviewers", "on_ambiguous": "resend"}]
    )

    def timed_out(nudge: RenderedNudge) -> None:
        raise AmbiguousError("intercom", "read timeout")

    rig.intercom.answer = timed_out
    key = rig.engine.decide(rig.event("u-1"))[0]

    with pytest.raises(Retry):
        rig.engine.deliver(key)


def test_caps_hold_across_two_playbooks_and_two_channels(store, tmp_path):
    """The workspace cap (1 per 7d per user) counts the send of one playbook
    through Intercom against another playbook that would use Braze."""
    rig = make_rig(
        store,
        tmp_path,
        [
            {"id": "pack-reviewers", "event": "pack_uploaded"},
            {"id": "deadline-owners", "event": "deadline_set"},
        ],
    )
    rig.intercom.answer = lambda nudge: None
    first = rig.engine.decide(rig.event("u-1", "pack_uploaded"))[0]
    second = rig.engine.decide(rig.event("u-1", "deadline_set"))[0]

    rig.engine.deliver(first)
    outcome = rig.engine.deliver(second)

    entry = rig.engine.ledger.get(second)
    assert entry is not None
    assert outcome == Outcome.HELD
    assert entry.reason == "cap:workspace_per_user:1 per 7d"


def test_a_user_who_has_not_reached_value_is_held_back_with_a_reason(store, tmp_path):
    """No `activated_at`: held, reason `not_activated`, nothing scheduled."""
    rig = make_rig(store, tmp_path)

    key = rig.engine.decide(rig.event("u-1", activated_at=None))[0]

    entry = rig.engine.ledger.get(key)
    assert entry is not None
    assert (entry.outcome, entry.reason, rig.scheduled) == ("held", "not_activated", [])


def test_quiet_hours_defer_the_delivery_to_the_recipients_morning(store, tmp_path):
    """At 23:00 in Tokyo with quiet hours 20:00-08:00, the delivery waits until
    08:00 Tokyo time: deferred, not dropped."""
    workspace = WORKSPACE + "quiet_hours: 20:00-08:00\n"
    rig = make_rig(store, tmp_path, workspace=workspace)

    key = rig.engine.decide(rig.event("u-1", time_zone="Asia/Tokyo"))[0]

    morning = datetime(2026, 12, 2, 23, 0, tzinfo=UTC)  # 08:00 on the 3rd in Tokyo
    entry = rig.engine.ledger.get(key)
    assert entry is not None
    assert (entry.outcome, entry.reason) == ("deferred", "quiet_hours")
    assert int(entry.fields["until_ms"]) == int(morning.timestamp() * 1000)
    assert rig.scheduled == [(key, int((morning - NOW).total_seconds() * 1000))]


def test_a_repeated_cohort_ingestion_decides_for_nobody_new(store, tmp_path):
    """A cohort page ingested again, and the snapshot completed again, enter no
    one twice."""
    rig = make_rig(store, tmp_path)
    decided: list[str] = []
    members = [Member(f"u-{n}", "acct-1", {"activated_at": "x"}) for n in range(5)]

    for _ in range(2):
        rig.engine.ingest_page("mixpanel:1", "s1", 0, members)
        rig.engine.finish_snapshot("mixpanel:1", "s1", decided.extend)

    assert len(decided) == 5


def test_the_real_worker_sends_every_delivery_once_through_redis(
    store, tmp_path, redis_url
):
    """End to end on the Redis broker with a real Dramatiq worker: forty users,
    forty deliveries, each sent once."""
    rig = make_rig(store, tmp_path, workspace=WORKSPACE.replace("1 per 7d", "5 per 7d"))
    broker = build_broker(Settings(redis_url=redis_url, namespace=store.namespace))
    declared = actors.declare(broker)
    rig.engine.schedule = declared.schedule
    actors.install(rig.engine)
    worker = dramatiq.Worker(broker, worker_threads=4)
    worker.start()
    try:
        for n in range(40):
            declared.decide.send(rig.event(f"u-{n}"))
        deadline = time.monotonic() + 60
        while len(rig.intercom.sent) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
        broker.close()
        actors.install(None)

    assert sorted(rig.intercom.sent) == sorted(set(rig.intercom.sent))
    assert len(rig.intercom.sent) == 40
    assert rig.engine.ledger.counts().get("sent") == 40


def test_deferral_keeps_the_delivery_for_later(store, tmp_path):
    """A trigger delay schedules the delivery after the delay."""
    text = PLAYBOOK.replace("  event: {event}\n", "  event: {event}\n  delay: 2h\n")
    folder = tmp_path / "delayed"
    folder.mkdir()
    (folder / "referloop.yaml").write_text(WORKSPACE)
    spec = {"id": "delayed", "priority": 0, "event": "pack_uploaded"}
    (folder / "delayed.yaml").write_text(text.format(**spec, on_ambiguous="hold"))
    rig = make_rig(store, tmp_path)
    rig.engine.catalog = load([folder])

    key = rig.engine.decide(rig.event("u-1"))[0]

    assert rig.scheduled == [(key, int(timedelta(hours=2).total_seconds() * 1000))]


def test_a_batch_of_occurrences_hands_the_due_deliveries_on_together(store, tmp_path):
    """Three occurrences decided as one batch: the two due now go to the deliver
    step in one hand-over, the one held back is recorded and not handed on."""
    rig = make_rig(store, tmp_path)
    handed: list[tuple[list[str], int]] = []
    rig.engine.schedule = lambda keys, delay: handed.append((list(keys), delay))
    ids = [rig.event("u-1"), rig.event("u-2", activated_at=None), rig.event("u-3")]

    keys = rig.engine.decide_many(ids)

    held = rig.engine.ledger.get(keys[1])
    assert held is not None
    assert held.reason == "not_activated"
    assert handed == [([keys[0], keys[2]], 0)]


def test_a_throttled_key_in_a_batch_waits_alone_while_the_others_are_sent(
    store, tmp_path
):
    """One vendor 429 in a batch of three: that key is released with its own
    Retry, the other two are sent and committed."""
    rig = make_rig(store, tmp_path)
    keys = rig.engine.decide_many([rig.event(f"u-{n}") for n in range(3)])

    def throttled(nudge: RenderedNudge) -> None:
        if nudge.recipient.user_id == "u-1":
            raise TransientError("intercom", "429", retry_after_s=30)

    rig.intercom.answer = throttled

    results = rig.engine.deliver_many(keys)

    retry = results[keys[1]]
    entry = rig.engine.ledger.get(keys[1])
    assert entry is not None
    assert isinstance(retry, Retry)
    assert retry.delay_ms == 30_000
    assert entry.outcome == "retrying"
    assert (results[keys[0]], results[keys[2]]) == (Outcome.SENT, Outcome.SENT)
    assert sorted(rig.intercom.sent) == sorted([keys[0], keys[2]])


def test_a_batch_keeps_caps_atomic_per_delivery(store, tmp_path):
    """Two playbooks' deliveries to one user in one batch, under a workspace cap
    of one: the first is sent, the second held by the cap."""
    rig = make_rig(
        store,
        tmp_path,
        [
            {"id": "pack-reviewers", "event": "pack_uploaded"},
            {"id": "deadline-owners", "event": "deadline_set"},
        ],
    )
    first = rig.engine.decide(rig.event("u-1", "pack_uploaded"))[0]
    second = rig.engine.decide(rig.event("u-1", "deadline_set"))[0]

    results = rig.engine.deliver_many([first, second])

    entry = rig.engine.ledger.get(second)
    assert entry is not None
    assert results == {first: Outcome.SENT, second: Outcome.HELD}
    assert entry.reason == "cap:workspace_per_user:1 per 7d"


def test_the_worker_retries_a_throttled_key_of_a_batch_on_its_own(
    store, tmp_path, redis_url
):
    """On the Redis broker: ten deliveries in one deliver message, one throttled
    once with Retry-After 0.2 s; it is sent on its own later, the rest at once,
    each once."""
    rig = make_rig(store, tmp_path, workspace=WORKSPACE.replace("1 per 7d", "5 per 7d"))
    broker = build_broker(Settings(redis_url=redis_url, namespace=store.namespace))
    declared = actors.declare(broker)
    rig.engine.schedule = declared.schedule
    actors.install(rig.engine)
    throttled: list[str] = []

    def once(nudge: RenderedNudge) -> None:
        if nudge.recipient.user_id == "u-3" and not throttled:
            throttled.append(nudge.delivery_key)
            raise TransientError("intercom", "429", retry_after_s=0.2)

    rig.intercom.answer = once
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        declared.decide_all([rig.event(f"u-{n}") for n in range(10)])
        deadline = time.monotonic() + 30
        while len(rig.intercom.sent) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        broker.close()
        actors.install(None)

    assert len(throttled) == 1
    assert sorted(rig.intercom.sent) == sorted(set(rig.intercom.sent))
    assert rig.intercom.sent[-1] == throttled[0]
    assert rig.engine.ledger.counts().get("sent") == 10


def test_waiting_on_a_vendor_uses_up_no_retries(store, tmp_path, redis_url):
    """A delivery told to wait by its vendor more often than it may fail (a long
    429 storm) is still sent once the vendor takes it, with its retries untouched:
    a wait is not a failure, and only failures are bounded by the retries."""
    rig = make_rig(store, tmp_path)
    broker = build_broker(Settings(redis_url=redis_url, namespace=store.namespace))
    declared = actors.declare(broker)
    rig.engine.schedule = declared.schedule
    actors.install(rig.engine)
    storm = actors.DELIVER_MAX_RETRIES + 4
    asked: list[str] = []

    def throttled(nudge: RenderedNudge) -> None:
        if len(asked) < storm:
            asked.append(nudge.delivery_key)
            raise TransientError("intercom", "429", retry_after_s=0.05)

    rig.intercom.answer = throttled
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        declared.decide_all([rig.event("u-1")])
        deadline = time.monotonic() + 30
        while not rig.intercom.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        broker.close()
        actors.install(None)

    assert len(asked) == storm
    assert len(rig.intercom.sent) == 1
    assert rig.engine.ledger.counts().get("sent") == 1
    assert rig.engine.ledger.dead_letters() == []


def test_burying_a_batch_leaves_its_sent_deliveries_sent(store, tmp_path):
    """A deliver message whose retries ran out names every key of its batch;
    the ones an earlier attempt sent stay sent, with their caps."""
    rig = make_rig(store, tmp_path)
    sent, waiting = rig.engine.decide_many([rig.event("u-1"), rig.event("u-2")])
    rig.engine.deliver(sent)

    for key in (sent, waiting):
        rig.engine.bury(key, "retries exhausted after 8 attempts")

    entries = [rig.engine.ledger.get(key) for key in (sent, waiting)]
    assert [entry.outcome if entry else None for entry in entries] == ["sent", "dead"]
    assert rig.engine.ledger.dead_letters() == [waiting]


def test_a_template_that_fails_for_one_user_fails_only_that_delivery(store, tmp_path):
    """A body that loops over a user's own number breaks its loop limit for the
    user whose number is huge: that delivery is dead-lettered with the reason,
    and the other user's delivery is sent."""
    rig = make_rig(store, tmp_path)
    loaded = rig.engine.catalog.playbooks[0]
    body = "{% for i in (1..user.reviewers) %}.{% endfor %} {{ invite.link }}"
    message = loaded.playbook.nudge.message.model_copy(update={"body": body})
    nudge = loaded.playbook.nudge.model_copy(update={"message": message})
    playbook = loaded.playbook.model_copy(update={"nudge": nudge})
    rig.engine.catalog.playbooks[0] = dataclasses.replace(loaded, playbook=playbook)

    fine = rig.engine.decide(rig.event("u-1", reviewers=3))[0]
    broken = rig.engine.decide(rig.event("u-2", reviewers=100_000))[0]
    outcomes = rig.engine.deliver_many([fine, broken])

    entry = rig.engine.ledger.get(broken)
    assert entry is not None
    assert (outcomes[fine], outcomes[broken]) == (Outcome.SENT, Outcome.DEAD)
    assert "Liquid" in entry.reason
    assert "u-2" not in entry.reason


def test_a_channel_not_set_up_for_the_send_falls_back_to_the_next(store, tmp_path):
    """Intercom says it is not configured for this send (nothing went out): the
    delivery goes through Braze, the fallback, and is sent once."""
    rig = make_rig(store, tmp_path)

    def unconfigured(nudge: RenderedNudge) -> None:
        raise ConfigurationError("intercom needs INTERCOM_ACCESS_TOKEN")

    rig.intercom.answer = unconfigured
    key = rig.engine.decide(rig.event("u-1"))[0]
    outcome = rig.engine.deliver(key)
    entry = rig.engine.ledger.get(key)

    assert outcome == Outcome.SENT
    assert rig.braze.sent == [key]
    assert entry is not None
    assert entry.fields["channel"] == "braze"

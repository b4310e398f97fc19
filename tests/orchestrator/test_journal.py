"""The journal of loop events: noted with the ledger, drained to the analytics sink."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from engine_rig import NOW, make_rig

from integrations.base import LoopEvent
from orchestrator import journal as journals
from orchestrator.errors import PermanentError, TransientError
from orchestrator.journal import EVENT_NAMES, Journal


@dataclass
class Sink:
    """An analytics sink that keeps what it is given, or fails as told."""

    name: ClassVar[str] = "sink"
    events: list[LoopEvent] = field(default_factory=list)
    failure: Exception | None = None

    def record(self, events: Sequence[LoopEvent]) -> None:
        if self.failure is not None:
            raise self.failure
        self.events.extend(events)


def _rig(store, tmp_path):
    rig = make_rig(store, tmp_path)
    rig.engine.journal = Journal(store)
    rig.engine.sink = Sink()
    return rig


def test_a_sent_and_a_held_nudge_become_events_with_ids_only(store, tmp_path):
    """One user is sent a nudge, another is held back (not activated); the sink
    gets one event each, named, keyed by delivery and kind, with no profile data."""
    rig = _rig(store, tmp_path)
    sent = rig.engine.decide(rig.event("u-1", account={"segment": "enterprise"}))
    rig.engine.decide(rig.event("u-2", activated_at=None))
    rig.engine.deliver_many(sent)

    exported = rig.engine.export_journal()

    events = rig.engine.sink.events
    assert exported is not None
    assert (exported.taken, exported.refused, exported.left) == (2, 0, 0)
    by_user = {event.user_id: event for event in events}
    assert by_user["u-1"].name == EVENT_NAMES["sent"]
    assert by_user["u-1"].insert_id == f"{sent[0]}:sent"
    assert by_user["u-1"].properties["channel"] == "intercom"
    assert by_user["u-1"].properties["variant"] == "a"
    assert by_user["u-1"].properties["trigger"] == "event"
    assert by_user["u-1"].properties["trigger_time"] == int(NOW.timestamp())
    assert by_user["u-1"].properties["account_segment"] == "enterprise"
    assert "account_segment" not in by_user["u-2"].properties
    assert by_user["u-2"].name == EVENT_NAMES["held"]
    assert by_user["u-2"].properties["reason"] == "not_activated"
    for event in events:
        assert set(event.properties) <= {
            "delivery_key",
            "playbook",
            "step",
            "channel",
            "account_id",
            "variant",
            "reason",
            "trigger",
            "trigger_time",
            "account_segment",
        }
        assert "Ada" not in str(event.properties)


def test_a_sink_that_cannot_take_them_now_keeps_them_for_the_next_export(
    store, tmp_path
):
    rig = _rig(store, tmp_path)
    rig.engine.deliver_many(rig.engine.decide(rig.event("u-1")))
    rig.engine.sink.failure = TransientError("mixpanel", "answered 503")

    with pytest.raises(TransientError):
        rig.engine.export_journal()
    rig.engine.sink.failure = None
    exported = rig.engine.export_journal()

    assert exported is not None
    assert exported.taken == 1
    assert len(rig.engine.sink.events) == 1


def test_a_batch_refused_for_good_is_dropped_and_said(store, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    rig = _rig(store, tmp_path)
    rig.engine.deliver_many(rig.engine.decide(rig.event("u-1")))
    rig.engine.sink.failure = PermanentError("mixpanel", "refused (413)", 413)

    exported = rig.engine.export_journal()

    assert exported is not None
    assert (exported.taken, exported.refused, exported.left) == (0, 1, 0)
    assert "refused a batch" in caplog.text


def test_exports_go_in_batches_oldest_first(store, tmp_path):
    rig = _rig(store, tmp_path)
    for n in range(5):
        rig.engine.decide(rig.event(f"u-{n}", activated_at=None))

    first = rig.engine.journal.export(rig.engine.ledger, rig.engine.sink, batch=3)
    second = rig.engine.journal.export(rig.engine.ledger, rig.engine.sink, batch=3)

    assert (first.taken, first.left, second.taken, second.left) == (3, 2, 2, 0)
    assert [e.user_id for e in rig.engine.sink.events] == [f"u-{n}" for n in range(5)]


def test_one_exporter_at_a_time(store, tmp_path):
    rig = _rig(store, tmp_path)
    rig.engine.decide(rig.event("u-1", activated_at=None))
    store.redis.set(store.key("journal", "export-lock"), "someone-else")

    exported = rig.engine.export_journal()

    assert exported is not None
    assert (exported.taken, exported.left) == (0, 1)
    assert rig.engine.sink.events == []


def test_the_journal_keeps_only_the_newest_notes(store, tmp_path, monkeypatch):
    monkeypatch.setattr(journals, "MAX_NOTES", 3)
    rig = _rig(store, tmp_path)
    for n in range(5):
        rig.engine.decide(rig.event(f"u-{n}", activated_at=None))

    rig.engine.export_journal()

    assert [e.user_id for e in rig.engine.sink.events] == ["u-2", "u-3", "u-4"]


def test_without_a_sink_nothing_is_noted_or_exported(store, tmp_path):
    rig = make_rig(store, tmp_path)
    rig.engine.deliver_many(rig.engine.decide(rig.event("u-1")))

    assert rig.engine.export_journal() is None
    assert len(Journal(store)) == 0


def test_an_export_run_drains_batch_after_batch(store, tmp_path, monkeypatch):
    monkeypatch.setattr(journals, "EXPORT_BATCH", 2)
    rig = _rig(store, tmp_path)
    for n in range(5):
        rig.engine.decide(rig.event(f"u-{n}", activated_at=None))

    exported = rig.engine.export_journal(for_ms=10_000)

    assert exported is not None
    assert (exported.taken, exported.left) == (5, 0)
    assert len(rig.engine.sink.events) == 5

"""Local runs: the whole loop in one process, with nothing to install or sign up for.

`referloop run` and `referloop plan` read triggers from a file, run the same actors
as a worker on an in-process broker and an in-process Redis-compatible store, and
report what happened. A run writes each nudge to the outbox instead of a vendor;
a plan writes nothing. Nothing outlives the process: it is not durable, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import dramatiq
from dramatiq.brokers.stub import StubBroker

from integrations.base import (
    CohortSource,
    EventSource,
    Rejected,
    RenderedNudge,
    Sender,
    Sent,
)
from integrations.outbox import OutboxChannel
from integrations.registry import channel_names
from orchestrator import actors, occurrences
from orchestrator.actors import DELIVERIES_QUEUE, TRIGGERS_QUEUE, Actors
from orchestrator.broker import build_broker
from orchestrator.engine import Engine
from orchestrator.ledger import Outcome
from orchestrator.loader import Catalog
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

logger = logging.getLogger(__name__)

LOCAL_SNAPSHOT = "local"
LOCAL_THREADS = 4

Progress = Callable[[str, int], None]


@dataclass
class Report:
    """What a local run saw and did."""

    triggers: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    deferred: list[tuple[str, str, int]] = field(default_factory=list)
    by_playbook: dict[str, dict[str, int]] = field(default_factory=dict)
    loop: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return self.outcomes.get(outcome, 0)


class _Recorder:
    """A channel for plans: takes every nudge and sends nothing."""

    name: ClassVar[str] = "plan"

    def send(self, nudge: RenderedNudge) -> Sent:
        return Sent()


def run(
    catalog: Catalog,
    events: EventSource | None,
    cohorts: Mapping[str, CohortSource],
    *,
    outbox: Path | None,
    signer: InviteSigner,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> Report:
    """Run product `events` and the cohorts the playbooks name through `catalog`.

    `cohorts` maps a vendor (`mixpanel`) or `*` to the source that reads its
    cohorts: a file for a local run, the configured vendors for a plan. With
    `outbox` None this is a plan: the same decisions, nothing written.
    """
    started = time.monotonic()
    store = Store.in_memory()
    broker = build_broker(Settings())
    declared = actors.declare(broker)
    report = Report()
    deferred: list[str] = []

    def schedule(keys: list[str], delay_ms: int) -> None:
        # A deferred delivery would fire after this process has ended: record it.
        if delay_ms > 0:
            deferred.extend(keys)
        else:
            declared.schedule(keys, 0)

    clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    engine = Engine(
        store, catalog, signer, _channels(outbox), schedule, clock, sources=cohorts
    )
    actors.install(engine)
    worker = dramatiq.Worker(broker, worker_threads=LOCAL_THREADS)
    worker.start()
    try:
        _ingest_cohorts(engine, declared, report)
        if events is not None:
            _feed(engine, declared, events, report, progress)
        _drain(broker)
    finally:
        worker.stop()
        actors.install(None)

    _summarise(engine, report, deferred)
    report.seconds = time.monotonic() - started
    return report


def _channels(outbox: Path | None) -> dict[str, Sender]:
    if outbox is None:
        return {name: _Recorder() for name in channel_names()}
    return {name: OutboxChannel(outbox, stands_in_for=name) for name in channel_names()}


def _feed(
    engine: Engine,
    declared: Actors,
    source: EventSource,
    report: Report,
    progress: Progress | None,
) -> None:
    fired: list[str] = []
    for occurrence in _occurrences(engine, source, report):
        report.triggers += 1
        if engine.occurrences.save(occurrence):
            fired.append(occurrence.occurrence_id)
        else:
            report.duplicates += 1
        if len(fired) == actors.BATCH:
            declared.decide_all(fired)
            fired = []
        if progress is not None:
            progress("trigger", report.triggers)
    declared.decide_all(fired)


def _occurrences(
    engine: Engine, source: EventSource, report: Report
) -> Iterator[occurrences.Occurrence]:
    for item in source.events():
        if isinstance(item, Rejected):
            report.rejected.append(item)
        else:
            yield occurrences.from_event(item)


def _ingest_cohorts(engine: Engine, declared: Actors, report: Report) -> None:
    """Each cohort the playbooks name, read from its source as one snapshot.

    Gating and excluding cohorts come first, so that every decision sees them.
    """

    def decide(occurrence_ids: list[str]) -> None:
        report.triggers += len(occurrence_ids)
        declared.decide_all(occurrence_ids)

    named = sorted(engine.cohorts().items(), key=lambda item: (item[1], item[0]))
    for cohort, triggers in named:
        rejected = engine.read_cohort(cohort, LOCAL_SNAPSHOT)
        if rejected is None:
            report.unread.append(cohort)
            continue
        report.rejected += rejected
        engine.finish_snapshot(cohort, LOCAL_SNAPSHOT, decide if triggers else None)


def _drain(broker: dramatiq.Broker) -> None:
    """Wait until every decision and every delivery it led to is done."""
    assert isinstance(broker, StubBroker)
    while True:
        broker.join(TRIGGERS_QUEUE)
        broker.join(DELIVERIES_QUEUE)
        pending = (
            broker.queues[TRIGGERS_QUEUE].qsize()
            + broker.queues[DELIVERIES_QUEUE].qsize()
        )
        if pending == 0:
            return


def _summarise(engine: Engine, report: Report, deferred: list[str]) -> None:
    for loaded in engine.catalog.playbooks:
        playbook_id = loaded.playbook.id
        tally: dict[str, int] = {}
        for entry in engine.ledger.entries(
            engine.ledger.keys_for_playbook(playbook_id)
        ):
            name = entry.outcome
            if entry.outcome == Outcome.HELD:
                name = f"held:{entry.reason.split(':', 1)[0]}"
            tally[name] = tally.get(name, 0) + 1
            report.outcomes[entry.outcome] = report.outcomes.get(entry.outcome, 0) + 1
        report.by_playbook[playbook_id] = tally
    report.loop = engine.loop.attribution.counts()
    for key in deferred:
        record = engine.ledger.get(key)
        if record is not None:
            until = int(record.fields.get("until_ms", "0"))
            report.deferred.append((key, record.fields.get("playbook", ""), until))

"""Amplitude reconciliation as workers run it: the source built from the
environment, polled through the poll actor, downloading a cohort only when
Amplitude recomputed it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from integrations.amplitude_cohorts import AmplitudeCohorts
from integrations.vendors import build
from orchestrator import actors
from orchestrator.engine import Engine
from orchestrator.loader import load
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from simulator import Simulator
from simulator.amplitude import AmplitudeSim
from simulator.amplitude_cohorts import AmplitudeCohortsSim, SimCohort
from simulator.env import vendor_env

COHORT = "amplitude:abc123"
WORKSPACE = """\
name: reconcile
activation:
  property: user.activated_at
"""
PLAYBOOK = """\
id: pack-reviewers
description: Ask users who uploaded a pack to invite a reviewer.
owner: growth
trigger:
  cohort: amplitude:abc123
holdout: 0%
nudge:
  channel: outbox
  invite: {share: review_request}
  trust: Reviewers see one pack.
  message:
    body: "Invite a reviewer: {{ invite.link }}"
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([AmplitudeSim(), AmplitudeCohortsSim()]) as running:
        yield running


def test_a_poll_downloads_a_cohort_once_until_amplitude_recomputes_it(
    sim: Simulator, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dashboard = cast(AmplitudeCohortsSim, sim.vendor("amplitude-dashboard"))
    rows = [{"user_id": f"user-{n}", "account_id": "acct-1"} for n in range(30)]
    dashboard.seed(SimCohort("abc123", "Uploaded a pack", 1_777_000_000_000, rows))
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / "pack-reviewers.yaml").write_text(PLAYBOOK)
    catalog = load([tmp_path])
    assert not catalog.has_errors, catalog.problems
    vendors = build(catalog.workspace, vendor_env(sim), store)
    assert "amplitude" in vendors.sources
    engine = Engine(
        store,
        catalog,
        InviteSigner.throwaway(),
        {},
        lambda keys, delay_ms: None,
        sources=vendors.sources,
    )
    broker = StubBroker()
    broker.emit_after("process_boot")
    declared = actors.declare(broker)
    actors.install(engine)
    worker = dramatiq.Worker(broker, queues={actors.SOURCES_QUEUE}, worker_threads=1)
    worker.start()
    try:
        with caplog.at_level(logging.INFO, logger="orchestrator.actors"):
            for slot in ("slot-1", "slot-2", "slot-3"):
                declared.poll.send(COHORT, slot)
                broker.join(actors.SOURCES_QUEUE, fail_fast=True)
    finally:
        worker.stop()
        actors.install(None)
        vendors.close()

    assert dashboard.downloads == 1
    assert engine.snapshots.members(COHORT) == 30
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 2
    assert all("unchanged" in message for message in skipped)


def test_the_workspace_sets_how_often_and_how_many_downloads(
    sim: Simulator, store: Store, tmp_path: Path
) -> None:
    workspace = WORKSPACE + (
        "vendors:\n  amplitude:\n    download_every: 1d\n    downloads_per_month: 40\n"
    )
    (tmp_path / "referloop.yaml").write_text(workspace)
    catalog = load([tmp_path])
    assert not catalog.has_errors, catalog.problems

    vendors = build(catalog.workspace, vendor_env(sim), store)
    try:
        source = cast(AmplitudeCohorts, vendors.sources["amplitude"])
        assert source.min_interval == timedelta(days=1)
        assert source.monthly_downloads == 40
    finally:
        vendors.close()


def test_more_downloads_than_amplitude_allows_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "referloop.yaml").write_text(
        WORKSPACE + "vendors:\n  amplitude:\n    downloads_per_month: 900\n"
    )

    catalog = load([tmp_path])

    [problem] = catalog.problems
    assert problem.position is not None
    assert problem.position.line == 6
    assert "500" in problem.message

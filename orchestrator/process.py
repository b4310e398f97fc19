"""The worker process: settings in, engine and actors up, run until told to stop.

Playbooks are read at start and again whenever their files change; a set that
no longer loads cleanly keeps the last good one running and says what is wrong.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

from integrations import registry, vendors
from integrations.base import CohortSource, RewardTarget, Sender
from integrations.filesource import FileSource
from integrations.outbox import OutboxChannel
from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.clock import Clock, every
from orchestrator.engine import Engine
from orchestrator.journal import Journal
from orchestrator.loader import Catalog, load
from orchestrator.model import Workspace
from orchestrator.rewards import attribute_rewards
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.worker import run_worker

logger = logging.getLogger(__name__)

RELOAD_EVERY_S = 10.0


def run_worker_process(
    settings: Settings,
    *,
    threads: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Build everything a worker needs from `settings` and run it.

    Vendors come from the workspace file and the environment (`env`, by default
    the process's own); a vendor configured wrongly is left out and said so.
    """
    store = Store.from_settings(settings)
    broker = build_broker(settings)
    declared = actors.declare(broker)
    catalog = load_catalog(settings.playbooks, None)
    built = vendors.build(catalog.workspace, os.environ if env is None else env, store)
    engine = Engine(
        store,
        catalog,
        InviteSigner.from_env(),
        senders(settings, built),
        declared.schedule,
        sources=sources(settings, built),
        journal=Journal(store) if built.sink is not None else None,
        sink=built.sink,
        rewards_target=reward_target(catalog.workspace, built),
    )
    actors.install(engine)
    logger.info(
        "Sending through %s; reading cohorts from %s.",
        ", ".join(sorted(engine.channels)) or "nothing",
        ", ".join(sorted(engine.sources)) or "nothing",
    )
    watcher = watch(engine, settings.playbooks)
    try:
        return run_worker(broker, threads=threads or settings.worker_threads)
    finally:
        watcher.set()
        built.close()


def senders(
    settings: Settings, built: vendors.Vendors | None = None
) -> dict[str, Sender]:
    """The channels this process can send through: the configured vendors'.

    With `REFERLOOP_OUTBOX` set, the outbox stands in for every channel instead (a
    staging run with no vendor account).
    """
    if settings.outbox is not None:
        names = registry.channel_names()
        return {
            name: OutboxChannel(settings.outbox, stands_in_for=name) for name in names
        }
    return dict(built.senders) if built is not None else {}


def reward_target(workspace: Workspace, built: vendors.Vendors) -> RewardTarget | None:
    """Where this process gives grants: the workspace's `rewards.via`."""
    via = workspace.rewards.via
    if via == "webhook":
        return built.rewards
    sender = built.senders.get(via)
    return attribute_rewards(via, sender) if sender is not None else None


def sources(
    settings: Settings, built: vendors.Vendors | None = None
) -> dict[str, CohortSource]:
    """The cohort sources of this process, by vendor: the configured vendors'.

    With `REFERLOOP_SOURCE_FILE` set, that file stands in for every vendor instead.
    """
    if settings.source_file is not None:
        return {"*": FileSource(settings.source_file)}
    return dict(built.sources) if built is not None else {}


def run_clock_process(settings: Settings) -> int:
    """Enqueue a poll of every cohort the playbooks name, once per slot, and the
    export of loop events every minute."""
    store = Store.from_settings(settings)
    broker = build_broker(settings)
    declared = actors.declare(broker)
    catalog = load_catalog(settings.playbooks, None)
    engine = Engine(store, catalog, InviteSigner.throwaway(), {}, declared.schedule)
    clock = Clock(store, broker)
    interval = every(timedelta(minutes=settings.poll_minutes))
    for cohort in sorted(engine.cohorts()):
        clock.add(f"poll:{cohort}", interval, _poller(declared, cohort))
    clock.add("export-events", every(timedelta(minutes=1)), _exporter(declared))
    clock.add("grants-due", every(timedelta(minutes=1)), _grants_due(declared))
    clock.run()
    return 0


def _poller(declared: actors.Actors, cohort: str) -> Callable[[str], None]:
    def enqueue(slot: str) -> None:
        declared.poll.send(cohort, slot)

    return enqueue


def _exporter(declared: actors.Actors) -> Callable[[str], None]:
    def enqueue(slot: str) -> None:
        declared.export_events.send(slot)

    return enqueue


def _grants_due(declared: actors.Actors) -> Callable[[str], None]:
    def enqueue(slot: str) -> None:
        declared.grants_due.send(slot)

    return enqueue


def load_catalog(folder: Path, last_good: Catalog | None) -> Catalog:
    """Load the playbooks; keep `last_good` when the new set has errors."""
    catalog = load([folder])
    if not catalog.has_errors or last_good is None:
        for problem in catalog.problems:
            if problem.is_error:
                logger.error("Playbook problem: %s", problem)
        return catalog
    for problem in catalog.problems:
        if problem.is_error:
            logger.error("Playbook problem, keeping the last good set: %s", problem)
    return last_good


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(folder.glob("*.y*ml")) if folder.is_dir() else [folder]
    return tuple(
        (path.name, path.stat().st_mtime_ns, path.stat().st_size)
        for path in files
        if path.exists()
    )


def watch(
    engine: Engine, folder: Path, every_s: float = RELOAD_EVERY_S
) -> threading.Event:
    """Reload playbooks when their files change; set the event to stop."""
    stop = threading.Event()
    seen = _fingerprint(folder)

    def loop() -> None:
        nonlocal seen
        while not stop.wait(every_s):
            current = _fingerprint(folder)
            if current == seen:
                continue
            seen = current
            engine.catalog = load_catalog(folder, engine.catalog)
            logger.info("Playbooks reloaded: %d in use.", len(engine.catalog.playbooks))

    threading.Thread(target=loop, name="playbook-watch", daemon=True).start()
    return stop

"""Deliveries per second through one worker, beside no-op messages, on a real Redis.

Method: on the Redis at 127.0.0.1:6379, database 14 (flushed before and after), one
Dramatiq worker with THREADS threads runs in this process on referloop's
RedisBroker, with referloop's middleware. A playbook with a value gate, trigger
conditions, an account condition, caps on all four subjects that never bind,
re-entry `after 30d`, holdout 0%, no delay, no quiet hours and no send window,
sends through an `OutboxChannel` writing to a temporary file. Before a run,
DELIVERIES product events of as many activated users (in ACCOUNTS accounts) are
saved as occurrences, untimed. Timed: from the first `decide` message sent to the
last delivery key finished (a middleware counts the keys of `deliver` messages),
the whole path: decide (ledger open, every guardrail, schedule) and deliver (caps
script, ledger reserve and commit scripts, Liquid render, invite token signing,
outbox append, re-entry mark). The occurrences are sent as the producers send
them, in `decide` messages of up to `actors.BATCH` ids; each decide message hands
the keys due now to one `deliver` message.

The baseline, measured in the same run on the same broker and worker, sends as
many messages to an actor that does nothing and times them to the last finished.
Each side runs REPEATS times, interleaved (baseline, referloop, ...), after a
warm-up of WARMUP of each, and the fastest run of each is kept; its CPU figures
are kept with it. CPU is this process's (every thread: the sender, the
consumers, the worker threads) from `time.process_time` and from `getrusage`
(user + sys); Redis CPU and commands are the server's INFO deltas. Logging stays
at Python's default (WARNING), so referloop's INFO lines cost only their check.

Every run is checked: the ledger counts exactly DELIVERIES more `sent` and
nothing else, and the outbox holds DELIVERIES lines with as many distinct
delivery keys.

Target: referloop at least half the no-op rate (ratio >= TARGET_RATIO).

Run: `uv run python bench/bench_delivery.py`
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import redis
from benchredis import URL, connect, redis_spent
from dramatiq.middleware import Middleware

from integrations.base import ProductEvent
from integrations.outbox import OutboxChannel
from orchestrator import actors, occurrences
from orchestrator.broker import build_broker
from orchestrator.engine import Engine
from orchestrator.loader import Catalog, load
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

NAMESPACE = "referloop-bench"
DELIVERIES = 5_000
WARMUP = 200
REPEATS = 2
THREADS = 4
ACCOUNTS = 500
TARGET_RATIO = 0.5
WAIT_TIMEOUT_S = 120.0
BENCH_QUEUE = "bench"
EVENT = "document_pack_uploaded"
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""

WORKSPACE = """\
name: delivery bench
invite_url: https://app.example.com/invite
time_zone: Europe/London
activation:
  property: user.activated_at
caps:
  per_user: 5 per 7d
  per_account: 100000 per 7d
fields:
  user:
    first_name: Priya
    role: admin
    activated_at: "2024-05-02T09:14:00Z"
  account:
    name: Halden & Marsh Advisory
    plan: business
  events:
    document_pack_uploaded:
      pack_name: Project Falcon
      document_count: 38
"""

PLAYBOOK = """\
id: pack-reviewers
description: Ask for reviewers when a document pack is uploaded.
owner: growth
trigger:
  event: document_pack_uploaded
  where:
    event.document_count: {at_least: 5, at_most: 2000}
    user.role: {in: [admin, editor]}
audience:
  account:
    account.plan: {not_in: [trial, suspended]}
holdout: 0%
nudge:
  channel: outbox
  invite:
    share: review_request
    expires: 14d
  trust: >-
    {{ user.first_name }} at {{ account.name }} asks you to review
    "{{ trigger.properties.pack_name }}" until
    {{ invite.expires_at | date: "%-d %B %Y" }}.
  message:
    subject: Who should review {{ trigger.properties.pack_name }}?
    body: |-
      Hi {{ user.first_name }},

      "{{ trigger.properties.pack_name }}" has
      {{ trigger.properties.document_count }} documents and no reviewer yet.
      Invite one now: {{ invite.link }}
  data:
    pack_name: "{{ trigger.properties.pack_name }}"
limits:
  per_user: 1 per 14d
  per_account: 100000 per 7d
  reentry: after 30d
"""


class _Finished(Middleware):
    """Counts the items of one actor's messages that finish, and says when all
    have: a message whose first argument is a list counts one per element."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actor = ""
        self._expected = 0
        self.done = 0
        self.failed = 0
        self.all_done = threading.Event()

    def expect(self, actor_name: str, count: int) -> None:
        with self._lock:
            self._actor, self._expected = actor_name, count
            self.done = self.failed = 0
            self.all_done.clear()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.actor_name != self._actor:
            return

        first = message.args[0] if message.args else None
        items = len(first) if isinstance(first, list) else 1
        with self._lock:
            if exception is not None:
                self.failed += items
                return
            self.done += items
            if self.done == self._expected:
                self.all_done.set()


@dataclass(frozen=True)
class Meter:
    """Clocks and counters read at one moment; a difference is a sample."""

    wall_s: float
    cpu_s: float
    rusage_s: float
    redis_cpu_s: float
    redis_commands: int

    @classmethod
    def read(cls, client: redis.Redis) -> Meter:
        redis_cpu_s, redis_commands = redis_spent(client)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall_s=time.perf_counter(),
            cpu_s=time.process_time(),
            rusage_s=usage.ru_utime + usage.ru_stime,
            redis_cpu_s=redis_cpu_s,
            redis_commands=redis_commands,
        )

    def __sub__(self, other: Meter) -> Meter:
        return Meter(
            self.wall_s - other.wall_s,
            self.cpu_s - other.cpu_s,
            self.rusage_s - other.rusage_s,
            self.redis_cpu_s - other.redis_cpu_s,
            self.redis_commands - other.redis_commands,
        )


@dataclass(frozen=True)
class Sample:
    """One timed run of one side."""

    side: str
    count: int
    spent: Meter

    @property
    def per_s(self) -> float:
        return self.count / self.spent.wall_s

    def ms_each(self, seconds: float) -> float:
        return seconds / self.count * 1000


@dataclass
class Rig:
    """The broker, worker and state that every run of both sides shares."""

    client: redis.Redis
    store: Store
    broker: dramatiq.Broker
    declared: actors.Actors
    noop: dramatiq.Actor[[str], None]
    finished: _Finished
    catalog: Catalog
    signer: InviteSigner
    folder: Path


class BenchError(Exception):
    """The benchmark could not measure what it set out to; one line says why."""


def _catalog(folder: Path) -> Catalog:
    playbooks = folder / "playbooks"
    playbooks.mkdir()
    (playbooks / "referloop.yaml").write_text(WORKSPACE, encoding="utf-8")
    (playbooks / "pack-reviewers.yaml").write_text(PLAYBOOK, encoding="utf-8")
    catalog = load([playbooks])
    if catalog.has_errors:
        raise BenchError(f"the bench playbook does not load: {catalog.problems}")
    return catalog


def _rig(client: redis.Redis, folder: Path) -> Rig:
    settings = Settings(redis_url=URL, namespace=NAMESPACE)
    broker = build_broker(settings)
    finished = _Finished()
    broker.add_middleware(finished)
    declared = actors.declare(broker)

    def noop(occurrence_id: str) -> None:
        """The baseline: a message that carries an id and does nothing."""

    noop_actor = dramatiq.actor(
        broker=broker, actor_name="noop", queue_name=BENCH_QUEUE
    )(noop)
    return Rig(
        client,
        Store.from_settings(settings),
        broker,
        declared,
        noop_actor,
        finished,
        _catalog(folder),
        InviteSigner(["bench-signing-key-" + "k" * 32]),
        folder,
    )


def _wait(rig: Rig, count: int) -> None:
    if rig.finished.all_done.wait(WAIT_TIMEOUT_S):
        return
    raise BenchError(
        f"only {rig.finished.done:,} of {count:,} items finished in "
        f"{WAIT_TIMEOUT_S:.0f} s ({rig.finished.failed:,} failed)"
    )


def _measured(rig: Rig, side: str, count: int, work: Callable[[], None]) -> Sample:
    before = Meter.read(rig.client)
    work()
    spent = Meter.read(rig.client) - before
    return Sample(side, count, spent)


def _baseline(rig: Rig, label: str, count: int) -> Sample:
    ids = [f"oc_{label}_{n:026d}" for n in range(count)]
    rig.finished.expect("noop", count)

    def work() -> None:
        for occurrence_id in ids:
            rig.noop.send(occurrence_id)
        _wait(rig, count)

    return _measured(rig, "baseline", count, work)


def _occurrence(label: str, number: int) -> occurrences.Occurrence:
    event = ProductEvent(
        event_id=f"evt-{label}-{number}",
        name=EVENT,
        user_id=f"u-{label}-{number:05d}",
        time=datetime.now(UTC),
        account_id=f"acct-{number % ACCOUNTS:03d}",
        properties={"pack_name": "Project Falcon", "document_count": 38},
        user={"first_name": "Ada", "role": "admin", "activated_at": "2026-01-01"},
        account={"name": "Halden & Marsh", "plan": "business"},
    )
    return occurrences.from_event(event)


def _referloop(rig: Rig, label: str, count: int) -> Sample:
    outbox = rig.folder / f"outbox-{label}.jsonl"
    channels = {"outbox": OutboxChannel(outbox)}
    engine = Engine(rig.store, rig.catalog, rig.signer, channels, rig.declared.schedule)
    actors.install(engine)
    ids = []
    for number in range(count):
        occurrence = _occurrence(label, number)
        engine.occurrences.save(occurrence)
        ids.append(occurrence.occurrence_id)
    before = Counter(engine.ledger.counts())
    rig.finished.expect("deliver", count)

    def work() -> None:
        rig.declared.decide_all(ids)
        _wait(rig, count)

    sample = _measured(rig, "referloop", count, work)
    _check(Counter(engine.ledger.counts()) - before, outbox, count)
    return sample


def _check(outcomes: Counter[str], outbox: Path, count: int) -> None:
    """Every delivery sent exactly once: in the ledger and in the outbox."""
    lines = outbox.read_text(encoding="utf-8").splitlines()
    keys = {json.loads(line)["delivery_key"] for line in lines}
    if dict(outcomes) != {"sent": count}:
        raise BenchError(f"ledger outcomes {dict(outcomes)}, not {count:,} sent")
    if (len(lines), len(keys)) != (count, count):
        raise BenchError(
            f"outbox has {len(lines):,} lines and {len(keys):,} delivery keys, "
            f"not {count:,}"
        )


def _measure(rig: Rig) -> list[Sample]:
    _baseline(rig, "warmup", WARMUP)
    _referloop(rig, "warmup", WARMUP)
    samples = []
    for number in range(1, REPEATS + 1):
        samples.append(_baseline(rig, f"run{number}", DELIVERIES))
        samples.append(_referloop(rig, f"run{number}", DELIVERIES))
    return samples


def _run(client: redis.Redis) -> list[Sample]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as folder:
        rig = _rig(client, Path(folder))
        # As `referloop worker` does: TimeLimit starts its timer on process_boot.
        rig.broker.emit_after("process_boot")
        worker = dramatiq.Worker(rig.broker, worker_threads=THREADS)
        worker.start()
        try:
            return _measure(rig)
        finally:
            worker.stop()
            rig.broker.close()
            actors.install(None)


def main() -> None:
    print(METHOD)
    print()
    client = connect()
    client.flushdb()
    try:
        samples = _run(client)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        client.flushdb()
    _report(samples)


def _best(samples: list[Sample], side: str) -> Sample:
    return max((s for s in samples if s.side == side), key=lambda s: s.per_s)


def _report(samples: list[Sample]) -> None:
    print(
        f"N = {DELIVERIES:,} per run, {THREADS} worker threads, {REPEATS} runs per "
        f"side interleaved after a warm-up of {WARMUP:,}; every referloop run "
        "checked: ledger +N sent and nothing else, N outbox lines, N delivery keys"
    )
    print()
    _report_table(samples)
    print()
    base, path = _best(samples, "baseline"), _best(samples, "referloop")
    _report_verdict(base, path)


def _report_table(samples: list[Sample]) -> None:
    print(
        "per item: CPU ms (process_time), rusage ms (user + sys), Redis server "
        "CPU ms, Redis commands (Lua's own calls included)"
    )
    header = ("per s", "wall s", "CPU ms", "rusage ms", "Redis ms", "Redis cmds")
    print(f"{'run':<24}" + "".join(f"{h:>11}" for h in header))
    runs: Counter[str] = Counter()
    for sample in samples:
        runs[sample.side] += 1
        _report_row(f"{sample.side} {runs[sample.side]}", sample)
    base, path = _best(samples, "baseline"), _best(samples, "referloop")
    _report_row("best: no-op message", base)
    _report_row("best: delivery", path)


def _report_row(label: str, sample: Sample) -> None:
    spent = sample.spent
    figures = (
        f"{sample.per_s:>11,.0f}",
        f"{spent.wall_s:>11.2f}",
        f"{sample.ms_each(spent.cpu_s):>11.3f}",
        f"{sample.ms_each(spent.rusage_s):>11.3f}",
        f"{sample.ms_each(spent.redis_cpu_s):>11.3f}",
        f"{spent.redis_commands / sample.count:>11.1f}",
    )
    print(f"{label:<24}" + "".join(figures))


def _report_verdict(base: Sample, path: Sample) -> None:
    ratio = path.per_s / base.per_s
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    per_message = 2 * path.per_s / base.per_s
    print(f"baseline: {base.per_s:,.0f} no-op messages/s")
    print(f"referloop: {path.per_s:,.0f} deliveries/s")
    print(f"CPU per no-op message: {base.ms_each(base.spent.cpu_s):.3f} ms")
    print(f"CPU per delivery: {path.ms_each(path.spent.cpu_s):.3f} ms")
    print(f"ratio (referloop deliveries/s / baseline messages/s): {ratio:.2f}")
    print(
        f"target: at least half the no-op rate (ratio >= {TARGET_RATIO:.2f}): {verdict}"
    )
    print(
        f"note: deliveries go {actors.BATCH} to a decide and a deliver message; "
        f"unbatched, a delivery was two messages (that ratio: {per_message:.2f})"
    )


if __name__ == "__main__":
    main()

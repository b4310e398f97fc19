"""The clock process: enqueue each scheduled job once per slot, however many clocks run.

Heroku runs two clocks for a while on every restart (DESIGN, "Clock"). Each fire
takes a Redis key for its slot, the job's nominal fire time, with `SET NX`, and
enqueues only if it got it. The clock never does the work; actors do.

The slot must be the nominal time, the same in every clock, not the moment a
clock woke up. APScheduler 3 calls a job with its own arguments only, and its
listeners hear of a run only after it was handed on, but it gives each due job's
nominal run times to the job's executor. `_SlotExecutor` passes the last of them
(jobs coalesce) to `Clock.fire`. Flooring the current time to the interval would
also work, but for interval triggers only, not for cron triggers.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from uuid import uuid4

import dramatiq
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from orchestrator.state import Store

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A clock that wakes up late still fires a slot within this grace, so the slot's
# key must outlive it; later than that, the slot is skipped and logged.
MISFIRE_GRACE_S = 30
MIN_SLOT_TTL_MS = 2 * MISFIRE_GRACE_S * 1000
SLOT_TTL_PERIODS = 3

Enqueue = Callable[[str], None]


def every(interval: timedelta) -> IntervalTrigger:
    """An interval trigger on a grid that starts at the Unix epoch.

    Use it rather than a bare `IntervalTrigger`, whose grid starts when each
    clock starts: two clocks would then have different slots and both enqueue.
    """
    seconds = interval.total_seconds()
    return IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=UTC)


@dataclass(frozen=True)
class _ClockJob:
    trigger: BaseTrigger
    enqueue: Enqueue
    slot_ttl_ms: int


class Clock:
    """Scheduled jobs that enqueue messages, each slot once across all clocks.

    Args:
        store: where the slot keys live, shared by every clock.
        broker: the broker the jobs' `enqueue` callables send to; closed when
            the clock stops.
    """

    def __init__(self, store: Store, broker: dramatiq.Broker) -> None:
        self._store = store
        self._broker = broker
        self._jobs: dict[str, _ClockJob] = {}
        self.clock_id = uuid4().hex[:12]

    def add(self, name: str, trigger: BaseTrigger, enqueue: Enqueue) -> None:
        """Call `enqueue(slot_iso)` once per slot of `trigger`.

        Give interval triggers a fixed start (see `every`) and cron triggers a
        time zone, so that every clock computes the same slots.
        """
        if name in self._jobs:
            raise ValueError(f"clock job {name!r} is added twice")
        if getattr(trigger, "jitter", None):
            raise ValueError(f"clock job {name!r}: jitter moves fires off their slots")

        self._jobs[name] = _ClockJob(trigger, enqueue, _slot_ttl_ms(trigger))

    def fire(self, name: str, slot: datetime) -> bool:
        """Enqueue job `name` for `slot` unless some clock did; True if this one did.

        A failed enqueue gives the slot back, so another clock may still take it.
        """
        if slot.tzinfo is None:
            raise ValueError("a slot must be a timezone-aware datetime")
        job = self._jobs[name]
        slot_iso = slot.astimezone(UTC).isoformat()
        key = self._store.key("clock", name, slot_iso)

        taken = self._store.redis.set(key, self.clock_id, nx=True, px=job.slot_ttl_ms)
        if not taken:
            logger.info(
                "Clock job %s slot %s was taken by another clock.", name, slot_iso
            )
            return False

        try:
            job.enqueue(slot_iso)
        except BaseException:
            self._store.redis.delete(key)
            raise
        logger.info("Clock job %s enqueued for slot %s.", name, slot_iso)
        return True

    def run(self) -> None:
        """Fire the jobs on their schedules until SIGTERM or SIGINT (main thread)."""
        scheduler = self._scheduler()
        _stop_on_signals(scheduler)
        names = ", ".join(sorted(self._jobs))
        logger.info("Clock %s started with jobs %s.", self.clock_id, names)

        scheduler.start()

        self._broker.close()
        logger.info("Clock %s stopped.", self.clock_id)

    def _scheduler(self) -> BlockingScheduler:
        scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": _SlotExecutor()},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": MISFIRE_GRACE_S,
            },
        )
        for name, job in self._jobs.items():
            # `slot` is a placeholder; _SlotExecutor fills it in on each fire.
            placeholder = {"slot": None}
            scheduler.add_job(
                self.fire,
                job.trigger,
                args=[name],
                kwargs=placeholder,
                id=name,
                name=name,
            )
        return scheduler


class _SlotExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs a due job in the scheduler's thread, passing its slot as `slot`.

    A fire is one Redis command and one enqueue, so it needs no thread pool.
    """

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        for slot in run_times:
            _run(job, slot)
        # The base class counts running instances; this tells it the job is done.
        self._run_job_success(job.id, [])


def _run(job: Job, slot: datetime) -> None:
    """Call the job with its slot, unless the slot is past its misfire grace."""
    late_s = (datetime.now(UTC) - slot).total_seconds()
    if late_s > job.misfire_grace_time:
        logger.warning(
            "Clock job %s skipped slot %s: %d s late.", job.id, slot.isoformat(), late_s
        )
        return

    try:
        job.func(*job.args, **{**job.kwargs, "slot": slot})
    except Exception:
        logger.error(
            "Clock job %s failed for slot %s.", job.id, slot.isoformat(), exc_info=True
        )


def _slot_ttl_ms(trigger: BaseTrigger) -> int:
    """A few periods of `trigger`, and never less than the misfire grace allows."""
    period = _period(trigger)
    period_ms = int(period.total_seconds() * 1000)
    return max(SLOT_TTL_PERIODS * period_ms, MIN_SLOT_TTL_MS)


def _period(trigger: BaseTrigger) -> timedelta:
    """The time between the trigger's next two fires; zero if it fires once."""
    now = datetime.now(UTC)
    first = trigger.get_next_fire_time(None, now)
    second = first and trigger.get_next_fire_time(first, first)
    if first is None or second is None:
        return timedelta(0)
    return second - first  # type: ignore[no-any-return]


def _stop_on_signals(scheduler: BlockingScheduler) -> None:
    """Shut the scheduler down at the first stop signal; ignore later ones."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not scheduler.running:
            return
        logger.info("Received %s: stopping the clock.", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)

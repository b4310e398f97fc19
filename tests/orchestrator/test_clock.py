"""The clock: one enqueue per slot across clocks, on real Redis and real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from dramatiq.brokers.stub import StubBroker

from orchestrator.clock import MIN_SLOT_TTL_MS, Clock, every
from orchestrator.state import Store

ROOT = Path(__file__).resolve().parents[2]
SLOT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
FIRES = 50

# A clock process as `referloop clock` would run one: a job every second that
# sends a real message through the Redis broker.
CLOCK_SCRIPT = """
import logging, sys
from datetime import timedelta
import dramatiq
from orchestrator.broker import build_broker
from orchestrator.clock import Clock, every
from orchestrator.settings import Settings
from orchestrator.state import Store

logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
settings = Settings(redis_url=sys.argv[1], namespace=sys.argv[2])
broker = build_broker(settings)

def poll(slot: str) -> None:
    pass

actor = dramatiq.actor(poll, broker=broker, queue_name="clock")
clock = Clock(Store.from_settings(settings), broker)
clock.add("poll", every(timedelta(seconds=1)), actor.send)
clock.run()
"""


class Recorder:
    """An enqueue callable that remembers its slots; safe across threads."""

    def __init__(self) -> None:
        self.slots: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, slot: str) -> None:
        with self._lock:
            self.slots.append(slot)


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own: slot keys of other runs never collide."""
    return f"referloop-test-{uuid4().hex[:8]}"


@pytest.fixture
def clocks(
    redis_url: str, store: Store, namespace: str
) -> Iterator[Callable[[], Clock]]:
    """Clocks on the test database, each with a Redis connection of its own."""
    clients: list[redis.Redis] = []

    def make() -> Clock:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        clients.append(client)
        return Clock(Store(client, namespace), StubBroker())

    yield make
    for client in clients:
        client.close()


def test_two_clocks_enqueue_one_poll_for_the_same_slot(
    clocks: Callable[[], Clock],
) -> None:
    """Fifty concurrent fires of one slot, from two clocks, enqueue it once."""
    # Given two clocks with the same job
    recorder = Recorder()
    first, second = clocks(), clocks()
    for clock in (first, second):
        clock.add("poll", every(timedelta(minutes=1)), recorder)

    # When both fire the same slot 25 times each, all at once
    start = threading.Barrier(FIRES)

    def fire(index: int) -> bool:
        clock = first if index % 2 else second
        start.wait()
        return clock.fire("poll", SLOT)

    with ThreadPoolExecutor(max_workers=FIRES) as pool:
        enqueued = list(pool.map(fire, range(FIRES)))

    assert sum(enqueued) == 1
    assert recorder.slots == ["2025-03-03T09:00:00+00:00"]


def test_different_slots_are_enqueued_once_each(clocks: Callable[[], Clock]) -> None:
    """Every slot is enqueued by exactly one of the clocks."""
    recorder = Recorder()
    first, second = clocks(), clocks()
    for clock in (first, second):
        clock.add("poll", every(timedelta(minutes=1)), recorder)
    slots = [SLOT + timedelta(minutes=n) for n in range(10)]

    for slot in slots:
        first.fire("poll", slot)
        second.fire("poll", slot)

    assert recorder.slots == [slot.isoformat() for slot in slots]


def test_a_slot_is_the_same_in_any_time_zone(clocks: Callable[[], Clock]) -> None:
    """A slot is keyed in UTC, so clocks in other zones agree on it."""
    recorder = Recorder()
    clock = clocks()
    clock.add("poll", every(timedelta(minutes=1)), recorder)
    paris = SLOT.astimezone(timezone(timedelta(hours=1)))

    assert clock.fire("poll", SLOT) is True
    assert clock.fire("poll", paris) is False
    assert recorder.slots == ["2025-03-03T09:00:00+00:00"]


def test_a_slot_key_lasts_a_few_periods(
    clocks: Callable[[], Clock], store: Store, namespace: str
) -> None:
    """The slot key outlives the misfire grace and expires after three periods."""
    clock = clocks()
    clock.add("hourly", every(timedelta(hours=1)), Recorder())
    clock.add("daily", CronTrigger(hour=9, timezone=UTC), Recorder())
    clock.add("often", every(timedelta(seconds=5)), Recorder())

    for name in ("hourly", "daily", "often"):
        clock.fire(name, SLOT)

    def ttl_ms(name: str) -> int:
        key = Store(store.redis, namespace).key("clock", name, SLOT.isoformat())
        return int(store.redis.pttl(key))

    assert 3 * 3_600_000 - 5_000 < ttl_ms("hourly") <= 3 * 3_600_000
    assert 3 * 86_400_000 - 5_000 < ttl_ms("daily") <= 3 * 86_400_000
    assert MIN_SLOT_TTL_MS - 5_000 < ttl_ms("often") <= MIN_SLOT_TTL_MS


def test_a_failed_enqueue_gives_the_slot_back(clocks: Callable[[], Clock]) -> None:
    """When the broker refuses a message, another clock can still take the slot."""
    recorder = Recorder()

    def refuse(slot: str) -> None:
        raise ConnectionError("broker unavailable")

    first, second = clocks(), clocks()
    first.add("poll", every(timedelta(minutes=1)), refuse)
    second.add("poll", every(timedelta(minutes=1)), recorder)

    with pytest.raises(ConnectionError):
        first.fire("poll", SLOT)

    assert second.fire("poll", SLOT) is True
    assert recorder.slots == [SLOT.isoformat()]


def test_a_clock_refuses_what_would_break_its_slots(
    clocks: Callable[[], Clock],
) -> None:
    """Naive slots, jittered triggers and a name added twice are refused."""
    clock = clocks()
    clock.add("poll", every(timedelta(minutes=1)), Recorder())
    jittered = IntervalTrigger(minutes=1, start_date=SLOT, jitter=5)

    with pytest.raises(ValueError, match="timezone-aware"):
        clock.fire("poll", SLOT.replace(tzinfo=None))
    with pytest.raises(ValueError, match="jitter"):
        clock.add("jittery", jittered, Recorder())
    with pytest.raises(ValueError, match="added twice"):
        clock.add("poll", every(timedelta(minutes=1)), Recorder())


def test_two_clock_processes_enqueue_each_slot_once_and_stop_on_sigterm(
    redis_url: str, store: Store, namespace: str, tmp_path: Path
) -> None:
    """Two running clocks, as during a Heroku restart: one message per slot.

    The slots are whole seconds: the nominal fire times, not the moments the
    clocks woke up. SIGTERM stops both cleanly.
    """
    # Given two clock processes started a moment apart
    logs = [tmp_path / "clock-0.log", tmp_path / "clock-1.log"]
    processes = []
    for log in logs:
        with log.open("wb") as stderr:
            args = [sys.executable, "-c", CLOCK_SCRIPT, redis_url, namespace]
            processes.append(subprocess.Popen(args, cwd=ROOT, stderr=stderr))
        time.sleep(0.3)

    # When they run for a few seconds and are then sent SIGTERM
    try:
        messages = f"{namespace}-queue:clock.msgs"
        deadline = time.monotonic() + 15
        while store.redis.hlen(messages) < 4:
            assert time.monotonic() < deadline, "the clocks enqueued too little"
            time.sleep(0.1)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        exit_codes = [process.wait(timeout=10) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    assert exit_codes == [0, 0]
    slots = [_slot_of(body) for body in store.redis.hvals(messages)]
    assert len(slots) == len(set(slots))
    assert all(slot.microsecond == 0 for slot in slots)
    texts = [log.read_text() for log in logs]
    assert all("Clock job poll" in text for text in texts), "both clocks fired"
    assert all("stopped." in text for text in texts)


def _slot_of(body: str) -> datetime:
    return datetime.fromisoformat(json.loads(body)["args"][0])

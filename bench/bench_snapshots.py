"""How fast and how big a 1,000,000-member cohort snapshot diff is, on a real Redis.

Method: on the Redis at 127.0.0.1:6379, database 14 (flushed before and after), a
previous snapshot of MEMBERS users is ingested and completed as a baseline. A new
snapshot with CHURN_PCT % churn (that many users left, as many new ones came) is
then streamed in through `Snapshots.add_page` in pages of PAGE_SIZE, timed, and
completed (the SDIFFSTOREs and the atomic swap), timed. The entered and exited sets
are read back with SSCAN, timed. The baseline, measured in the same run, sends
the same ids with plain SADD in chunks of PAGE_SIZE, ten per pipeline round trip:
no page record, no diff. Ids are generated page by page, so the Python process
never holds the whole cohort.

Redis memory per member is `MEMORY USAGE <set> SAMPLES 0` of the current set over
its members (steady state), and the INFO `used_memory` delta while the new
snapshot is being built, over its members (the set and its page record, while the
old set is still current). Peak memory of the Python process is `ru_maxrss`.

Targets: the diff (`complete`) under 5 s, the Python peak under 150 MB, under 100
bytes per member in Redis.

Run: `uv run python bench/bench_snapshots.py`
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar, cast

import redis
from benchredis import connect

from orchestrator.snapshots import Diff, Snapshots
from orchestrator.state import Store

MEMBERS = 1_000_000
CHURN_PCT = 1
PAGE_SIZE = 1000
COHORT = "mixpanel:bench"
TARGET_DIFF_S = 5.0
TARGET_PEAK_MB = 150.0
TARGET_BYTES_PER_MEMBER = 100.0
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""

T = TypeVar("T")


def _previous() -> Iterator[str]:
    return (f"u_{number:08d}" for number in range(MEMBERS))


def _current() -> Iterator[str]:
    """One previous user in every 100 // CHURN_PCT has left; as many new ones came."""
    step = 100 // CHURN_PCT
    stayed = (f"u_{n:08d}" for n in range(MEMBERS) if n % step)
    came = (f"u_{n:08d}" for n in range(MEMBERS, MEMBERS + MEMBERS // step))
    yield from stayed
    yield from came


def _pages(user_ids: Iterator[str]) -> Iterator[list[str]]:
    while page := list(islice(user_ids, PAGE_SIZE)):
        yield page


def _ingest(snapshots: Snapshots, snapshot_id: str, ids: Iterator[str]) -> None:
    for number, page in enumerate(_pages(ids)):
        snapshots.add_page(COHORT, snapshot_id, number, page)


def _plain_sadd(client: redis.Redis, key: str) -> None:
    pipeline = client.pipeline(transaction=False)
    for page in _pages(_current()):
        pipeline.sadd(key, *page)
        if len(pipeline) >= 10:
            pipeline.execute()
    pipeline.execute()


def _timed(work: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def _used_memory(client: redis.Redis) -> int:
    info = cast(dict[str, Any], client.info("memory"))
    return int(info["used_memory"])


def _set_bytes(client: redis.Redis, key: str) -> int:
    usage = cast(int | None, client.memory_usage(key, samples=0))
    return usage or 0


def _drain(snapshots: Snapshots, snapshot_id: str) -> int:
    entered = sum(len(batch) for batch in snapshots.entered(COHORT, snapshot_id))
    exited = sum(len(batch) for batch in snapshots.exited(COHORT, snapshot_id))
    return entered + exited


def _verdict(value: float, target: float) -> str:
    return "meets target" if value < target else "OVER TARGET"


@dataclass(frozen=True)
class Figures:
    """What one run measured; seconds and bytes."""

    diff: Diff
    ingest_s: float
    complete_s: float
    read_s: float
    changed: int
    plain_s: float
    steady_bytes: int
    plain_bytes: int
    building_bytes: int
    peak_mb: float


def main() -> None:
    client = connect()
    client.flushdb()
    try:
        _report(_measure(client))
    finally:
        client.flushdb()


def _measure(client: redis.Redis) -> Figures:
    store = Store(client, "referloop-bench")
    snapshots = Snapshots(store)
    _ingest(snapshots, "previous", _previous())
    snapshots.complete(COHORT, "previous", baseline=True)

    before = _used_memory(client)
    ingest_s, _ = _timed(lambda: _ingest(snapshots, "next", _current()))
    building_bytes = _used_memory(client) - before
    complete_s, diff = _timed(lambda: snapshots.complete(COHORT, "next"))
    read_s, changed = _timed(lambda: _drain(snapshots, "next"))
    current = store.key("snapshot", "{" + COHORT + "}", "current")
    steady_bytes = _set_bytes(client, current)
    snapshots.discard(COHORT, "next")

    plain_key = store.key("bench", "plain")
    plain_s, _ = _timed(lambda: _plain_sadd(client, plain_key))
    plain_bytes = _set_bytes(client, plain_key)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Figures(
        diff,
        ingest_s,
        complete_s,
        read_s,
        changed,
        plain_s,
        steady_bytes,
        plain_bytes,
        building_bytes,
        peak_mb,
    )


def _report(figures: Figures) -> None:
    print(METHOD)
    print()
    print(f"cohort: {MEMBERS:,} members, {CHURN_PCT}% churn, pages of {PAGE_SIZE:,}")
    print(f"diff: {figures.diff}")
    print(f"entered + exited read back: {figures.changed:,} in {figures.read_s:.2f} s")
    print()
    _report_times(figures)
    print()
    _report_memory(figures)
    print()
    _report_targets(figures)


def _report_times(figures: Figures) -> None:
    rows = [
        ("baseline: pipelined SADD, no diff", figures.plain_s),
        ("ingest: add_page, one per page", figures.ingest_s),
        ("complete: 2 SDIFFSTORE + swap", figures.complete_s),
    ]
    print(f"{'measure':<38}{'seconds':>10}")
    for label, seconds in rows:
        print(f"{label:<38}{seconds:>10.2f}")
    both_s = figures.ingest_s + figures.complete_s
    print(f"ratio (ingest / baseline): {figures.ingest_s / figures.plain_s:.2f}x")
    print(f"ratio (ingest + complete / baseline): {both_s / figures.plain_s:.2f}x")


def _report_memory(figures: Figures) -> None:
    members = figures.diff.members
    rows = [
        ("current set", figures.steady_bytes / members),
        ("baseline set (plain SADD)", figures.plain_bytes / members),
        ("while building (used_memory delta)", figures.building_bytes / members),
    ]
    print(f"{'Redis bytes per member':<38}{'bytes':>10}")
    for label, per_member in rows:
        print(f"{label:<38}{per_member:>10.1f}")
    ratio = figures.steady_bytes / figures.plain_bytes
    print(f"ratio (current set / baseline set): {ratio:.2f}x")
    print(f"Python peak RSS (ru_maxrss): {figures.peak_mb:.1f} MB")


def _report_targets(figures: Figures) -> None:
    per_member = figures.steady_bytes / figures.diff.members
    checks = [
        ("diff (complete), s", figures.complete_s, TARGET_DIFF_S),
        ("Python peak, MB", figures.peak_mb, TARGET_PEAK_MB),
        ("Redis bytes per member", per_member, TARGET_BYTES_PER_MEMBER),
    ]
    for label, value, target in checks:
        print(f"{label:<24}{value:>9.2f} < {target:<6.0f}{_verdict(value, target)}")


if __name__ == "__main__":
    main()

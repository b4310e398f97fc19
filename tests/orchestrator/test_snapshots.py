"""Cohort snapshots: diffs, repeated pages, restarts, the swap.

Each test runs on the real Redis and on the in-process store of the embedded
default, which runs the same Lua scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from orchestrator.snapshots import (
    BUILD_TTL_S,
    Diff,
    Snapshots,
    UnknownSnapshotError,
)
from orchestrator.state import Store

COHORT = "mixpanel:61877"


def _ingest(
    snapshots: Snapshots,
    snapshot_id: str,
    user_ids: Sequence[str],
    page_size: int = 2,
) -> list[bool]:
    """Stream `user_ids` into a snapshot in pages, as a cohort sync would."""
    starts = range(0, max(len(user_ids), 1), page_size)
    return [
        snapshots.add_page(
            COHORT, snapshot_id, number, user_ids[start : start + page_size]
        )
        for number, start in enumerate(starts)
    ]


def _all(batches: Iterable[list[str]]) -> set[str]:
    return {user for batch in batches for user in batch}


def _keys(store: Store) -> set[str]:
    return set(store.redis.keys("*"))


@pytest.fixture(params=["redis", "in-memory"])
def snapshots(request: pytest.FixtureRequest, store: Store) -> Snapshots:
    """Snapshots on the flushed test database, then on the embedded store."""
    if request.param == "in-memory":
        return Snapshots(Store.in_memory(store.namespace))
    return Snapshots(store)


@pytest.fixture
def seeded(snapshots: Snapshots) -> Snapshots:
    """A cohort whose current snapshot `s1` holds u1, u2, u3."""
    _ingest(snapshots, "s1", ["u1", "u2", "u3"])
    snapshots.complete(COHORT, "s1", baseline=True)
    return snapshots


def test_entered_and_exited_are_the_set_differences(seeded: Snapshots) -> None:
    """Given u1..u3 current, when u2..u5 arrive, u4 and u5 entered and u1 exited."""
    _ingest(seeded, "s2", ["u2", "u3", "u4", "u5"])

    diff = seeded.complete(COHORT, "s2")

    assert diff == Diff(COHORT, "s2", entered=2, exited=1, members=4)
    assert _all(seeded.entered(COHORT, "s2")) == {"u4", "u5"}
    assert _all(seeded.exited(COHORT, "s2")) == {"u1"}
    assert seeded.members(COHORT) == 4
    assert seeded.current_id(COHORT) == "s2"


def test_a_repeated_page_is_refused_and_changes_nothing(seeded: Snapshots) -> None:
    """A page delivered twice is applied once; the second call says so."""
    store = seeded.store
    seeded.add_page(COHORT, "s2", 0, ["u3", "u4"])
    before = {key: store.redis.dump(key) for key in _keys(store)}

    again = seeded.add_page(COHORT, "s2", 0, ["u3", "u4"])

    assert again is False
    assert {key: store.redis.dump(key) for key in _keys(store)} == before


def test_a_restarted_ingestion_of_the_same_snapshot_brings_no_new_entries(
    seeded: Snapshots,
) -> None:
    """The vendor restarts from the top under the same id, before and after complete."""
    members = ["u2", "u3", "u4"]
    first = _ingest(seeded, "s2", members)
    restarted = _ingest(seeded, "s2", members)
    diff = seeded.complete(COHORT, "s2")
    after_complete = _ingest(seeded, "s2", members)

    assert first == [True, True]
    assert restarted == [False, False]
    assert after_complete == [False, False]
    assert diff == Diff(COHORT, "s2", entered=1, exited=1, members=3)
    assert seeded.complete(COHORT, "s2") == diff


def test_a_restart_under_a_new_id_doubles_nothing(seeded: Snapshots) -> None:
    """A half-built snapshot is abandoned and the sync starts again with a new id."""
    _ingest(seeded, "s2", ["u2", "u3"])
    _ingest(seeded, "s3", ["u2", "u3", "u4"])

    diff = seeded.complete(COHORT, "s3")

    assert diff == Diff(COHORT, "s3", entered=1, exited=1, members=3)
    assert _all(seeded.entered(COHORT, "s3")) == {"u4"}


def test_completing_twice_returns_the_same_diff_and_changes_nothing(
    seeded: Snapshots,
) -> None:
    """A redelivered `complete` finds its record and leaves every key alone."""
    store = seeded.store
    _ingest(seeded, "s2", ["u3", "u4"])
    first = seeded.complete(COHORT, "s2")
    before = {key: store.redis.dump(key) for key in _keys(store)}

    second = seeded.complete(COHORT, "s2")

    assert second == first
    assert {key: store.redis.dump(key) for key in _keys(store)} == before


def test_a_reader_sees_the_old_snapshot_until_the_swap(seeded: Snapshots) -> None:
    """While a snapshot is built, `is_member` and `members` answer from the old one."""
    _ingest(seeded, "s2", ["u4", "u5"])

    during = (seeded.is_member(COHORT, "u1"), seeded.is_member(COHORT, "u4"))
    count_during = seeded.members(COHORT)
    seeded.complete(COHORT, "s2")
    after = (seeded.is_member(COHORT, "u1"), seeded.is_member(COHORT, "u4"))

    assert during == (True, False)
    assert count_during == 3
    assert after == (False, True)


def test_the_first_snapshot_has_everyone_entering(snapshots: Snapshots) -> None:
    """With no earlier snapshot, every member is new to the cohort."""
    _ingest(snapshots, "s1", ["u1", "u2", "u3"])

    diff = snapshots.complete(COHORT, "s1")

    assert diff == Diff(COHORT, "s1", entered=3, exited=0, members=3)
    assert _all(snapshots.entered(COHORT, "s1")) == {"u1", "u2", "u3"}


def test_a_baseline_records_members_without_anyone_entering(
    snapshots: Snapshots,
) -> None:
    """A new playbook on a full cohort must not nudge the whole cohort at once."""
    _ingest(snapshots, "s1", ["u1", "u2", "u3"])

    diff = snapshots.complete(COHORT, "s1", baseline=True)

    assert diff == Diff(COHORT, "s1", entered=0, exited=0, members=3)
    assert _all(snapshots.entered(COHORT, "s1")) == set()
    assert snapshots.is_member(COHORT, "u2")


def test_building_keys_expire_and_the_current_set_does_not(
    snapshots: Snapshots,
) -> None:
    """An abandoned build goes within a day; a completed one is kept for good."""
    store = snapshots.store
    _ingest(snapshots, "s1", ["u1", "u2", "u3"])
    building = [key for key in _keys(store) if ":build:" in key or ":pages:" in key]
    ttls = [store.redis.ttl(key) for key in building]

    snapshots.complete(COHORT, "s1")
    current = store.key("snapshot", "{" + COHORT + "}", "current")

    assert len(building) == 2
    assert all(0 < ttl <= BUILD_TTL_S for ttl in ttls)
    assert store.redis.ttl(current) == -1
    assert not [key for key in _keys(store) if ":build:" in key or ":pages:" in key]


def test_a_snapshot_begun_before_the_current_one_changes_nothing(
    seeded: Snapshots,
) -> None:
    """A late `complete` of an older snapshot must not bring back old members."""
    _ingest(seeded, "old", ["u1"])
    _ingest(seeded, "new", ["u2", "u3", "u4"])
    seeded.complete(COHORT, "new")

    late = seeded.complete(COHORT, "old")

    assert late == Diff(COHORT, "old", 0, 0, members=3, superseded=True)
    assert seeded.current_id(COHORT) == "new"
    assert not seeded.is_member(COHORT, "u1")


def test_an_empty_snapshot_has_everyone_exiting(seeded: Snapshots) -> None:
    """An empty page is how a source says the cohort is now empty."""
    seeded.add_page(COHORT, "s2", 0, [])

    diff = seeded.complete(COHORT, "s2")

    assert diff == Diff(COHORT, "s2", entered=0, exited=3, members=0)
    assert _all(seeded.exited(COHORT, "s2")) == {"u1", "u2", "u3"}


def test_completing_a_snapshot_without_pages_is_refused(snapshots: Snapshots) -> None:
    """A mistyped id must not be taken for an empty cohort."""
    with pytest.raises(UnknownSnapshotError, match="no page"):
        snapshots.complete(COHORT, "never-started")

    assert snapshots.current_id(COHORT) is None


def test_entered_users_come_in_batches(snapshots: Snapshots) -> None:
    """A page larger than one SADD chunk is taken whole; readers get full batches."""
    user_ids = [f"u{number}" for number in range(2500)]
    snapshots.add_page(COHORT, "s1", 0, user_ids)
    snapshots.complete(COHORT, "s1")

    batches = list(snapshots.entered(COHORT, "s1", batch=1000))

    assert sorted(len(batch) for batch in batches) == [500, 1000, 1000]
    assert _all(batches) == set(user_ids)


def test_discard_drops_the_sets_but_keeps_the_diff(seeded: Snapshots) -> None:
    """Once entered users are processed, their set goes; `complete` still answers."""
    _ingest(seeded, "s2", ["u3", "u4"])
    diff = seeded.complete(COHORT, "s2")

    seeded.discard(COHORT, "s2")

    assert list(seeded.entered(COHORT, "s2")) == []
    assert list(seeded.exited(COHORT, "s2")) == []
    assert seeded.complete(COHORT, "s2") == diff
    assert seeded.members(COHORT) == 2


def test_cohorts_are_kept_apart(seeded: Snapshots) -> None:
    """Another cohort's snapshot neither sees nor changes this one."""
    seeded.add_page("mixpanel:63390", "s1", 0, ["u9"])
    seeded.complete("mixpanel:63390", "s1")

    assert seeded.members(COHORT) == 3
    assert not seeded.is_member(COHORT, "u9")
    assert seeded.is_member("mixpanel:63390", "u9")


def test_a_negative_page_number_is_refused(snapshots: Snapshots) -> None:
    """Pages count from 0, as the cohort sync numbers them."""
    with pytest.raises(ValueError, match="start at 0"):
        snapshots.add_page(COHORT, "s1", -1, ["u1"])

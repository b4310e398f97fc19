"""Cohort membership snapshots in Redis sets: streamed in, diffed, swapped atomically.

A source delivers a cohort's members a page at a time (Mixpanel's cohort sync sends
pages of 1,000, retries pages and sometimes restarts from the top). Each page goes
into a building set; `complete` then diffs it against the current set and replaces
the current set in one Lua script, so a reader sees the old membership or the new
one, never half of it.

Keys, under the store's namespace; `{cohort}` is a Redis Cluster hash tag, so that
every key of a cohort lives in one slot and a script may touch them all:

    snapshot:{c}:current          set: the members of the last completed snapshot
    snapshot:{c}:state            hash: `id` and `seq` of that snapshot, `next_seq`
    snapshot:{c}:build:<id>       set: the snapshot being built (TTL BUILD_TTL_S)
    snapshot:{c}:pages:<id>       hash: `seq`, and one `page:<n>` field per page
    snapshot:{c}:entered:<id>     set: users in the snapshot and not in the last one
    snapshot:{c}:exited:<id>      set: users in the last snapshot and not in this one
    snapshot:{c}:diff:<id>        hash: the counts `complete` returned (RECORD_TTL_S)
    snapshot:{c}:changed-at       hash: per user, when the last change applied was
                                  computed (milliseconds)
    snapshot:{c}:change:<id>      list: a marker, then the users a pushed change
                                  moved (RECORD_TTL_S)

Each snapshot takes a sequence number when its first page arrives. A snapshot
begun before the current one (a `complete` redelivered late) is superseded: it
changes nothing, rather than bringing back an older membership.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from orchestrator.errors import ReferloopError
from orchestrator.state import Store

logger = logging.getLogger(__name__)

# An abandoned half-built snapshot disappears a day after its last page.
BUILD_TTL_S = 24 * 3600
# How long `complete` stays idempotent, and entered/exited sets wait to be read.
RECORD_TTL_S = 7 * 24 * 3600
DEFAULT_BATCH = 1000
# Lua's unpack() has a stack limit (about 8,000 values); SADD in chunks below it.
SADD_CHUNK = 1000

_ADD_PAGE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HSETNX', KEYS[2], 'page:' .. ARGV[1], 1) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'seq') == 0 then
  local seq = redis.call('HINCRBY', KEYS[4], 'next_seq', 1)
  redis.call('HSET', KEYS[2], 'seq', seq)
end
local chunk = tonumber(ARGV[3])
for first = 4, #ARGV, chunk do
  local last = math.min(first + chunk - 1, #ARGV)
  redis.call('SADD', KEYS[1], unpack(ARGV, first, last))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

_COMPLETE = """
local record = redis.call('HGETALL', KEYS[7])
if #record > 0 then return record end
if redis.call('EXISTS', KEYS[4]) == 0 then return false end
local seq = tonumber(redis.call('HGET', KEYS[4], 'seq') or '0')
local current_seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local entered, exited, superseded = 0, 0, 0
if seq < current_seq then
  superseded = 1
  redis.call('DEL', KEYS[3])
else
  if ARGV[2] == '0' then
    entered = redis.call('SDIFFSTORE', KEYS[5], KEYS[3], KEYS[1])
    exited = redis.call('SDIFFSTORE', KEYS[6], KEYS[1], KEYS[3])
    redis.call('EXPIRE', KEYS[5], ARGV[3])
    redis.call('EXPIRE', KEYS[6], ARGV[3])
  end
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('RENAME', KEYS[3], KEYS[1])
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[2], 'id', ARGV[1], 'seq', seq)
end
local members = redis.call('SCARD', KEYS[1])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[7], 'entered', entered, 'exited', exited,
  'members', members, 'superseded', superseded)
redis.call('EXPIRE', KEYS[7], ARGV[3])
return redis.call('HGETALL', KEYS[7])
"""

# Move each user in or out of the current set, unless a later change about that
# user was applied already; remember whom this change moved, under its id, so
# that the same change applied again moves nobody and returns the same users.
_APPLY_CHANGE = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, redis.call('LRANGE', KEYS[3], 1, -1)}
end
local at = tonumber(ARGV[2])
local moved = {}
for index = 5, #ARGV do
  local user = ARGV[index]
  local last = redis.call('HGET', KEYS[2], user)
  if not last or tonumber(last) <= at then
    redis.call('HSET', KEYS[2], user, ARGV[2])
    local changed
    if ARGV[1] == '1' then
      changed = redis.call('SADD', KEYS[1], user)
    else
      changed = redis.call('SREM', KEYS[1], user)
    end
    if changed == 1 then moved[#moved + 1] = user end
  end
end
redis.call('RPUSH', KEYS[3], '')
local chunk = tonumber(ARGV[4])
for first = 1, #moved, chunk do
  local last = math.min(first + chunk - 1, #moved)
  redis.call('RPUSH', KEYS[3], unpack(moved, first, last))
end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return {1, moved}
"""


class UnknownSnapshotError(ReferloopError):
    """`complete` was asked for a snapshot that has no page, or has expired."""


@dataclass(frozen=True)
class Diff:
    """What completing a snapshot changed: counts of users who entered and exited.

    `superseded` is True when a newer snapshot was already current: nothing changed.
    """

    cohort: str
    snapshot_id: str
    entered: int
    exited: int
    members: int
    superseded: bool = False


@dataclass(frozen=True)
class Change:
    """What a pushed change did: the users it moved in or out of the cohort.

    `is_repeat` is True when this change was applied before: `moved` is then
    what it moved the first time, and nothing changed now.
    """

    cohort: str
    change_id: str
    is_repeat: bool
    moved: tuple[str, ...]


class Snapshots:
    """Build, diff and read cohort snapshots; every operation is safe to repeat."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._add_page = store.redis.register_script(_ADD_PAGE)
        self._complete = store.redis.register_script(_COMPLETE)
        self._apply_change = store.redis.register_script(_APPLY_CHANGE)

    def add_page(
        self, cohort: str, snapshot_id: str, page: int, user_ids: Sequence[str]
    ) -> bool:
        """Add one page of members to the snapshot being built.

        Returns False, and changes nothing, when this page of this snapshot was
        already applied or the snapshot is already complete (a retried page, or an
        ingestion restarted from the top under the same id). An empty page still
        counts: it is how an empty cohort is reported.
        """
        if page < 0:
            raise ValueError(f"page numbers start at 0, not {page}")

        keys = [
            self._key(cohort, "build", snapshot_id),
            self._key(cohort, "pages", snapshot_id),
            self._key(cohort, "diff", snapshot_id),
            self._key(cohort, "state"),
        ]
        args: list[str | int] = [page, BUILD_TTL_S, SADD_CHUNK, *user_ids]
        applied = bool(self._add_page(keys=keys, args=args))

        outcome = "Added" if applied else "Skipped repeated"
        logger.debug(
            "%s page %d of snapshot %s of cohort %s.",
            outcome,
            page,
            snapshot_id,
            cohort,
        )
        return applied

    def complete(
        self, cohort: str, snapshot_id: str, *, baseline: bool = False
    ) -> Diff:
        """Diff the built snapshot against the current one, then make it current.

        Completing the same snapshot again returns the same `Diff` and changes
        nothing, for RECORD_TTL_S. With `baseline=True` the membership is recorded
        and nobody is treated as entered or exited: use it when a playbook starts
        on a cohort that already has members, so that it does not nudge the whole
        cohort at once. Without it, the first snapshot of a cohort has everyone
        entering.

        Raises:
            UnknownSnapshotError: no page of this snapshot arrived (or it expired).
        """
        keys = [
            self._key(cohort, "current"),
            self._key(cohort, "state"),
            self._key(cohort, "build", snapshot_id),
            self._key(cohort, "pages", snapshot_id),
            self._key(cohort, "entered", snapshot_id),
            self._key(cohort, "exited", snapshot_id),
            self._key(cohort, "diff", snapshot_id),
        ]
        args: list[str | int] = [snapshot_id, int(baseline), RECORD_TTL_S]
        reply = self._complete(keys=keys, args=args)
        if reply is None:
            raise UnknownSnapshotError(
                f"snapshot {snapshot_id} of cohort {cohort} has no page: add one first"
            )

        diff = _diff(cohort, snapshot_id, cast(list[str], reply))
        _log_completed(diff)
        return diff

    def entered(
        self, cohort: str, snapshot_id: str, batch: int = DEFAULT_BATCH
    ) -> Iterator[list[str]]:
        """The users who entered with this snapshot, in lists of `batch` at most.

        SSCAN may, rarely, return a user twice; delivery keys make that harmless.
        """
        return self._scan(self._key(cohort, "entered", snapshot_id), batch)

    def exited(
        self, cohort: str, snapshot_id: str, batch: int = DEFAULT_BATCH
    ) -> Iterator[list[str]]:
        """The users who left with this snapshot, in lists of `batch` at most."""
        return self._scan(self._key(cohort, "exited", snapshot_id), batch)

    def add_members(self, cohort: str, user_ids: Sequence[str]) -> list[str]:
        """Add users to the cohort's current membership (a push that says who
        entered); return those who were not members yet.

        Repeating the same users adds and returns nothing. A snapshot completed
        later diffs against the membership these changes made.
        """
        key = self._key(cohort, "current")
        unique = list(dict.fromkeys(user_ids))
        if not unique:
            return []
        known = cast(list[int], self.store.redis.smismember(key, unique))
        new = [user for user, member in zip(unique, known, strict=True) if not member]
        if new:
            self.store.redis.sadd(key, *new)
        return new

    def remove_members(self, cohort: str, user_ids: Sequence[str]) -> int:
        """Take users out of the cohort's current membership (a push that says
        who left); return how many were members."""
        if not user_ids:
            return 0
        return cast(int, self.store.redis.srem(self._key(cohort, "current"), *user_ids))

    def apply_change(
        self,
        cohort: str,
        change_id: str,
        *,
        entered: bool,
        computed_ms: int,
        user_ids: Sequence[str],
    ) -> Change:
        """Move users into (`entered`) or out of the current membership, once per
        `change_id`, and return whom it moved.

        Use it for a vendor that pushes who entered and who left, each change
        with its own id and the time it was computed (Amplitude's Cohort
        Webhook). A change about a user older than one already applied to that
        user is ignored for that user, so a late retry cannot undo a newer one.
        """
        keys = [
            self._key(cohort, "current"),
            self._key(cohort, "changed-at"),
            self._key(cohort, "change", change_id),
        ]
        unique = list(dict.fromkeys(user_ids))
        args: list[str | int] = [
            int(entered),
            computed_ms,
            RECORD_TTL_S,
            SADD_CHUNK,
            *unique,
        ]
        fresh, moved = cast(list[Any], self._apply_change(keys=keys, args=args))

        change = Change(cohort, change_id, not fresh, tuple(moved))
        logger.debug(
            "Change %s of cohort %s moved %d users%s.",
            change_id,
            cohort,
            len(change.moved),
            " before" if change.is_repeat else "",
        )
        return change

    def is_member(self, cohort: str, user_id: str) -> bool:
        """True when the user is in the cohort's last completed snapshot."""
        key = self._key(cohort, "current")
        return bool(self.store.redis.sismember(key, user_id))

    def members(self, cohort: str) -> int:
        """How many users the cohort's last completed snapshot holds."""
        count = self.store.redis.scard(self._key(cohort, "current"))
        return cast(int, count)

    def current_id(self, cohort: str) -> str | None:
        """The id of the cohort's last completed snapshot, or None before the first."""
        state = self._key(cohort, "state")
        return cast(str | None, self.store.redis.hget(state, "id"))

    def discard(self, cohort: str, snapshot_id: str) -> None:
        """Drop the entered and exited sets once they have been processed.

        The counts stay, so completing the snapshot again still returns its `Diff`.
        """
        entered = self._key(cohort, "entered", snapshot_id)
        exited = self._key(cohort, "exited", snapshot_id)
        self.store.redis.delete(entered, exited)

    def _key(self, cohort: str, *parts: str) -> str:
        return self.store.key("snapshot", f"{{{cohort}}}", *parts)

    def _scan(self, key: str, batch: int) -> Iterator[list[str]]:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")

        pending: list[str] = []
        for user_id in self.store.redis.sscan_iter(key, count=batch):
            pending.append(user_id)
            if len(pending) == batch:
                yield pending
                pending = []
        if pending:
            yield pending


def _diff(cohort: str, snapshot_id: str, reply: list[str]) -> Diff:
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    return Diff(
        cohort=cohort,
        snapshot_id=snapshot_id,
        entered=int(fields["entered"]),
        exited=int(fields["exited"]),
        members=int(fields["members"]),
        superseded=fields["superseded"] == "1",
    )


def _log_completed(diff: Diff) -> None:
    if diff.superseded:
        logger.warning(
            "Snapshot %s of cohort %s began before the current one; it changed "
            "nothing.",
            diff.snapshot_id,
            diff.cohort,
        )
        return

    logger.info(
        "Completed snapshot %s of cohort %s: %d entered, %d exited, %d members.",
        diff.snapshot_id,
        diff.cohort,
        diff.entered,
        diff.exited,
        diff.members,
    )

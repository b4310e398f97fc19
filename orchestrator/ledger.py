"""The ledger: the durable record of every delivery, keyed for dedupe.

A delivery goes through reserve, send, commit. Reserving takes a lease
(`SET NX PX`) on the delivery key, so two workers holding the same message never
both send; committing is a compare-and-set on that lease, so a worker whose lease
ran out cannot overwrite the outcome of the one that took over. A definite failure
releases the key for a retry; an ambiguous one (the request went out, no answer
came back) is recorded as such and never resent blindly.

Every decision is recorded, including the decisions not to send (held back, with
the guardrail that held it) and the deferrals. Records hold ids and reasons, never
personal data or message bodies.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from redis.client import Pipeline

from orchestrator.state import Store

logger = logging.getLogger(__name__)

LEASE_MS = 60_000
RECORD_TTL_S = 400 * 86_400
INDEX_LIMIT = 10_000


class Outcome(StrEnum):
    """Where a delivery stands. The last four are final."""

    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    RESERVED = "reserved"
    RETRYING = "retrying"
    SENT = "sent"
    HELD = "held"
    AMBIGUOUS = "ambiguous"
    DEAD = "dead"


FINAL = frozenset({Outcome.SENT, Outcome.HELD, Outcome.AMBIGUOUS, Outcome.DEAD})


class Reservation(StrEnum):
    """The answer to a reserve.

    GRANTED: go ahead. BUSY: another worker holds the lease. DONE: final already.
    ORPHANED: the lease is yours, but an earlier holder reserved and never settled
    (it was killed, perhaps after sending): whether it went out is unknown.
    """

    GRANTED = "granted"
    BUSY = "busy"
    DONE = "done"
    ORPHANED = "orphaned"


# Every script is safe to run twice: a Redis client that lost a reply sends the
# command again, and the second run must answer as the first did.

# Open: create the record once. ARGV: token, ttl_s, then field, value pairs.
_OPEN = """
if redis.call('HSETNX', KEYS[1], 'opened_by', ARGV[1]) == 0 then
  return redis.call('HGET', KEYS[1], 'opened_by') == ARGV[1] and 1 or 0
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Reserve: refuse when the record is final or another lease is live.
_RESERVE = """
local state = redis.call('HGET', KEYS[1], 'outcome')
if state == 'sent' or state == 'held' or state == 'ambiguous' or state == 'dead' then
  return 'done'
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return 'granted'
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'busy'
end
redis.call('HSET', KEYS[1], 'outcome', 'reserved', 'updated_ms', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if state == 'reserved' then
  return 'orphaned'
end
return 'granted'
"""

# Settle: only the holder of the lease may write the outcome, then it lets go.
# ARGV: lease token, the count to add to ('' for none), then field, value pairs.
_SETTLE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.call('HGET', KEYS[1], 'settled_by') == ARGV[1] and 1 or 0
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'settled_by', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
redis.call('DEL', KEYS[2])
return 1
"""

# Set an outcome outside a lease; count it only when it changes.
# ARGV: the count to add to ('' for none), then field, value pairs (outcome first).
_SET = """
local previous = redis.call('HGET', KEYS[1], 'outcome')
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[1] ~= '' and previous ~= ARGV[3] then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return previous
"""


@dataclass(frozen=True)
class Entry:
    """One delivery as the ledger knows it."""

    delivery_key: str
    fields: Mapping[str, str]

    @property
    def outcome(self) -> str:
        return self.fields.get("outcome", "")

    @property
    def reason(self) -> str:
        return self.fields.get("reason", "")


DELIVERIES = "ledger"
GRANTS = "grants"


class Ledger:
    """Reserve, commit, release and record deliveries in Redis.

    `book` names the records' part of the namespace: `ledger` for deliveries,
    `grants` for rewards, which go through the same reserve, send, commit with
    counts, indexes and dead letters of their own.
    """

    def __init__(self, store: Store, book: str = DELIVERIES) -> None:
        self.store = store
        self.book = book
        self._reserve = store.redis.register_script(_RESERVE)
        self._settle = store.redis.register_script(_SETTLE)
        self._open = store.redis.register_script(_OPEN)
        self._setter = store.redis.register_script(_SET)

    def open(self, key: str, about: Mapping[str, str]) -> bool:
        """Create the record of a delivery; False when it already exists.

        `about` names the playbook, step, subject and trigger: ids only.
        """
        return self.open_many([(key, about)])[0]

    def open_many(
        self, deliveries: Sequence[tuple[str, Mapping[str, str]]]
    ) -> list[bool]:
        """`open` for many deliveries in two round trips; one answer for each."""
        pipe = self.store.redis.pipeline(transaction=False)
        for key, about in deliveries:
            self._open(keys=[self._record(key)], args=_open_args(about), client=pipe)
        opened = [bool(answer) for answer in pipe.execute()]

        for (key, about), is_new in zip(deliveries, opened, strict=True):
            if is_new:
                self._index(pipe, key, about)
        pipe.execute()
        return opened

    def reserve(
        self, key: str, lease_token: str, lease_ms: int = LEASE_MS
    ) -> Reservation:
        return self.reserve_many([(key, lease_token)], lease_ms)[0]

    def reserve_many(
        self, leases: Sequence[tuple[str, str]], lease_ms: int = LEASE_MS
    ) -> list[Reservation]:
        """`reserve` each (key, lease token) pair, in one round trip."""
        pipe = self.store.redis.pipeline(transaction=False)
        now_ms = _now_ms()
        for key, token in leases:
            keys = [self._record(key), self._lease(key)]
            self._reserve(keys=keys, args=[token, lease_ms, now_ms], client=pipe)
        return [Reservation(answer) for answer in pipe.execute()]

    def commit(self, key: str, lease_token: str, **fields: str) -> bool:
        """Record the send; False when the lease was lost to another worker."""
        return self._settle_as(key, lease_token, Outcome.SENT, fields)

    def commit_in(
        self, pipe: Pipeline, key: str, lease_token: str, **fields: str
    ) -> None:
        """Queue a `commit` on `pipe`; its answer is `settled` of the result."""
        self._settle_in(pipe, key, lease_token, Outcome.SENT, fields)

    def settled(self, key: str, outcome: str, answer: object) -> bool:
        """Read a queued settle's answer, warning as `commit` does when it lost."""
        if not answer:
            logger.warning(
                "Lost the lease on delivery %s before recording %s.", key, outcome
            )
        return bool(answer)

    def release(self, key: str, lease_token: str, reason: str) -> bool:
        """A definite failure: let go of the key so that a retry may send."""
        return self._settle_as(key, lease_token, Outcome.RETRYING, {"reason": reason})

    def mark_ambiguous(self, key: str, lease_token: str, reason: str) -> bool:
        return self._settle_as(key, lease_token, Outcome.AMBIGUOUS, {"reason": reason})

    def hold(self, key: str, reason: str, pipe: Pipeline | None = None) -> None:
        """Record a decision not to send, with the guardrail's reason.

        With `pipe` the write is only queued there, for its caller to execute.
        """
        count = f"held:{reason.split(':', 1)[0]}"
        self._set(key, Outcome.HELD, count, pipe, reason=reason)

    def defer(
        self, key: str, until_ms: int, reason: str, pipe: Pipeline | None = None
    ) -> None:
        until = str(until_ms)
        self._set(key, Outcome.DEFERRED, "", pipe, reason=reason, until_ms=until)

    def dead(self, key: str, reason: str) -> None:
        """Give up on a delivery, with why; it is listed among the dead letters."""
        self._set(key, Outcome.DEAD, Outcome.DEAD.value, reason=reason)
        self.store.redis.zadd(self._dead(), {key: _now_ms()})

    def mark(self, key: str, outcome: Outcome, **fields: str) -> None:
        """Set a record's outcome outside a lease (a grant handed on to be given)."""
        count = outcome.value if outcome in FINAL else ""
        self._set(key, outcome, count, None, **fields)

    def annotate(self, key: str, **fields: str) -> None:
        """Add fields to a record (who approved a grant) without changing its state."""
        self.store.redis.hset(self._record(key), mapping=fields)

    def get(self, key: str) -> Entry | None:
        fields = cast(dict[str, str], self.store.redis.hgetall(self._record(key)))
        return Entry(key, fields) if fields else None

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """`get` for each key, in one round trip."""
        pipe = self.store.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._record(key))
        records = cast(list[dict[str, str]], pipe.execute())
        return [
            Entry(key, fields) if fields else None
            for key, fields in zip(keys, records, strict=True)
        ]

    def keys_for_user(self, user_id: str) -> list[str]:
        return self._recent(self.store.key(self.book, "by-user", user_id))

    def keys_for_playbook(self, playbook_id: str) -> list[str]:
        return self._recent(self.store.key(self.book, "by-playbook", playbook_id))

    def dead_letters(self) -> list[str]:
        return self._recent(self._dead())

    def counts(self) -> dict[str, int]:
        """Outcomes counted across all deliveries, e.g. `sent`, `held:holdout`."""
        raw = cast(dict[str, str], self.store.redis.hgetall(self._counts()))
        return {name: int(value) for name, value in raw.items()}

    def entries(self, keys: list[str]) -> Iterator[Entry]:
        for key in keys:
            entry = self.get(key)
            if entry is not None:
                yield entry

    # --- internals ---------------------------------------------------------------

    def _settle_as(
        self, key: str, lease_token: str, outcome: Outcome, fields: Mapping[str, str]
    ) -> bool:
        pipe = self.store.redis.pipeline(transaction=False)
        self._settle_in(pipe, key, lease_token, outcome, fields)
        return self.settled(key, outcome, pipe.execute()[0])

    def _settle_in(
        self,
        pipe: Pipeline,
        key: str,
        lease_token: str,
        outcome: Outcome,
        fields: Mapping[str, str],
    ) -> None:
        pairs = {**fields, "outcome": outcome, "updated_ms": str(_now_ms())}
        count = outcome.value if outcome in FINAL else ""
        args = [lease_token, count, *(item for pair in pairs.items() for item in pair)]
        keys = [self._record(key), self._lease(key), self._counts()]
        self._settle(keys=keys, args=args, client=pipe)

    def _set(
        self,
        key: str,
        outcome: Outcome,
        count: str,
        pipe: Pipeline | None = None,
        **fields: str,
    ) -> None:
        """Write `outcome`, adding one to `count` only if the outcome changed."""
        mapping = {"outcome": outcome.value, **fields, "updated_ms": str(_now_ms())}
        pairs = [item for pair in mapping.items() for item in pair]
        keys = [self._record(key), self._counts()]
        self._setter(keys=keys, args=[count, *pairs], client=pipe)

    def _counts(self) -> str:
        return self.store.key(self.book, "counts")

    def _dead(self) -> str:
        # Deliveries' dead letters kept their first, shorter key.
        return (
            self.store.key("dead")
            if self.book == DELIVERIES
            else self.store.key(self.book, "dead")
        )

    def _index(self, pipe: Pipeline, key: str, about: Mapping[str, str]) -> None:
        now_ms = _now_ms()
        for kind in ("user", "playbook"):
            value = about.get(kind)
            if not value:
                continue
            index = self.store.key(self.book, f"by-{kind}", value)
            pipe.zadd(index, {key: now_ms})
            pipe.zremrangebyrank(index, 0, -INDEX_LIMIT - 1)

    def _recent(self, index: str) -> list[str]:
        return cast(list[str], self.store.redis.zrange(index, 0, -1))

    def _record(self, key: str) -> str:
        return self.store.key(self.book, key)

    def _lease(self, key: str) -> str:
        if self.book == DELIVERIES:
            return self.store.key("lease", key)
        return self.store.key(self.book, "lease", key)


def _open_args(about: Mapping[str, str]) -> list[str]:
    """The ARGV of `_OPEN`: a fresh token, the TTL, then the record's fields."""
    now_ms = str(_now_ms())
    fields = {
        **about,
        "outcome": Outcome.SCHEDULED,
        "created_ms": now_ms,
        "updated_ms": now_ms,
    }
    pairs = [str(item) for pair in fields.items() for item in pair]
    return [secrets.token_hex(8), str(RECORD_TTL_S), *pairs]


def _now_ms() -> int:
    return int(time.time() * 1000)

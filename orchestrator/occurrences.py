"""Trigger occurrences: one firing of a trigger for one user, stored by id.

Actors carry ids, never personal data, so what a trigger knew about the user, the
account and the event is kept here, in Redis, for as long as a delivery may need it.
An occurrence is saved once: a product event reported twice, or a cohort page
ingested again, finds its id taken and fires nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from integrations.base import Member, ProductEvent
from orchestrator.render import Facts
from orchestrator.state import Store

TTL_S = 30 * 86_400

# Keep each record whose key is free, with its expiry: one command for a batch,
# where a pipeline of SETs costs the client a command each to pack and parse.
_SAVE_NEW = """
for index, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[index + 1], 'NX', 'EX', ARGV[1])
end
return #KEYS
"""


@dataclass(frozen=True)
class Occurrence:
    """A trigger that fired for one user: an event, or an entry into a cohort."""

    occurrence_id: str
    kind: Literal["event", "cohort"]
    source: str
    user_id: str
    account_id: str
    time: datetime
    facts: Facts
    # A reinforcement fires one step of one playbook, for the user it follows up;
    # a trigger fires the first nudge of every playbook it names.
    step: str = "nudge"
    playbook: str | None = None

    @property
    def trigger_source(self) -> str:
        """The same spelling as `Trigger.source`: `event:<name>` or `mixpanel:<id>`."""
        return f"event:{self.source}" if self.kind == "event" else self.source


def from_event(event: ProductEvent) -> Occurrence:
    account_id = event.account_id or str(event.account.get("id", ""))
    return Occurrence(
        occurrence_id=_id("event", event.event_id),
        kind="event",
        source=event.name,
        user_id=event.user_id,
        account_id=account_id,
        time=event.time,
        facts=_facts(
            event.user_id, account_id, event.user, event.account, event.properties
        ),
    )


def from_member(
    cohort: str, snapshot_id: str, member: Member, at: datetime
) -> Occurrence:
    account_id = member.account_id or str(member.account.get("id", ""))
    return Occurrence(
        occurrence_id=_id("cohort", cohort, snapshot_id, member.user_id),
        kind="cohort",
        source=cohort,
        user_id=member.user_id,
        account_id=account_id,
        time=at,
        facts=_facts(member.user_id, account_id, member.user, member.account, {}),
    )


def reinforcing(
    origin: str,
    playbook: str,
    event: str,
    user_id: str,
    account_id: str,
    at: datetime,
    facts: Facts,
) -> Occurrence:
    """The occurrence of one playbook's reinforcement on `event`, for `user_id`.

    `origin` is what it follows up (the event's occurrence, a grant): one origin
    fires each reinforcement once for each user.
    """
    return Occurrence(
        occurrence_id=_id("reinforce", origin, playbook, event, user_id),
        kind="event",
        source=event,
        user_id=user_id,
        account_id=account_id,
        time=at,
        facts=facts,
        step=f"reinforcement:{event}",
        playbook=playbook,
    )


class Occurrences:
    """Save and load occurrences; each id is saved once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._save_new = store.redis.register_script(_SAVE_NEW)

    def save(self, occurrence: Occurrence) -> bool:
        """Keep `occurrence`; False when its id holds a different record."""
        record = json.dumps(_to_record(occurrence), separators=(",", ":"))
        key = self.store.key("occurrence", occurrence.occurrence_id)
        if self.store.redis.set(key, record, nx=True, ex=TTL_S):
            return True
        # The same record already there: a retried command whose reply was lost,
        # or the same event reported again; deciding again is harmless either way,
        # because the ledger opens each delivery once.
        return self.store.redis.get(key) == record

    def save_many(self, found: Sequence[Occurrence]) -> None:
        """Keep each occurrence whose id is free, in one command."""
        if not found:
            return
        keys = [self.store.key("occurrence", o.occurrence_id) for o in found]
        records = [json.dumps(_to_record(o), separators=(",", ":")) for o in found]
        self._save_new(keys=keys, args=[TTL_S, *records])

    def load(self, occurrence_id: str) -> Occurrence | None:
        return self.load_many([occurrence_id])[0]

    def load_many(self, occurrence_ids: Sequence[str]) -> list[Occurrence | None]:
        """`load` for each id, in one round trip; None for one that is gone."""
        if not occurrence_ids:
            return []
        keys = [self.store.key("occurrence", i) for i in occurrence_ids]
        raws = cast(list[str | None], self.store.redis.mget(keys))
        return [
            None if raw is None else _from_record(occurrence_id, json.loads(raw))
            for occurrence_id, raw in zip(occurrence_ids, raws, strict=True)
        ]


def _id(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"oc_{digest[:32]}"


def _facts(
    user_id: str,
    account_id: str,
    user: Any,
    account: Any,
    properties: Any,
) -> Facts:
    return Facts(
        {**dict(user), "id": user_id},
        {**dict(account), "id": account_id},
        dict(properties),
    )


def _to_record(occurrence: Occurrence) -> dict[str, Any]:
    return {
        "kind": occurrence.kind,
        "source": occurrence.source,
        "user_id": occurrence.user_id,
        "account_id": occurrence.account_id,
        "time": occurrence.time.isoformat(),
        "user": dict(occurrence.facts.user),
        "account": dict(occurrence.facts.account),
        "event": dict(occurrence.facts.event),
        **(
            {"step": occurrence.step, "playbook": occurrence.playbook}
            if occurrence.playbook is not None
            else {}
        ),
    }


def _from_record(occurrence_id: str, record: dict[str, Any]) -> Occurrence:
    return Occurrence(
        occurrence_id=occurrence_id,
        kind=record["kind"],
        source=record["source"],
        user_id=record["user_id"],
        account_id=record["account_id"],
        time=datetime.fromisoformat(record["time"]),
        facts=Facts(record["user"], record["account"], record["event"]),
        step=record.get("step", "nudge"),
        playbook=record.get("playbook"),
    )

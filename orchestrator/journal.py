"""The journal: referloop's own events, kept in Redis until the analytics vendor
has them.

The engine notes each nudge sent and each nudge held back (with the guardrail's
reason) in the same round trip that records it in the ledger; an exporter drains
the journal in batches to an `EventSink` (Mixpanel's import) on a schedule. A note
holds the delivery key, the kind and the reason only: the exporter reads the ids
it needs (user, playbook, channel) from the ledger when it builds the events.

Delivery to the sink is at least once: a batch whose export failed stays in the
journal and goes again. The sink dedupes, because each event's insert id derives
from the delivery key and the kind, so a note written twice or a batch sent twice
counts once.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

from redis.client import Pipeline

from integrations.base import EventSink, LoopEvent
from orchestrator.errors import PermanentError
from orchestrator.ledger import GRANTS, Entry, Ledger
from orchestrator.state import Store

logger = logging.getLogger(__name__)

Kind = Literal["sent", "held", "granted"]

# The event names the analytics vendor receives.
EVENT_NAMES: dict[Kind, str] = {
    "sent": "referloop nudge sent",
    "held": "referloop nudge held back",
    "granted": "referloop reward granted",
}
EXPORT_BATCH = 2_000
# Grants are noted by their id, and read from the grants' own book.
GRANT_PREFIX = "gr_"
# The journal never grows past this many notes: with no exporter draining it (the
# sink is down for days), the oldest notes go first.
MAX_NOTES = 1_000_000
EXPORT_LOCK_MS = 120_000


@dataclass(frozen=True)
class Exported:
    """What one export did: events the sink took, events it refused for good, and
    notes left for the next export."""

    taken: int = 0
    refused: int = 0
    left: int = 0


class Journal:
    """Notes of loop events in a Redis list, drained to a sink in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key = store.key("journal")
        self._lock = store.key("journal", "export-lock")

    def note_in(self, pipe: Pipeline, kind: Kind, key: str, reason: str = "") -> None:
        """Queue a note on `pipe`, for its caller to execute with the ledger write."""
        note = json.dumps([kind, key, reason, int(time.time() * 1000)])
        pipe.rpush(self._key, note)
        pipe.ltrim(self._key, -MAX_NOTES, -1)

    def __len__(self) -> int:
        return cast(int, self.store.redis.llen(self._key))

    def export(
        self, ledger: Ledger, sink: EventSink, batch: int | None = None
    ) -> Exported:
        """Send the oldest `batch` notes to `sink` as events; drop them once taken.

        One exporter at a time: another one running says so by returning at once.

        Raises:
            TransientError: the sink could not take the batch now; it stays.
        """
        token = secrets.token_hex(8)
        if not self.store.redis.set(self._lock, token, nx=True, px=EXPORT_LOCK_MS):
            return Exported(left=len(self))
        try:
            return self._export(ledger, sink, batch or EXPORT_BATCH)
        finally:
            if self.store.redis.get(self._lock) == token:
                self.store.redis.delete(self._lock)

    def _export(self, ledger: Ledger, sink: EventSink, batch: int) -> Exported:
        raw = cast(list[str], self.store.redis.lrange(self._key, 0, batch - 1))
        if not raw:
            return Exported()
        notes = [_parse(item) for item in raw]
        keys = [note[1] for note in notes if note is not None]
        grants = [key for key in keys if key.startswith(GRANT_PREFIX)]
        others = [key for key in keys if not key.startswith(GRANT_PREFIX)]
        entries = dict(zip(others, ledger.get_many(others), strict=True))
        if grants:
            book = Ledger(self.store, GRANTS)
            entries |= dict(zip(grants, book.get_many(grants), strict=True))
        events = [
            event
            for note in notes
            if note is not None
            and (event := _event(note, entries.get(note[1]))) is not None
        ]
        refused = len(raw) - len(events)
        if events:
            try:
                sink.record(events)
            except PermanentError as exc:
                logger.warning(
                    "%s refused a batch of %d events for good; dropped: %s",
                    sink.name,
                    len(events),
                    exc,
                )
                refused = len(raw)
        self.store.redis.ltrim(self._key, len(raw), -1)
        return Exported(taken=len(raw) - refused, refused=refused, left=len(self))


def _parse(item: str) -> tuple[Kind, str, str, int] | None:
    try:
        kind, key, reason, at_ms = json.loads(item)
    except (ValueError, TypeError):
        return None
    if kind not in EVENT_NAMES:
        return None
    return kind, str(key), str(reason), int(at_ms)


def _event(note: tuple[Kind, str, str, int], entry: Entry | None) -> LoopEvent | None:
    kind, key, reason, at_ms = note
    if entry is None or not entry.fields.get("user"):
        return None
    fields = entry.fields
    properties: dict[str, str | int | float | bool] = {
        "delivery_key": key,
        "playbook": fields.get("playbook", ""),
        "step": fields.get("step", ""),
        "channel": fields.get("channel", ""),
    }
    if fields.get("account"):
        properties["account_id"] = fields["account"]
    if fields.get("variant"):
        properties["variant"] = fields["variant"]
    if fields.get("trigger"):
        properties["trigger"] = fields["trigger"]
    if fields.get("trigger_ms", "").isdigit():
        properties["trigger_time"] = int(fields["trigger_ms"]) // 1000
    if fields.get("segment"):
        properties["account_segment"] = fields["segment"]
    if reason:
        properties["reason"] = reason
    return LoopEvent(
        insert_id=f"{key}:{kind}",
        name=EVENT_NAMES[kind],
        user_id=fields["user"],
        time=datetime.fromtimestamp(at_ms / 1000, UTC),
        properties=properties,
    )

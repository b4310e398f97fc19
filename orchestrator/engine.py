"""The loop engine: from a trigger occurrence to a delivery, within every guardrail.

Two steps, each run by its own actor:

- `decide`: for each playbook the occurrence fires, open the delivery in the ledger
  and judge it: value gate, conditions, exclusions, re-entry, holdout. What is not
  sent is recorded as held, with the guardrail that held it; what may be sent is
  scheduled for its time (trigger delay, quiet hours, send window), never dropped.
- `deliver`: take the caps, reserve the delivery key, render, send through the
  channel (then its fallbacks), and commit. A vendor that says "later" is retried
  by Dramatiq; one that says "never" hands over to the next channel.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from integrations.base import CohortSource, Member, Rejected, Sender
from orchestrator import guardrails, occurrences, render
from orchestrator.errors import (
    AmbiguousError,
    PermanentError,
    TemplateError,
    TransientError,
)
from orchestrator.keys import delivery_key
from orchestrator.ledger import FINAL, Ledger, Outcome, Reservation
from orchestrator.loader import Catalog, LoadedPlaybook
from orchestrator.model import Playbook, Workspace
from orchestrator.occurrences import Occurrence, Occurrences
from orchestrator.snapshots import Diff, Snapshots
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

STEP = "nudge"
BUSY_RETRY_MS = 5_000
MEMBER_FACTS_TTL_S = 86_400

Schedule = Callable[[str, int], None]


class Retry(Exception):
    """Ask the actor to try this delivery again after `delay_ms`."""

    def __init__(self, delay_ms: int, reason: str) -> None:
        self.delay_ms = delay_ms
        self.reason = reason
        super().__init__(reason)


@dataclass
class Engine:
    """The state and playbooks one worker process decides and delivers with.

    `schedule(delivery_key, delay_ms)` hands a delivery to the deliver step;
    `clock` gives the current time (tests move it).
    """

    store: Store
    catalog: Catalog
    signer: InviteSigner
    channels: Mapping[str, Sender]
    schedule: Schedule
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sources: Mapping[str, CohortSource] = field(default_factory=dict)
    ledger: Ledger = field(init=False)
    occurrences: Occurrences = field(init=False)
    snapshots: Snapshots = field(init=False)
    caps: guardrails.Caps = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.store)
        self.occurrences = Occurrences(self.store)
        self.snapshots = Snapshots(self.store)
        self.caps = guardrails.Caps(self.store)

    @property
    def workspace(self) -> Workspace:
        return self.catalog.workspace

    def cohorts(self) -> dict[str, bool]:
        """Every cohort the playbooks name, and whether it triggers (else it gates)."""
        named: dict[str, bool] = {}
        for loaded in self.catalog.playbooks:
            playbook = loaded.playbook
            gate = playbook.activation or self.workspace.activation
            for cohort in [*playbook.audience.exclude, gate.cohort if gate else None]:
                if cohort is not None:
                    named.setdefault(cohort, False)
            if playbook.trigger.cohort is not None and playbook.enabled:
                named[playbook.trigger.cohort] = True
        return named

    # --- cohorts ----------------------------------------------------------------

    def ingest_page(
        self,
        cohort: str,
        snapshot_id: str,
        page: int,
        members: Sequence[Member | Rejected],
    ) -> list[Rejected]:
        """Stream one page of a cohort into its snapshot; return what was rejected.

        Members' profile fields are kept beside the snapshot for a day, for the
        few who turn out to have entered; repeating a page changes nothing.
        """
        kept = [m for m in members if isinstance(m, Member)]
        facts = self.store.key("member-facts", cohort, snapshot_id)
        if kept:
            records = {m.user_id: json.dumps(_member_record(m)) for m in kept}
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.hset(facts, mapping=records)
            pipe.expire(facts, MEMBER_FACTS_TTL_S)
            pipe.execute()
        self.snapshots.add_page(cohort, snapshot_id, page, [m.user_id for m in kept])
        return [m for m in members if isinstance(m, Rejected)]

    def poll(
        self, cohort: str, snapshot_id: str, decide: Callable[[str], None]
    ) -> Diff | None:
        """Read a cohort from its source as the snapshot `snapshot_id` and diff it.

        The source is chosen by the cohort's vendor (`mixpanel:` and so on), or
        `*` for one that stands in for all.
        """
        vendor = cohort.split(":", 1)[0]
        source = self.sources.get(vendor) or self.sources.get("*")
        if source is None:
            logger.warning("No source reads %s cohorts; %s not polled.", vendor, cohort)
            return None
        for number, page in enumerate(source.cohort_pages(cohort)):
            for rejected in self.ingest_page(cohort, snapshot_id, number, page):
                logger.warning(
                    "Cohort %s: %s %s.", cohort, rejected.where, rejected.reason
                )
        triggers = self.cohorts().get(cohort, False)
        return self.finish_snapshot(cohort, snapshot_id, decide if triggers else None)

    def finish_snapshot(
        self, cohort: str, snapshot_id: str, decide: Callable[[str], None] | None
    ) -> Diff:
        """Diff the snapshot against the last one and decide for each entered user.

        With `decide` None the cohort only gates or excludes: its membership is
        kept and nobody is judged.
        """
        diff = self.snapshots.complete(cohort, snapshot_id)
        facts = self.store.key("member-facts", cohort, snapshot_id)
        at = self.clock()
        batches = self.snapshots.entered(cohort, snapshot_id) if decide else iter(())
        for batch in batches:
            records = cast(list[str | None], self.store.redis.hmget(facts, batch))
            for user_id, record in zip(batch, records, strict=True):
                member = _member_from(user_id, record)
                occurrence = occurrences.from_member(cohort, snapshot_id, member, at)
                if self.occurrences.save(occurrence) and decide is not None:
                    decide(occurrence.occurrence_id)
        self.store.redis.delete(facts)
        self.snapshots.discard(cohort, snapshot_id)
        return diff

    # --- decide ---------------------------------------------------------------

    def decide(self, occurrence_id: str) -> list[str]:
        """Judge every playbook this occurrence fires; return the delivery keys."""
        occurrence = self.occurrences.load(occurrence_id)
        if occurrence is None:
            logger.warning("Occurrence %s is gone; nothing to decide.", occurrence_id)
            return []

        keys = []
        for loaded in self._playbooks_for(occurrence):
            key = self._decide_one(loaded.playbook, occurrence)
            if key is not None:
                keys.append(key)
        return keys

    def _playbooks_for(self, occurrence: Occurrence) -> list[LoadedPlaybook]:
        fired = [
            loaded
            for loaded in self.catalog.playbooks
            if loaded.playbook.enabled
            and loaded.playbook.trigger.source == occurrence.trigger_source
        ]
        return sorted(fired, key=lambda p: (-p.playbook.priority, p.path.name))

    def _decide_one(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        subject = f"user:{occurrence.user_id}"
        key = delivery_key(playbook.id, STEP, subject, occurrence.occurrence_id)
        about = {
            "playbook": playbook.id,
            "step": STEP,
            "user": occurrence.user_id,
            "account": occurrence.account_id,
            "occurrence": occurrence.occurrence_id,
            "channel": playbook.nudge.channel,
        }
        if not self.ledger.open(key, about) and not self._still_open(key):
            return None  # decided before: a redelivered message

        reason = self._held_back(playbook, occurrence)
        if reason is not None:
            self.ledger.hold(key, reason)
            logger.info("Held back delivery %s of %s: %s.", key, playbook.id, reason)
            return key

        self._schedule(key, playbook, occurrence)
        return key

    def _still_open(self, key: str) -> bool:
        """True when an earlier decision opened `key` but was cut off before judging.

        Judging again is safe: a hold is recorded once, and a delivery scheduled
        twice is sent once.
        """
        entry = self.ledger.get(key)
        return entry is not None and entry.outcome == Outcome.SCHEDULED

    def _held_back(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        """The first guardrail that holds this delivery back, as a reason code."""
        user, account = occurrence.facts.user, occurrence.facts.account
        gate = self._value_gate(playbook, occurrence)
        if gate is not None:
            return gate
        if not guardrails.matches(
            playbook.trigger.where, user, account, occurrence.facts.event
        ):
            return "conditions"
        if not guardrails.matches(playbook.audience.account, user, account):
            return "audience"
        excluded = self._excluded(playbook, occurrence)
        if excluded is not None:
            return excluded
        if self._is_reentry(playbook, occurrence):
            return "reentry"
        if guardrails.in_holdout(playbook.id, occurrence.user_id, playbook.holdout):
            return "holdout"
        return None

    def _value_gate(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        gate = playbook.activation or self.workspace.activation
        facts = occurrence.facts
        if gate is None or gate.skip is not None:
            return None
        if gate.cohort is not None:
            member = self.snapshots.is_member(gate.cohort, occurrence.user_id)
            return _unless(member, "not_activated")
        if gate.where is not None:
            met = guardrails.matches(gate.where, facts.user, facts.account, {})
            return _unless(met, "not_activated")
        value = _lookup(gate.property or "", facts.user, facts.account)
        return _unless(value not in (None, "", False, 0), "not_activated")

    def _excluded(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        for cohort in playbook.audience.exclude:
            if self.snapshots.is_member(cohort, occurrence.user_id):
                return f"excluded:{cohort}"
        return None

    def _is_reentry(self, playbook: Playbook, occurrence: Occurrence) -> bool:
        """True when the user was nudged by this playbook too recently to re-enter."""
        rule = playbook.limits.reentry
        if rule.mode == "every_time":
            return False
        last = self.store.redis.get(self._reentry_key(playbook.id, occurrence.user_id))
        if last is None:
            return False
        if rule.mode == "once" or rule.after is None:
            return True
        since = self.clock() - datetime.fromtimestamp(int(str(last)) / 1000, UTC)
        return since < rule.after

    def _schedule(self, key: str, playbook: Playbook, occurrence: Occurrence) -> None:
        now = self.clock()
        due = occurrence.time + (playbook.trigger.delay or timedelta(0))
        when = self._allowed_at(playbook, occurrence, max(now, due))
        delay_ms = max(0, int((when - now).total_seconds() * 1000))
        if delay_ms > 0:
            self.ledger.defer(
                key, int(when.timestamp() * 1000), _defer_reason(due, when)
            )
        self.schedule(key, delay_ms)

    def _allowed_at(
        self, playbook: Playbook, occurrence: Occurrence, earliest: datetime
    ) -> datetime:
        zone = occurrence.facts.user.get("time_zone")
        quiet = playbook.limits.quiet_hours or self.workspace.quiet_hours
        return guardrails.next_allowed(
            earliest,
            str(zone) if zone else None,
            self.workspace.time_zone,
            quiet,
            playbook.limits.send_window,
        )

    # --- deliver --------------------------------------------------------------

    def deliver(self, key: str) -> Outcome:
        """Send one delivery through its channel or fallbacks, once in effect.

        Raises:
            Retry: the vendor asked for time, or another worker holds the key.
        """
        entry = self.ledger.get(key)
        if entry is None:
            logger.warning("Delivery %s has no ledger record; nothing to send.", key)
            return Outcome.HELD
        if entry.outcome in FINAL:
            return Outcome(entry.outcome)
        loaded = self.catalog.get(entry.fields["playbook"])
        occurrence = self.occurrences.load(entry.fields["occurrence"])
        if loaded is None or occurrence is None:
            self.ledger.hold(
                key, "playbook_removed" if loaded is None else "trigger_expired"
            )
            return Outcome.HELD

        playbook = loaded.playbook
        claims = self._claims(playbook, occurrence)
        blocked = self.caps.take(claims, key, _ms(self.clock()))
        if blocked is not None:
            self.ledger.hold(key, _cap_reason(claims, blocked))
            return Outcome.HELD
        return self._send(key, playbook, occurrence, [s for s, _ in claims])

    def _claims(
        self, playbook: Playbook, occurrence: Occurrence
    ) -> list[tuple[str, Sequence[Cap]]]:
        """The caps a delivery claims, in the order of `CAP_SCOPES`."""
        user, account = occurrence.user_id, occurrence.account_id
        shared = self.workspace.caps
        limits = playbook.limits
        return [
            (f"user:{user}", shared.per_user),
            (f"account:{account}", shared.per_account),
            (f"user:{user}:playbook:{playbook.id}", limits.per_user),
            (f"account:{account}:playbook:{playbook.id}", limits.per_account),
        ]

    def _send(
        self, key: str, playbook: Playbook, occurrence: Occurrence, subjects: list[str]
    ) -> Outcome:
        lease = secrets.token_hex(8)
        answer = self.ledger.reserve(key, lease)
        if answer is Reservation.DONE:
            return Outcome.SENT
        if answer is Reservation.BUSY:
            raise Retry(BUSY_RETRY_MS, "another worker holds this delivery")
        if answer is Reservation.ORPHANED and playbook.nudge.on_ambiguous == "hold":
            reason = "an earlier attempt was cut off and may have sent it"
            self.ledger.mark_ambiguous(key, lease, reason)
            logger.warning("Delivery %s may have gone out before a crash; held.", key)
            return Outcome.AMBIGUOUS

        failures: list[str] = []
        for name in playbook.nudge.channels():
            outcome = self._try_channel(
                key, lease, name, playbook, occurrence, failures
            )
            if outcome is not None:
                return outcome
        self.caps.give_back(subjects, key)
        self.ledger.release(key, lease, "; ".join(failures))
        self.ledger.dead(key, "every channel refused: " + "; ".join(failures))
        return Outcome.DEAD

    def _try_channel(
        self,
        key: str,
        lease: str,
        name: str,
        playbook: Playbook,
        occurrence: Occurrence,
        failures: list[str],
    ) -> Outcome | None:
        sender = self.channels.get(name)
        if sender is None:
            failures.append(f"{name}: cannot send from this process")
            return None
        try:
            made = render.render(
                playbook,
                self.workspace,
                occurrence.facts,
                self.signer,
                step=STEP,
                channel_name=name,
                key=key,
                now=self.clock(),
            )
            sent = sender.send(made.nudge)
        except TemplateError as exc:
            failures.append(f"{name}: {exc}")
            return None
        except PermanentError as exc:
            failures.append(f"{name}: refused ({exc.status or 'no status'})")
            logger.warning(
                "Channel %s refused delivery %s; trying the next.", name, key
            )
            return None
        except TransientError as exc:
            self.ledger.release(key, lease, f"{name}: {exc}")
            delay_ms = int((exc.retry_after_s or 0) * 1000)
            raise Retry(delay_ms, f"{name} asked to try later") from exc
        except AmbiguousError as exc:
            return self._ambiguous(key, lease, playbook, name, str(exc))

        vendor_id = sent.vendor_id or ""
        self.ledger.commit(key, lease, channel=name, vendor_id=vendor_id)
        self.store.redis.set(
            self._reentry_key(playbook.id, occurrence.user_id), _ms(self.clock())
        )
        logger.info("Sent delivery %s of %s through %s.", key, playbook.id, name)
        return Outcome.SENT

    def _ambiguous(
        self, key: str, lease: str, playbook: Playbook, name: str, reason: str
    ) -> Outcome:
        if playbook.nudge.on_ambiguous == "resend":
            self.ledger.release(key, lease, f"{name}: unsure, resending: {reason}")
            raise Retry(0, f"{name} may not have taken it; the playbook resends")
        self.ledger.mark_ambiguous(key, lease, f"{name}: {reason}")
        logger.warning("Delivery %s may or may not have gone out; held.", key)
        return Outcome.AMBIGUOUS

    def bury(self, key: str, reason: str) -> None:
        """Give up on a delivery: dead letter, with its caps given back."""
        entry = self.ledger.get(key)
        loaded = self.catalog.get(entry.fields.get("playbook", "")) if entry else None
        occurrence = (
            self.occurrences.load(entry.fields.get("occurrence", "")) if entry else None
        )
        if loaded is not None and occurrence is not None:
            subjects = [s for s, _ in self._claims(loaded.playbook, occurrence)]
            self.caps.give_back(subjects, key)
        self.ledger.dead(key, reason)

    def _reentry_key(self, playbook_id: str, user_id: str) -> str:
        return self.store.key("reentry", playbook_id, user_id)


CAP_SCOPES = ("workspace_per_user", "workspace_per_account", "per_user", "per_account")


def _cap_reason(claims: Sequence[tuple[str, Sequence[Cap]]], blocked: Cap) -> str:
    """`cap:per_user:1 per 14d`: which of the claims of `Engine._claims` held it."""
    for scope, (_, caps) in zip(CAP_SCOPES, claims, strict=True):
        if blocked in caps:
            return guardrails.cap_reason(scope, blocked)
    return guardrails.cap_reason("cap", blocked)


def _member_record(member: Member) -> dict[str, Any]:
    return {
        "account_id": member.account_id,
        "user": dict(member.user),
        "account": dict(member.account),
    }


def _member_from(user_id: str, record: str | None) -> Member:
    data = json.loads(record) if record else {}
    return Member(
        user_id=user_id,
        account_id=data.get("account_id"),
        user=data.get("user", {}),
        account=data.get("account", {}),
    )


def _unless(condition: bool, reason: str) -> str | None:
    return None if condition else reason


def _lookup(path: str, user: Mapping[str, Any], account: Mapping[str, Any]) -> Any:
    scope, _, name = path.partition(".")
    source = user if scope == "user" else account
    return source.get(name)


def _defer_reason(due: datetime, when: datetime) -> str:
    return "delay" if when == due else "quiet_hours_or_window"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)

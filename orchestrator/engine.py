"""The loop engine: from a trigger occurrence to a delivery, within every guardrail.

Two steps, each run by its own actor:

- `decide`: for each playbook the occurrence fires, open the delivery in the ledger
  and judge it: value gate, conditions, exclusions, re-entry, holdout. What is not
  sent is recorded as held, with the guardrail that held it; what may be sent is
  scheduled for its time (trigger delay, quiet hours, send window), never dropped.
- `deliver`: take the caps, reserve the delivery key, render, send through the
  channel (then its fallbacks), and commit. A vendor that says "later" is retried
  by Dramatiq; one that says "never" hands over to the next channel.

Both steps take batches (`decide_many`, `deliver_many`): each phase of a batch is
one Redis round trip, while every delivery keeps its own scripts, so its caps,
lease and outcome are as atomic as when it goes alone.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.client import Pipeline

from integrations.base import (
    CohortSource,
    EventSink,
    Member,
    ProductEvent,
    Rejected,
    RewardTarget,
    Sender,
    Sent,
)
from orchestrator import guardrails, occurrences, render
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TemplateError,
    TransientError,
)
from orchestrator.journal import Exported, Journal, Kind
from orchestrator.keys import delivery_key
from orchestrator.ledger import FINAL, LEASE_MS, Entry, Ledger, Outcome, Reservation
from orchestrator.loader import Catalog, LoadedPlaybook
from orchestrator.loop import Loop
from orchestrator.model import Playbook, Workspace
from orchestrator.occurrences import Occurrence, Occurrences
from orchestrator.snapshots import Change, Diff, Snapshots
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

STEP = "nudge"
# Reasons of the engine's own; the guardrails module names the rest.
CONDITIONS = "conditions"
AUDIENCE = "audience"
DELAY = "delay"
BUSY_RETRY_MS = 5_000
MEMBER_FACTS_TTL_S = 86_400

# Deliveries are handed on in chunks as large as this; the chunk that reserves,
# sends and commits together is sized to send in CHUNK_BUDGET_MS, a quarter of
# a lease, so each lease outlives the sends it covers.
CHUNK_MAX = 100
CHUNK_BUDGET_MS = LEASE_MS // 4
# A deliver message stops sending after this, half its actor's time limit.
BATCH_BUDGET_MS = 60_000

Schedule = Callable[[list[str], int], None]


class Retry(Exception):
    """Ask the actor to try this delivery again after `delay_ms`.

    `counts` says whether this was a failed attempt. Waiting because a vendor
    asked for time (a 429, a budget used up for now), because another worker
    holds the key, or because the batch ran out of time is not a failure: it
    must not use up the retries that protect against a vendor that keeps failing.
    """

    def __init__(self, delay_ms: int, reason: str, *, counts: bool = True) -> None:
        self.delay_ms = delay_ms
        self.reason = reason
        self.counts = counts
        super().__init__(reason)


@dataclass
class Engine:
    """The state and playbooks one worker process decides and delivers with.

    `schedule(delivery_keys, delay_ms)` hands deliveries to the deliver step;
    `clock` gives the current time (tests move it).
    """

    store: Store
    catalog: Catalog
    signer: InviteSigner
    channels: Mapping[str, Sender]
    schedule: Schedule
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sources: Mapping[str, CohortSource] = field(default_factory=dict)
    journal: Journal | None = None
    sink: EventSink | None = None
    rewards_target: RewardTarget | None = None
    ledger: Ledger = field(init=False)
    occurrences: Occurrences = field(init=False)
    snapshots: Snapshots = field(init=False)
    caps: guardrails.Caps = field(init=False)
    loop: Loop = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.store)
        self.occurrences = Occurrences(self.store)
        self.snapshots = Snapshots(self.store)
        self.caps = guardrails.Caps(self.store)
        self.loop = Loop(
            self.store,
            self.signer,
            lambda: self.catalog,
            self.ledger,
            self.occurrences,
            self._reentry_key,
            target=self.rewards_target,
            journal=self.journal,
        )

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
        self, cohort: str, snapshot_id: str, decide: Callable[[list[str]], None]
    ) -> Diff | None:
        """Read a cohort from its source as the snapshot `snapshot_id` and diff it.

        The source is chosen by the cohort's vendor (`mixpanel:` and so on), or
        `*` for one that stands in for all.
        """
        rejected = self.read_cohort(cohort, snapshot_id)
        if rejected is None:
            return None
        for record in rejected:
            logger.warning("Cohort %s: %s %s.", cohort, record.where, record.reason)
        triggers = self.cohorts().get(cohort, False)
        return self.finish_snapshot(cohort, snapshot_id, decide if triggers else None)

    def read_cohort(self, cohort: str, snapshot_id: str) -> list[Rejected] | None:
        """Stream a cohort from its source into a snapshot; what it rejected, or
        None when no source reads this cohort's vendor."""
        vendor = cohort.split(":", 1)[0]
        source = self.sources.get(vendor) or self.sources.get("*")
        if source is None:
            logger.warning("No source reads %s cohorts; %s not polled.", vendor, cohort)
            return None
        rejected: list[Rejected] = []
        for number, page in enumerate(source.cohort_pages(cohort)):
            rejected += self.ingest_page(cohort, snapshot_id, number, page)
        return rejected

    def finish_snapshot(
        self,
        cohort: str,
        snapshot_id: str,
        decide: Callable[[list[str]], None] | None,
    ) -> Diff:
        """Diff the snapshot against the last one and decide for each entered user.

        `decide` is given the occurrence ids a batch of entered users fired. With
        `decide` None the cohort only gates or excludes: its membership is kept
        and nobody is judged.
        """
        diff = self.snapshots.complete(cohort, snapshot_id)
        facts = self.store.key("member-facts", cohort, snapshot_id)
        at = self.clock()
        batches = self.snapshots.entered(cohort, snapshot_id) if decide else iter(())
        for batch in batches:
            records = cast(list[str | None], self.store.redis.hmget(facts, batch))
            fired = []
            for user_id, record in zip(batch, records, strict=True):
                member = _member_from(user_id, record)
                occurrence = occurrences.from_member(cohort, snapshot_id, member, at)
                if self.occurrences.save(occurrence):
                    fired.append(occurrence.occurrence_id)
            if fired and decide is not None:
                decide(fired)
        self.store.redis.delete(facts)
        self.snapshots.discard(cohort, snapshot_id)
        return diff

    def ingest_events(
        self, events: Sequence[ProductEvent], decide: Callable[[list[str]], None]
    ) -> None:
        """Keep product events as occurrences and hand them to `decide`.

        An event is kept once by its id; one reported again is handed on again,
        which decides nothing twice (delivery keys are kept once), so a request
        retried after a lost answer loses nothing and repeats nothing.
        """
        found = [occurrences.from_event(event) for event in events]
        self.occurrences.save_many(found)
        ids = [occurrence.occurrence_id for occurrence in found]
        if ids:
            decide(ids)

    def apply_push(
        self,
        cohort: str,
        push_id: str,
        action: str,
        page: int,
        members: Sequence[Member | Rejected],
        decide: Callable[[list[str]], None],
    ) -> list[Rejected]:
        """Apply one page a vendor pushed about a cohort; return what it rejected.

        `members` pages make up the snapshot `push_id` (complete it with
        `finish_snapshot` after the last page); `add_members` are users who
        entered, judged at once when the cohort triggers; `remove_members` left.
        A page pushed again, or a push restarted from the top, changes nothing
        more: snapshot pages are kept once, and an entered user is judged once
        (its occurrence id, then its delivery key, are kept once).
        """
        kept = [m for m in members if isinstance(m, Member)]
        rejected = [m for m in members if isinstance(m, Rejected)]
        if action == "members":
            return self.ingest_page(cohort, push_id, page, members)
        if action == "remove_members":
            self.snapshots.remove_members(cohort, [m.user_id for m in kept])
            return rejected
        self.snapshots.add_members(cohort, [m.user_id for m in kept])
        if not kept or not self.cohorts().get(cohort, False):
            return rejected
        # Every member of the page is handed on, even when the page came before:
        # a page retried after a crash between saving and deciding must not lose
        # its users, and occurrence ids and the ledger make a repeat harmless.
        at = self.clock()
        fired = []
        for member in kept:
            occurrence = occurrences.from_member(cohort, push_id, member, at)
            self.occurrences.save(occurrence)
            fired.append(occurrence.occurrence_id)
        decide(fired)
        return rejected

    def apply_change(
        self,
        cohort: str,
        change_id: str,
        *,
        entered: bool,
        computed_ms: int,
        members: Sequence[Member | Rejected],
        decide: Callable[[list[str]], None],
    ) -> Change:
        """Apply a change a vendor pushed: these users entered, or left, the cohort.

        Unlike `apply_push`, a change carries its own id and the time it was
        computed (Amplitude's Cohort Webhook). Only users it moves are judged:
        a user reported entering again, by the same change or a new one, fires
        nothing new. The same change applied again hands its users on again,
        with the same occurrence ids, so a change whose decisions were lost to
        a crash is finished and one already decided changes nothing.
        """
        kept = {m.user_id: m for m in members if isinstance(m, Member)}
        change = self.snapshots.apply_change(
            cohort,
            change_id,
            entered=entered,
            computed_ms=computed_ms,
            user_ids=list(kept),
        )
        if not entered or not change.moved or not self.cohorts().get(cohort, False):
            return change

        at = self.clock()
        found = [
            occurrences.from_member(
                cohort, change_id, kept.get(user_id) or Member(user_id), at
            )
            for user_id in change.moved
        ]
        self.occurrences.save_many(found)
        decide([occurrence.occurrence_id for occurrence in found])
        return change

    # --- decide ---------------------------------------------------------------

    def decide(self, occurrence_id: str) -> list[str]:
        """Judge every playbook this occurrence fires; return the delivery keys."""
        return self.decide_many([occurrence_id])

    def decide_many(self, occurrence_ids: Sequence[str]) -> list[str]:
        """Judge every playbook each occurrence fires; return the delivery keys.

        The batch costs a few round trips, not a few per occurrence. The
        deliveries due now go to the deliver step together; deferred ones alone.
        """
        loaded = self.occurrences.load_many(occurrence_ids)
        for occurrence_id, occurrence in zip(occurrence_ids, loaded, strict=True):
            if occurrence is None:
                logger.warning(
                    "Occurrence %s is gone; nothing to decide.", occurrence_id
                )
        found = [occurrence for occurrence in loaded if occurrence is not None]
        follow_ups = self.loop.follow(found)
        fired = self._fired([*found, *follow_ups])
        opened = self._open(fired)
        lasts = self._last_sent(opened)

        due: list[str] = []
        later: list[tuple[str, int]] = []
        pipe = self.store.redis.pipeline(transaction=False)
        for (key, playbook, occurrence), last in zip(opened, lasts, strict=True):
            reason = self._held_back(playbook, occurrence, last)
            if reason is not None:
                self.ledger.hold(key, reason, pipe)
                self._note(pipe, "held", key, reason)
                logger.info(
                    "Held back delivery %s of %s: %s.", key, playbook.id, reason
                )
                continue
            delay_ms = self._defer(key, playbook, occurrence, pipe)
            if delay_ms > 0:
                later.append((key, delay_ms))
            else:
                due.append(key)
        pipe.execute()

        if due:
            self.schedule(due, 0)
        for key, delay_ms in later:
            self.schedule([key], delay_ms)
        return [key for key, _, _ in opened]

    def _fired(self, found: Sequence[Occurrence]) -> list[tuple[Playbook, Occurrence]]:
        """Each (playbook, occurrence) to judge, by occurrence then priority."""
        fired = []
        for occurrence in found:
            for playbook in self._playbooks_for(occurrence):
                fired.append((playbook.playbook, occurrence))
        return fired

    def _playbooks_for(self, occurrence: Occurrence) -> list[LoadedPlaybook]:
        if occurrence.playbook is not None:
            # A reinforcement: one step of one playbook, while it still has it.
            loaded = self.catalog.get(occurrence.playbook)
            if loaded is None or not loaded.playbook.enabled:
                return []
            has_step = occurrence.step in render.steps(loaded.playbook)
            return [loaded] if has_step else []
        fired = [
            loaded
            for loaded in self.catalog.playbooks
            if loaded.playbook.enabled
            and loaded.playbook.trigger.source == occurrence.trigger_source
        ]
        return sorted(fired, key=lambda p: (-p.playbook.priority, p.path.name))

    def _open(
        self, fired: list[tuple[Playbook, Occurrence]]
    ) -> list[tuple[str, Playbook, Occurrence]]:
        """Open each delivery in the ledger; keep those still to be judged.

        A delivery opened before is judged again only while it is still
        scheduled: an earlier decision was cut off before judging it. Judging
        again is safe: a hold is recorded once, and a delivery scheduled twice is
        sent once. One decided before is a redelivered message: left alone.
        """
        keyed = [(_key_of(p, o), p, o) for p, o in fired]
        segment = self.workspace.metrics.segment_property
        abouts = [(key, _about(p, o, segment)) for key, p, o in keyed]
        opened = self.ledger.open_many(abouts) if abouts else []

        again = [key for (key, _, _), new in zip(keyed, opened, strict=True) if not new]
        entries = dict(zip(again, self.ledger.get_many(again), strict=True))
        return [
            item
            for item, new in zip(keyed, opened, strict=True)
            if new or _is_scheduled(entries[item[0]])
        ]

    def _last_sent(
        self, opened: list[tuple[str, Playbook, Occurrence]]
    ) -> list[str | None]:
        """When each user was last nudged by each playbook (ms), where re-entry asks."""
        wanted = [
            i
            for i, (_, playbook, _) in enumerate(opened)
            if playbook.limits.reentry.mode != "every_time"
        ]
        lasts: list[str | None] = [None] * len(opened)
        if not wanted:
            return lasts
        keys = [
            self._reentry_key(opened[i][1].id, opened[i][2].user_id) for i in wanted
        ]
        values = cast(list[str | None], self.store.redis.mget(keys))
        for i, value in zip(wanted, values, strict=True):
            lasts[i] = value
        return lasts

    def _held_back(
        self, playbook: Playbook, occurrence: Occurrence, last_sent: str | None
    ) -> str | None:
        """The first guardrail that holds this delivery back, as a reason code.

        A reinforcement follows up a user already in the loop: the trigger's
        conditions, re-entry and holdout judged them when they entered; the
        audience and exclusions still apply, as do caps and clock at delivery.
        """
        user, account = occurrence.facts.user, occurrence.facts.account
        if occurrence.step != STEP:
            if not guardrails.matches(playbook.audience.account, user, account):
                return AUDIENCE
            return self._excluded(playbook, occurrence)
        gate = self._value_gate(playbook, occurrence)
        if gate is not None:
            return gate
        if not guardrails.matches(
            playbook.trigger.where, user, account, occurrence.facts.event
        ):
            return CONDITIONS
        if not guardrails.matches(playbook.audience.account, user, account):
            return AUDIENCE
        excluded = self._excluded(playbook, occurrence)
        if excluded is not None:
            return excluded
        if self._is_reentry(playbook, last_sent):
            return guardrails.REENTRY
        if guardrails.in_holdout(playbook.id, occurrence.user_id, playbook.holdout):
            return guardrails.HOLDOUT
        return None

    def _value_gate(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        gate = playbook.activation or self.workspace.activation
        facts = occurrence.facts
        if gate is None or gate.skip is not None:
            return None
        if gate.cohort is not None:
            member = self.snapshots.is_member(gate.cohort, occurrence.user_id)
            return _unless(member, guardrails.NOT_ACTIVATED)
        if gate.where is not None:
            met = guardrails.matches(gate.where, facts.user, facts.account, {})
            return _unless(met, guardrails.NOT_ACTIVATED)
        value = _lookup(gate.property or "", facts.user, facts.account)
        return _unless(value not in (None, "", False, 0), guardrails.NOT_ACTIVATED)

    def _excluded(self, playbook: Playbook, occurrence: Occurrence) -> str | None:
        for cohort in playbook.audience.exclude:
            if self.snapshots.is_member(cohort, occurrence.user_id):
                return guardrails.excluded_reason(cohort)
        return None

    def _is_reentry(self, playbook: Playbook, last_sent: str | None) -> bool:
        """True when the user was nudged by this playbook too recently to re-enter."""
        rule = playbook.limits.reentry
        if rule.mode == "every_time" or last_sent is None:
            return False
        if rule.mode == "once" or rule.after is None:
            return True
        since = self.clock() - datetime.fromtimestamp(int(last_sent) / 1000, UTC)
        return since < rule.after

    def _defer(
        self, key: str, playbook: Playbook, occurrence: Occurrence, pipe: Pipeline
    ) -> int:
        """The ms until the delivery may go; a wait is recorded as a deferral."""
        now = self.clock()
        delay = _step_delay(playbook, occurrence.step) or timedelta(0)
        earliest = max(now, occurrence.time + delay)
        verdict = self._clock_verdict(playbook, occurrence, earliest)
        when = verdict.until or earliest
        delay_ms = max(0, int((when - now).total_seconds() * 1000))
        if delay_ms > 0:
            reason = verdict.reason or DELAY
            self.ledger.defer(key, _ms(when), reason, pipe)
        return delay_ms

    def _clock_verdict(
        self, playbook: Playbook, occurrence: Occurrence, earliest: datetime
    ) -> guardrails.Verdict:
        """Send at `earliest`, or defer for quiet hours or the send window."""
        zone = occurrence.facts.user.get("time_zone")
        quiet = playbook.limits.quiet_hours or self.workspace.quiet_hours
        return guardrails.clock_verdict(
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
        result = self.deliver_many([key])[key]
        if isinstance(result, Retry):
            raise result
        return result

    def deliver_many(self, keys: Sequence[str]) -> dict[str, Outcome | Retry]:
        """Send each delivery as `deliver` does; a Retry is returned, not raised.

        Each key keeps its own fate: one that must wait says so with its Retry,
        and the others are settled. Reads, caps, reservations and commits go in
        one round trip per phase for the whole batch.
        """
        unique = list(dict.fromkeys(keys))
        results: dict[str, Outcome | Retry] = {}
        ready = self._ready(unique, results)
        claimed = self._take_caps(ready, results)
        self._send_in_chunks(claimed, results)
        return {key: results[key] for key in unique}

    def _ready(
        self, keys: list[str], results: dict[str, Outcome | Retry]
    ) -> list[tuple[str, Playbook, Occurrence]]:
        """The deliveries still to send, with their playbook and occurrence."""
        entries = self.ledger.get_many(keys) if keys else []
        waiting: list[Entry] = []
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                logger.warning(
                    "Delivery %s has no ledger record; nothing to send.", key
                )
                results[key] = Outcome.HELD
            elif entry.outcome in FINAL:
                results[key] = Outcome(entry.outcome)
            else:
                waiting.append(entry)

        ids = [entry.fields["occurrence"] for entry in waiting]
        found = self.occurrences.load_many(ids)
        ready = []
        for entry, occurrence in zip(waiting, found, strict=True):
            loaded = self.catalog.get(entry.fields["playbook"])
            if (
                loaded is None
                or occurrence is None
                or occurrence.step not in render.steps(loaded.playbook)
            ):
                gone = (
                    "playbook_removed"
                    if loaded is None
                    else "trigger_expired"
                    if occurrence is None
                    else "step_removed"
                )
                self.ledger.hold(entry.delivery_key, gone)
                results[entry.delivery_key] = Outcome.HELD
                continue
            ready.append((entry.delivery_key, loaded.playbook, occurrence))
        return ready

    def _take_caps(
        self,
        ready: list[tuple[str, Playbook, Occurrence]],
        results: dict[str, Outcome | Retry],
    ) -> list[tuple[str, Playbook, Occurrence]]:
        """Take each delivery's caps, each all or none; hold those a cap blocks."""
        if not ready:
            return []
        claims = [
            self._claims(playbook, occurrence) for _, playbook, occurrence in ready
        ]
        takes = [(c, key) for c, (key, _, _) in zip(claims, ready, strict=True)]
        blocked = self.caps.take_many(takes, _ms(self.clock()))

        claimed = []
        pipe = self.store.redis.pipeline(transaction=False)
        for item, claim, cap in zip(ready, claims, blocked, strict=True):
            if cap is None:
                claimed.append(item)
                continue
            reason = _cap_reason(claim, cap)
            self.ledger.hold(item[0], reason, pipe)
            self._note(pipe, "held", item[0], reason)
            results[item[0]] = Outcome.HELD
        pipe.execute()
        return claimed

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

    def _send_in_chunks(
        self,
        claimed: list[tuple[str, Playbook, Occurrence]],
        results: dict[str, Outcome | Retry],
    ) -> None:
        """Reserve, send and commit in chunks sized to send well within a lease.

        The first chunk is one delivery; its pace sizes the next, so a slow
        vendor gets small chunks and every lease outlives the sends it covers.
        A batch that runs past BATCH_BUDGET_MS stops there: the deliveries it
        did not reach are returned to wait, well inside the actor's time limit.
        """
        size, at = 1, 0
        began = time.monotonic()
        while at < len(claimed):
            if _elapsed_ms(began) > BATCH_BUDGET_MS:
                for key, _, _ in claimed[at:]:
                    results[key] = Retry(
                        0, "its batch ran out of time before it", counts=False
                    )
                return
            chunk = claimed[at : at + size]
            started = time.monotonic()
            self._send_chunk(chunk, results, started)
            each_ms = _elapsed_ms(started) / len(chunk)
            size = max(1, min(CHUNK_MAX, int(CHUNK_BUDGET_MS / max(each_ms, 0.01))))
            at += len(chunk)

    def _send_chunk(
        self,
        chunk: list[tuple[str, Playbook, Occurrence]],
        results: dict[str, Outcome | Retry],
        started: float,
    ) -> None:
        leases = [(key, secrets.token_hex(8)) for key, _, _ in chunk]
        answers = self.ledger.reserve_many(leases)

        sent: list[tuple[str, str, Playbook, Occurrence, str, Sent]] = []
        try:
            for (key, playbook, occurrence), (_, lease), answer in zip(
                chunk, leases, answers, strict=True
            ):
                late = _elapsed_ms(started) > LEASE_MS / 2
                try:
                    result = self._after_reserve(
                        key, lease, answer, playbook, occurrence, late
                    )
                except Retry as retry:
                    results[key] = retry
                    continue
                if isinstance(result, Outcome):
                    results[key] = result
                    continue
                sent.append((key, lease, playbook, occurrence, *result))
                results[key] = Outcome.SENT
        finally:
            # Even when something unexpected stops the chunk, what went out is
            # recorded: an uncommitted send would later look ambiguous.
            self._commit(sent)

    def _after_reserve(
        self,
        key: str,
        lease: str,
        answer: Reservation,
        playbook: Playbook,
        occurrence: Occurrence,
        late: bool,
    ) -> Outcome | tuple[str, Sent]:
        """Act on a reservation; a send to commit is returned as (channel, Sent)."""
        if answer is Reservation.DONE:
            return Outcome.SENT
        if answer is Reservation.BUSY:
            raise Retry(
                BUSY_RETRY_MS, "another worker holds this delivery", counts=False
            )
        nudge = render.nudge_of(playbook, occurrence.step)
        if answer is Reservation.ORPHANED and nudge.on_ambiguous == "hold":
            reason = "an earlier attempt was cut off and may have sent it"
            self.ledger.mark_ambiguous(key, lease, reason)
            logger.warning("Delivery %s may have gone out before a crash; held.", key)
            return Outcome.AMBIGUOUS
        if late:
            # The batch ran slow: send nothing on a lease that may lapse mid-send.
            self.ledger.release(key, lease, "its batch ran past half the lease")
            raise Retry(0, "its batch ran past half the lease", counts=False)
        return self._through_channels(key, lease, playbook, occurrence)

    def _through_channels(
        self, key: str, lease: str, playbook: Playbook, occurrence: Occurrence
    ) -> Outcome | tuple[str, Sent]:
        failures: list[str] = []
        for name in render.nudge_of(playbook, occurrence.step).channels():
            outcome = self._try_channel(
                key, lease, name, playbook, occurrence, failures
            )
            if outcome is not None:
                return outcome
        subjects = [s for s, _ in self._claims(playbook, occurrence)]
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
    ) -> Outcome | tuple[str, Sent] | None:
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
                step=occurrence.step,
                channel_name=name,
                key=key,
                now=self.clock(),
            )
            sent = sender.send(made.nudge)
        except (TemplateError, ConfigurationError) as exc:
            # Nothing was sent: the nudge could not be made, or this channel is
            # not set up for this kind of send. The next channel may do better.
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
            asked = exc.retry_after_s is not None
            delay_ms = int((exc.retry_after_s or 0) * 1000)
            reason = f"{name} asked to wait" if asked else f"{name} failed for now"
            raise Retry(delay_ms, reason, counts=not asked) from exc
        except AmbiguousError as exc:
            nudge = render.nudge_of(playbook, occurrence.step)
            return self._ambiguous(key, lease, nudge.on_ambiguous, name, str(exc))
        return name, sent

    def _commit(
        self, sent: list[tuple[str, str, Playbook, Occurrence, str, Sent]]
    ) -> None:
        """Record the sends of a chunk and mark their re-entry, in one round trip."""
        if not sent:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        now_ms = _ms(self.clock())
        commits = []
        for key, lease, playbook, occurrence, name, made in sent:
            vendor_id = made.vendor_id or ""
            commits.append(len(pipe))
            self.ledger.commit_in(pipe, key, lease, channel=name, vendor_id=vendor_id)
            self._note(pipe, "sent", key)
            if occurrence.step == STEP:
                pipe.set(self._reentry_key(playbook.id, occurrence.user_id), now_ms)
        answers = pipe.execute()

        for (key, _, playbook, _, name, _), answer in zip(
            sent, [answers[at] for at in commits], strict=True
        ):
            self.ledger.settled(key, Outcome.SENT, answer)
            logger.info("Sent delivery %s of %s through %s.", key, playbook.id, name)

    def _note(self, pipe: Pipeline, kind: Kind, key: str, reason: str = "") -> None:
        if self.journal is not None:
            self.journal.note_in(pipe, kind, key, reason)

    def _ambiguous(
        self, key: str, lease: str, on_ambiguous: str, name: str, reason: str
    ) -> Outcome:
        if on_ambiguous == "resend":
            self.ledger.release(key, lease, f"{name}: unsure, resending: {reason}")
            raise Retry(0, f"{name} may not have taken it; the playbook resends")
        self.ledger.mark_ambiguous(key, lease, f"{name}: {reason}")
        logger.warning("Delivery %s may or may not have gone out; held.", key)
        return Outcome.AMBIGUOUS

    def export_journal(self, for_ms: int = 0) -> Exported | None:
        """Send the oldest loop events to the analytics sink; None without one.

        One batch, or batch after batch until the journal is empty or `for_ms`
        have passed. Returns what the whole run did.

        Raises:
            TransientError: the sink could not take them now; they stay.
        """
        if self.journal is None or self.sink is None:
            return None
        began = time.monotonic()
        exported = self.journal.export(self.ledger, self.sink)
        while exported.left and exported.taken + exported.refused:
            if _elapsed_ms(began) >= for_ms:
                break
            more = self.journal.export(self.ledger, self.sink)
            exported = Exported(
                taken=exported.taken + more.taken,
                refused=exported.refused + more.refused,
                left=more.left,
            )
            if not more.taken + more.refused:
                break
        if exported.taken or exported.refused:
            logger.info(
                "Exported %d loop events to %s (%d refused, %d left).",
                exported.taken,
                self.sink.name,
                exported.refused,
                exported.left,
            )
        return exported

    def bury(self, key: str, reason: str) -> None:
        """Give up on a delivery: dead letter, with its caps given back.

        A delivery already final is left as it is: a batch whose retries ran out
        may hold keys that an earlier attempt sent.
        """
        entry = self.ledger.get(key)
        if entry is not None and entry.outcome in FINAL:
            return
        loaded = self.catalog.get(entry.fields.get("playbook", "")) if entry else None
        occurrence = (
            self.occurrences.load(entry.fields.get("occurrence", "")) if entry else None
        )
        if loaded is not None and occurrence is not None:
            subjects = [s for s, _ in self._claims(loaded.playbook, occurrence)]
            self.caps.give_back(subjects, key)
        self.ledger.dead(key, reason)

    # --- rewards ----------------------------------------------------------------

    def grants_due(self) -> list[str]:
        """Judge the grants whose hold has ended; return those to give now."""
        return self.loop.grants_due(_ms(self.clock()))

    def give(self, grant_id: str) -> list[str]:
        """Give one grant; return the occurrences its `reward_granted` fires.

        Raises:
            GrantRetry: the reward target is down, asked for time, or not set up.
        """
        outcome = self.loop.rewards.give(grant_id)
        if outcome is not Outcome.SENT:
            return []
        return [o.occurrence_id for o in self.loop.after_grant(grant_id)]

    def _reentry_key(self, playbook_id: str, user_id: str) -> str:
        return self.store.key("reentry", playbook_id, user_id)


# A segment is a label (a plan, a size band): a long one is cut, not kept whole.
MAX_SEGMENT_CHARS = 64
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


def _key_of(playbook: Playbook, occurrence: Occurrence) -> str:
    subject = f"user:{occurrence.user_id}"
    return delivery_key(playbook.id, occurrence.step, subject, occurrence.occurrence_id)


def _step_delay(playbook: Playbook, step: str) -> timedelta | None:
    if step == STEP:
        return playbook.trigger.delay
    for reinforcement in playbook.reinforcement:
        if step == f"reinforcement:{reinforcement.on}":
            return reinforcement.delay
    return None


def _about(
    playbook: Playbook, occurrence: Occurrence, segment_property: str
) -> dict[str, str]:
    """What the ledger record says of a delivery: ids, what triggered it and when,
    and the account's segment (a plan or a size band, never a person's data)."""
    nudge = render.nudge_of(playbook, occurrence.step)
    about = {
        "playbook": playbook.id,
        "step": occurrence.step,
        "user": occurrence.user_id,
        "account": occurrence.account_id,
        "occurrence": occurrence.occurrence_id,
        "channel": nudge.channel,
        "variant": nudge.variant,
        "trigger": occurrence.kind,
        "trigger_ms": str(_ms(occurrence.time)),
    }
    segment = occurrence.facts.account.get(segment_property)
    if isinstance(segment, str | int | float) and not isinstance(segment, bool):
        about["segment"] = str(segment)[:MAX_SEGMENT_CHARS]
    return about


def _is_scheduled(entry: Entry | None) -> bool:
    return entry is not None and entry.outcome == Outcome.SCHEDULED


def _unless(condition: bool, reason: str) -> str | None:
    return None if condition else reason


def _lookup(path: str, user: Mapping[str, Any], account: Mapping[str, Any]) -> Any:
    scope, _, name = path.partition(".")
    source = user if scope == "user" else account
    return source.get(name)


def _elapsed_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)

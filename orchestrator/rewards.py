"""Rewards: earned on a credited invite, held, checked, approved, granted once.

A grant goes through these states, each recorded in the grants ledger (the same
reserve, send, commit as a delivery, in a book of its own) with its reason:

    earned ──hold──> due ──(manual: awaiting approval)──> granting ──> granted
       └─> refused (fraud, caps), revoked, rejected            └─> dead

- **Earned** on the event the playbook names (`earned_on`), for the referrer and
  the invitee the playbook rewards: one grant per party, playbook and invitee,
  whatever replays. A credit refused (a self-invite, an existing member, an
  invitee already credited to someone else) records the grant as refused, with
  the reason, so the marketer sees what the policy stopped.
- **Held** for the playbook's `hold`, then judged when due: a credit revoked in
  the meantime (invitee removed, invite reversed) is not paid; a referrer whose
  invitees mostly never activate is farming, and is not paid; the caps per
  referrer and per account are taken last, only for grants about to be given.
- **Approved** by someone (`referloop rewards approve`) when the playbook asks
  for manual approval; until then it waits among the pending grants.
- **Granted** through the reward target (the product's entitlement API by signed
  webhook, or an attribute update in Customer.io or Braze), with the grant id as
  the idempotency key: a grant whose answer was lost is sent again and applied
  once. It is retried until the target acknowledges it.

The clock enqueues `grants_due` every minute; the `grant` actor gives one grant.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, cast

from integrations.base import GrantRequest, RewardTarget, Sent
from orchestrator import guardrails
from orchestrator.attribution import INVITE_ACCEPTED, INVITEE_ACTIVATED, Credit
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
)
from orchestrator.ledger import FINAL, GRANTS, Entry, Ledger, Outcome, Reservation
from orchestrator.model import Grant, Playbook, Reward, RewardPolicy
from orchestrator.state import Store
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

Party = Literal["referrer", "invitee"]
EARNED_ON = {
    "invitee_accepted": INVITE_ACCEPTED,
    "invitee_activated": INVITEE_ACTIVATED,
}

ON_HOLD = "on_hold"
AWAITING_APPROVAL = "awaiting_approval"
FARMING = "fraud:farming"
NOT_CONFIGURED_RETRY_MS = 15 * 60_000
BUSY_RETRY_MS = 5_000
DUE_BATCH = 500
DUE_LOCK_MS = 55_000
MAX_NOTE_CHARS = 200


class GrantRetry(Exception):
    """Try this grant again after `delay_ms`; `counts` as with a delivery."""

    def __init__(self, delay_ms: int, reason: str, *, counts: bool = True) -> None:
        self.delay_ms = delay_ms
        self.reason = reason
        self.counts = counts
        super().__init__(reason)


def grant_id(playbook: str, party: Party, invitee: str) -> str:
    """One grant per playbook, party and invitee: replays find the same id."""
    parts = ("grant", playbook, party, invitee)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"gr_{digest[:32]}"


class Rewards:
    """Grants in Redis, shared by every worker and by the `rewards` commands."""

    def __init__(
        self,
        store: Store,
        target: RewardTarget | None = None,
        *,
        on_granted: Callable[[Entry], None] | None = None,
    ) -> None:
        self.store = store
        self.target = target
        self.on_granted = on_granted
        self.ledger = Ledger(store, GRANTS)
        self.caps = guardrails.Caps(store)

    # --- earning --------------------------------------------------------------

    def earn(
        self, credit: Credit, event: str, at: datetime, playbook: Playbook | None
    ) -> list[str]:
        """Open the grants `event` earns under `playbook`; return their ids.

        A refused credit opens them as refused, with the reason. Earning again
        (a replayed event) changes nothing.
        """
        reward = playbook.reward if playbook is not None else None
        if playbook is None or reward is None or EARNED_ON[reward.earned_on] != event:
            return []
        due_ms = _ms(at) + int(reward.hold.total_seconds() * 1000)
        parties: list[tuple[Party, str, Grant | None]] = [
            ("referrer", credit.referrer, reward.referrer),
            ("invitee", credit.invitee, reward.invitee),
        ]
        opened = []
        for party, user, grant in parties:
            if grant is None or not user:
                continue
            gid = grant_id(playbook.id, party, credit.invitee)
            about = _about(playbook, reward, party, user, credit, grant, at, due_ms)
            is_new = self.ledger.open(gid, about)
            entry = None if is_new else self.ledger.get(gid)
            if not is_new and (entry is None or entry.outcome != Outcome.SCHEDULED):
                continue
            opened.append(gid)
            if credit.refused:
                self.ledger.hold(gid, _refusal(credit.refused))
                logger.info("Grant %s refused: %s.", gid, credit.refused)
                continue
            pipe = self.store.redis.pipeline(transaction=False)
            self.ledger.defer(gid, due_ms, ON_HOLD, pipe)
            pipe.zadd(self._due_key(), {gid: due_ms})
            pipe.execute()
        return opened

    def revoke(self, playbooks: Sequence[str], invitee: str, reason: str) -> list[str]:
        """Refuse the grants of `invitee` not yet given; return the ids refused."""
        revoked = []
        for playbook in playbooks:
            parties: tuple[Party, ...] = ("referrer", "invitee")
            for party in parties:
                gid = grant_id(playbook, party, invitee)
                entry = self.ledger.get(gid)
                if entry is None or entry.outcome != Outcome.DEFERRED:
                    continue
                self._refuse(gid, f"revoked:{reason}")
                revoked.append(gid)
        return revoked

    # --- when the hold ends ----------------------------------------------------

    def due(
        self,
        now_ms: int,
        playbook_of: Callable[[str], Playbook | None],
        credit_of: Callable[[str], Credit | None],
        farming: Callable[[str, int], bool],
    ) -> list[str]:
        """Judge the grants whose hold has ended; return those to give now.

        One run at a time; a run cut off leaves its grants due, and judging a
        grant again takes nothing twice (caps are taken by grant id).
        """
        token = secrets.token_hex(8)
        lock = self.store.key(GRANTS, "due-lock")
        if not self.store.redis.set(lock, token, nx=True, px=DUE_LOCK_MS):
            return []
        try:
            ids = cast(
                list[str],
                self.store.redis.zrangebyscore(
                    self._due_key(), "-inf", now_ms, start=0, num=DUE_BATCH
                ),
            )
            ready = []
            for gid, entry in zip(ids, self.ledger.get_many(ids), strict=True):
                verdict = self._judge_due(
                    gid, entry, now_ms, playbook_of, credit_of, farming
                )
                if verdict == "give":
                    ready.append(gid)
                self.store.redis.zrem(self._due_key(), gid)
            return ready
        finally:
            if self.store.redis.get(lock) == token:
                self.store.redis.delete(lock)

    def _judge_due(
        self,
        gid: str,
        entry: Entry | None,
        now_ms: int,
        playbook_of: Callable[[str], Playbook | None],
        credit_of: Callable[[str], Credit | None],
        farming: Callable[[str, int], bool],
    ) -> str:
        if entry is None or entry.outcome != Outcome.DEFERRED:
            return "gone"
        if entry.reason == AWAITING_APPROVAL:
            return "waiting"
        playbook = playbook_of(entry.fields.get("playbook", ""))
        if playbook is None or playbook.reward is None:
            self._refuse(gid, "playbook_removed")
            return "refused"
        refusal = self._refusal_of(entry, credit_of, farming, now_ms)
        if refusal:
            self._refuse(gid, refusal)
            return "refused"
        if playbook.reward.approval == "manual" and not entry.fields.get("approved_by"):
            pipe = self.store.redis.pipeline(transaction=False)
            self.ledger.defer(gid, now_ms, AWAITING_APPROVAL, pipe)
            pipe.zadd(self._awaiting_key(), {gid: now_ms})
            pipe.execute()
            logger.info("Grant %s awaits approval.", gid)
            return "waiting"
        return self._take_caps(gid, entry, playbook, now_ms)

    def _refusal_of(
        self,
        entry: Entry,
        credit_of: Callable[[str], Credit | None],
        farming: Callable[[str, int], bool],
        now_ms: int,
    ) -> str:
        credit = credit_of(entry.fields.get("invitee", ""))
        if credit is None:
            return "revoked:credit_gone"
        if credit.refused:
            return _refusal(credit.refused)
        if credit.referrer != entry.fields.get("referrer"):
            return "revoked:credited_elsewhere"
        if farming(credit.referrer, now_ms):
            return FARMING
        return ""

    def _take_caps(
        self, gid: str, entry: Entry, playbook: Playbook, now_ms: int
    ) -> str:
        """Count the grant against its caps; "give" when they had room."""
        blocked = self.caps.take(self._claims(entry, playbook), gid, now_ms)
        if blocked is not None:
            self._refuse(gid, self._cap_reason(playbook, blocked))
            return "refused"
        self.ledger.mark(gid, Outcome.SCHEDULED, reason="due")
        return "give"

    def _claims(
        self, entry: Entry, playbook: Playbook
    ) -> list[tuple[str, Sequence[Cap]]]:
        """Caps count the referrer's grants: per referrer, and per account."""
        if entry.fields.get("step") != "reward:referrer" or playbook.reward is None:
            return []
        caps = playbook.reward.caps
        subjects = _cap_subjects(entry)
        return [(subjects[0], caps.per_referrer), (subjects[1], caps.per_account)]

    def _cap_reason(self, playbook: Playbook, blocked: Cap) -> str:
        assert playbook.reward is not None
        scope = (
            "per_referrer"
            if blocked in playbook.reward.caps.per_referrer
            else ("per_account")
        )
        return guardrails.cap_reason(scope, blocked)

    # --- approval ---------------------------------------------------------------

    def pending(self) -> list[Entry]:
        """Grants that wait for someone's approval, oldest first."""
        ids = cast(list[str], self.store.redis.zrange(self._awaiting_key(), 0, -1))
        return [e for e in self.ledger.get_many(ids) if e is not None]

    def on_hold(self) -> list[Entry]:
        """Grants still inside their hold period, soonest due first."""
        ids = cast(list[str], self.store.redis.zrange(self._due_key(), 0, -1))
        return [e for e in self.ledger.get_many(ids) if e is not None]

    def approve(
        self,
        gid: str,
        by: str,
        now_ms: int,
        playbook_of: Callable[[str], Playbook | None],
    ) -> str:
        """Approve a grant: "give" (now), "on_hold" (when due), or why it cannot be."""
        entry = self.ledger.get(gid)
        if entry is None:
            return "no grant has this id"
        if entry.outcome != Outcome.DEFERRED:
            return f"it is {_state(entry)} already"
        self.ledger.annotate(gid, approved_by=by[:MAX_NOTE_CHARS])
        if entry.reason != AWAITING_APPROVAL:
            return ON_HOLD
        self.store.redis.zrem(self._awaiting_key(), gid)
        playbook = playbook_of(entry.fields.get("playbook", ""))
        if playbook is None or playbook.reward is None:
            self._refuse(gid, "playbook_removed")
            return "its playbook is gone"
        verdict = self._take_caps(gid, entry, playbook, now_ms)
        if verdict != "give":
            refused = self.ledger.get(gid)
            return f"refused: {refused.reason if refused else 'cap'}"
        return verdict

    def reject(self, gid: str, by: str, note: str) -> str:
        """Refuse a grant that has not been given; "rejected" or why it cannot be."""
        entry = self.ledger.get(gid)
        if entry is None:
            return "no grant has this id"
        if entry.outcome in FINAL or entry.outcome == Outcome.RESERVED:
            return f"it is {_state(entry)} already"
        self._refuse(gid, "rejected")
        self.caps.give_back(_cap_subjects(entry), gid)
        self.ledger.annotate(
            gid, rejected_by=by[:MAX_NOTE_CHARS], note=note[:MAX_NOTE_CHARS]
        )
        return "rejected"

    # --- giving -----------------------------------------------------------------

    def give(self, gid: str) -> Outcome:
        """Give one grant through the target, once in effect.

        Raises:
            GrantRetry: the target is down, asked for time, or is not set up.
        """
        entry = self.ledger.get(gid)
        if entry is None:
            logger.warning("Grant %s has no record; nothing to give.", gid)
            return Outcome.HELD
        if entry.outcome in FINAL:
            return Outcome(entry.outcome)
        if entry.outcome == Outcome.DEFERRED:
            # Not due, or waiting for approval: the due run hands it on.
            return Outcome.DEFERRED
        lease = secrets.token_hex(8)
        answer = self.ledger.reserve(gid, lease)
        if answer is Reservation.DONE:
            return Outcome(self.ledger.get(gid).outcome)  # type: ignore[union-attr]
        if answer is Reservation.BUSY:
            raise GrantRetry(BUSY_RETRY_MS, "another worker holds it", counts=False)
        # GRANTED or ORPHANED: an earlier attempt may have reached the target;
        # sending again is safe, because the target applies the grant id once.
        return self._send(gid, lease, entry)

    def _send(self, gid: str, lease: str, entry: Entry) -> Outcome:
        target = self.target
        if target is None:
            logger.warning("Grant %s waits: no reward target is set up.", gid)
            self.ledger.release(gid, lease, "no reward target is set up")
            raise GrantRetry(
                NOT_CONFIGURED_RETRY_MS, "no reward target is set up", counts=False
            )
        try:
            sent = target.grant(_request(gid, entry.fields))
        except ConfigurationError as exc:
            logger.warning("Grant %s waits: %s.", gid, exc)
            self.ledger.release(gid, lease, f"{target.name}: {exc}")
            raise GrantRetry(NOT_CONFIGURED_RETRY_MS, str(exc), counts=False) from exc
        except TransientError as exc:
            self.ledger.release(gid, lease, f"{target.name}: {exc}")
            asked = exc.retry_after_s is not None
            delay_ms = int((exc.retry_after_s or 0) * 1000)
            raise GrantRetry(
                delay_ms, f"{target.name}: {exc}", counts=not asked
            ) from exc
        except AmbiguousError as exc:
            self.ledger.release(gid, lease, f"{target.name}: unsure, sending again")
            raise GrantRetry(0, f"{target.name}: {exc}") from exc
        except PermanentError as exc:
            self.ledger.release(gid, lease, f"{target.name}: refused")
            self.bury(gid, f"{target.name} refused it ({exc.status or 'no status'})")
            return Outcome.DEAD
        committed = self.ledger.commit(
            gid, lease, channel=target.name, vendor_id=sent.vendor_id or ""
        )
        granted = self.ledger.get(gid)
        if committed and granted is not None and self.on_granted is not None:
            self.on_granted(granted)
        logger.info("Granted %s through %s.", gid, target.name)
        return Outcome.SENT

    def bury(self, gid: str, reason: str) -> None:
        """Give up on a grant: dead letter, with its caps given back."""
        entry = self.ledger.get(gid)
        if entry is not None and entry.outcome in FINAL:
            return
        if entry is not None:
            self.caps.give_back(_cap_subjects(entry), gid)
        self.ledger.dead(gid, reason)

    # --- internals ---------------------------------------------------------------

    def _refuse(self, gid: str, reason: str) -> None:
        pipe = self.store.redis.pipeline(transaction=False)
        self.ledger.hold(gid, reason, pipe)
        pipe.zrem(self._due_key(), gid)
        pipe.zrem(self._awaiting_key(), gid)
        pipe.execute()
        logger.info("Grant %s refused: %s.", gid, reason)

    def _due_key(self) -> str:
        return self.store.key(GRANTS, "due")

    def _awaiting_key(self) -> str:
        return self.store.key(GRANTS, "awaiting")


def is_farming(
    invitees: Mapping[str, int],
    activated: set[str],
    policy: RewardPolicy,
    now_ms: int,
) -> bool:
    """A referrer farms when enough invitees, past the grace, mostly never activate.

    Only invitees credited at least `policy.farming_grace` ago are judged: the
    newest have not had their chance to activate yet.
    """
    grace_ms = int(policy.farming_grace.total_seconds() * 1000)
    judged = [user for user, at in invitees.items() if at <= now_ms - grace_ms]
    if len(judged) < policy.farming_min_invitees:
        return False
    share = sum(1 for user in judged if user in activated) / len(judged)
    return share * 100 < policy.farming_activation_below


def state_of(entry: Entry) -> str:
    """A grant's state in the words of `referloop rewards`."""
    return _state(entry)


def _state(entry: Entry) -> str:
    outcome, reason = entry.outcome, entry.reason
    if outcome == Outcome.DEFERRED:
        return "awaiting approval" if reason == AWAITING_APPROVAL else "on hold"
    if outcome == Outcome.SENT:
        return "granted"
    if outcome == Outcome.HELD:
        return "rejected" if reason == "rejected" else "refused"
    if outcome in (Outcome.SCHEDULED, Outcome.RESERVED, Outcome.RETRYING):
        return "granting"
    return str(outcome)


def _cap_subjects(entry: Entry) -> list[str]:
    """What a referrer's grant counts against: the referrer, and the account."""
    fields = entry.fields
    playbook = fields.get("playbook", "")
    return [
        f"reward:referrer:{fields.get('user', '')}:playbook:{playbook}",
        f"reward:account:{fields.get('account', '')}:playbook:{playbook}",
    ]


def _refusal(reason: str) -> str:
    if reason.startswith("revoked:") or reason == "already_credited":
        return reason
    return f"fraud:{reason}"


def _about(
    playbook: Playbook,
    reward: Reward,
    party: Party,
    user: str,
    credit: Credit,
    grant: Grant,
    at: datetime,
    due_ms: int,
) -> dict[str, str]:
    """What a grant's record says: ids, the grant, and when it is due."""
    about = {
        "playbook": playbook.id,
        "step": f"reward:{party}",
        "user": user,
        "account": credit.account,
        "referrer": credit.referrer,
        "invitee": credit.invitee,
        "delivery_key": credit.delivery_key,
        "grant": grant.grant.value,
        "earned_ms": str(_ms(at)),
        "due_ms": str(due_ms),
    }
    if grant.amount is not None:
        about["amount"] = str(grant.amount)
    if grant.for_ is not None:
        about["for_s"] = str(int(grant.for_.total_seconds()))
    if reward.expires is not None:
        about["expires_s"] = str(int(reward.expires.total_seconds()))
    if grant.note:
        about["note"] = grant.note
    return about


def _request(gid: str, fields: Mapping[str, str]) -> GrantRequest:
    amount, for_s = fields.get("amount"), fields.get("for_s")
    expires_s = fields.get("expires_s")
    return GrantRequest(
        idempotency_key=gid,
        playbook_id=fields.get("playbook", ""),
        user_id=fields.get("user", ""),
        account_id=fields.get("account", ""),
        grant=fields.get("grant", ""),
        amount=int(amount) if amount else None,
        for_s=int(for_s) if for_s else None,
        expires_s=int(expires_s) if expires_s else None,
        note=fields.get("note") or None,
    )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def describe(entry: Entry) -> dict[str, Any]:
    """A grant for `referloop rewards`: ids, grant, state and reason."""
    fields = entry.fields
    return {
        "id": entry.delivery_key,
        "state": _state(entry),
        "reason": entry.reason,
        "playbook": fields.get("playbook", ""),
        "party": fields.get("step", "").removeprefix("reward:"),
        "user": fields.get("user", ""),
        "account": fields.get("account", ""),
        "invitee": fields.get("invitee", ""),
        "grant": fields.get("grant", ""),
        "amount": fields.get("amount", ""),
        "due_ms": fields.get("due_ms", ""),
        "approved_by": fields.get("approved_by", ""),
    }


# --- grants as attributes ------------------------------------------------------


class AttributeRewards:
    """Grants as profile attributes in a messaging vendor, for its campaigns.

    Each grant sets `referloop_<grant>` (the amount, or true), `referloop_<grant>
    _until` for a timed one (Unix seconds), and `referloop_last_grant` (its id).
    Values are set, never incremented, so a grant sent again sets them again.
    """

    name: ClassVar[str] = "attributes"

    def __init__(self, set_attributes: Callable[[str, Mapping[str, Any]], None]):
        self._set = set_attributes

    def grant(self, request: GrantRequest) -> Sent:
        kind = f"referloop_{request.grant}"
        attributes: dict[str, Any] = {
            kind: request.amount if request.amount is not None else True,
            "referloop_last_grant": request.idempotency_key,
        }
        if request.for_s is not None:
            attributes[f"{kind}_until"] = int(time.time()) + request.for_s
        self._set(request.user_id, attributes)
        return Sent(vendor_id=None)


class CustomerIOAttributes(AttributeRewards):
    name: ClassVar[str] = "customerio"


class BrazeAttributes(AttributeRewards):
    name: ClassVar[str] = "braze"


def attribute_rewards(via: str, sender: Any) -> RewardTarget | None:
    """The attribute target for `via` over its configured sender, if it can."""
    if via == "customerio" and hasattr(sender, "identify"):
        return CustomerIOAttributes(sender.identify)
    if via == "braze" and hasattr(sender, "track"):

        def track(user_id: str, attributes: Mapping[str, Any]) -> None:
            sender.track(attributes=[{"external_id": user_id, **attributes}])

        return BrazeAttributes(track)
    return None

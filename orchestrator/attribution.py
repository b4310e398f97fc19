"""Attribution: who invited whom, through which playbook, and how long it took.

The product reports the invite events (`POST /events`); the worker reads them
here, in the decide step, once each:

- `invite_sent` (the user is the referrer): the invite's id, and the token of
  the link it was made from when it came from a nudge. The invite is kept by its
  id, so a later acceptance that names only the id is credited too.
- `invite_accepted` (the user is the invitee): credited to a referrer, from the
  signed token (`properties.token`) or from the invite id the product reported
  (`properties.invite_id`). A tampered or expired token is refused and counted;
  the invite id may still credit the invite, because the product vouched for it.
- `invitee_activated` (the user is the invitee): marks the credited invite as
  activated; one with no earlier acceptance is credited as an acceptance first.
- `invitee_removed`, `invite_reversed`: revoke the credit, so rewards still on
  hold are not paid.

The rule for an invitee reached by several referrers: **the first accepted
invite wins**. The invitee, their activation and any reward for it belong to the
referrer of the first invite they accepted; a later acceptance of another
referrer's invite is recorded and counted (`already_credited`) but credits
nobody. First touch is what the invitee chose to act on, and it cannot be taken
over by whoever sends the most invites.

Not every acceptance is a referral: inviting yourself (the same user, or the same
address under another alias), or "inviting" someone already in the account, is
refused with its reason. A colleague at the same company is the normal case in
B2B and is credited.

Each referrer's loop time, from their own activation to their first accepted
invite, is recorded for the metrics. Every loop event is appended once to a
Redis stream of ids and reasons (`loop-events`), which the metrics read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from orchestrator.model import Workspace
from orchestrator.occurrences import Occurrence
from orchestrator.state import Store
from orchestrator.tokens import ExpiredToken, InvalidToken, InviteClaims, InviteSigner

logger = logging.getLogger(__name__)

INVITE_SENT = "invite_sent"
INVITE_ACCEPTED = "invite_accepted"
INVITEE_ACTIVATED = "invitee_activated"
COLLABORATION_COMPLETED = "collaboration_completed"
REWARD_GRANTED = "reward_granted"
INVITEE_REMOVED = "invitee_removed"
INVITE_REVERSED = "invite_reversed"
REVOKING = frozenset({INVITEE_REMOVED, INVITE_REVERSED})
INVITE_EVENTS = frozenset({INVITE_SENT, INVITE_ACCEPTED, INVITEE_ACTIVATED, *REVOKING})

# Why an acceptance credits nobody.
TOKEN_INVALID = "token_invalid"  # noqa: S105 - a reason, not a secret
TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a reason, not a secret
UNKNOWN_INVITE = "unknown_invite"
SELF_INVITE = "self_invite"
EXISTING_MEMBER = "existing_member"
ALREADY_CREDITED = "already_credited"
NO_INVITE = "no_invite"

RECORD_TTL_S = 400 * 86_400
LOG_MAXLEN = 5_000_000
# When a user was created, as products often name it.
CREATED_FIELDS = ("created_at", "signed_up_at", "joined_at")

# Append a loop event once per (kind, occurrence): a decide message delivered
# twice must not count an invite twice. KEYS: marker, stream. ARGV: ttl_s,
# maxlen, then field, value pairs.
_LOG_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return 1
"""

# Credit an invitee once. KEYS: the invitee's credit. ARGV: ttl_s, then field,
# value pairs (referrer first). Returns the referrer the invitee is credited to.
_CREDIT_ONCE = """
local current = redis.call('HGET', KEYS[1], 'referrer')
if current then
  return current
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return ARGV[3]
"""


@dataclass(frozen=True)
class Credit:
    """An invitee credited to a referrer (ids only), or why they are not.

    `refused` names the reason when the acceptance credits nobody; `playbook`
    is empty for an invite that no nudge led to.
    """

    invitee: str
    referrer: str = ""
    account: str = ""
    playbook: str = ""
    variant: str = ""
    delivery_key: str = ""
    invite_id: str = ""
    refused: str = ""

    @property
    def is_credited(self) -> bool:
        return bool(self.referrer) and not self.refused


@dataclass(frozen=True)
class Observed:
    """What one invite event did: the credit it found, or the invitee it revoked."""

    event: str
    credit: Credit | None = None
    revoked: str = ""
    revoked_reason: str = ""


class Attribution:
    """Invites, credits and loop times in Redis, shared by every worker."""

    def __init__(self, store: Store, signer: InviteSigner) -> None:
        self.store = store
        self.signer = signer
        self._log_once = store.redis.register_script(_LOG_ONCE)
        self._credit_once = store.redis.register_script(_CREDIT_ONCE)

    # --- reading events -------------------------------------------------------

    def observe(self, occurrence: Occurrence, workspace: Workspace) -> Observed | None:
        """Apply one product event; None when it is not an invite event."""
        name = occurrence.source
        if occurrence.kind != "event" or occurrence.step != "nudge":
            return None
        self._note_activation(occurrence, workspace)
        if name == INVITE_SENT:
            return self._invite_sent(occurrence)
        if name == INVITE_ACCEPTED:
            return Observed(name, credit=self._accepted(occurrence))
        if name == INVITEE_ACTIVATED:
            return Observed(name, credit=self._activated(occurrence))
        if name in REVOKING:
            return self._revoked(occurrence)
        self._see(occurrence)
        return None

    def credit_of(self, invitee: str) -> Credit | None:
        """The referrer an invitee is credited to, if any."""
        fields = self._hash(self._credit_key(invitee))
        if not fields.get("referrer"):
            return None
        return _credit_from(invitee, fields)

    def credit_fields(self, invitee: str) -> dict[str, str]:
        """Everything kept about an invitee's credit (ids and times)."""
        return self._hash(self._credit_key(invitee))

    def referrer_record(self, user_id: str) -> dict[str, str]:
        """A referrer's activation, first invite, first success and loop time (ms)."""
        return self._hash(self._referrer_key(user_id))

    def invitees(self, referrer: str, since_ms: int = 0) -> dict[str, int]:
        """The invitees credited to `referrer`, with when each accepted (ms)."""
        key = self._referrer_key(referrer, "invitees")
        found = self.store.redis.zrangebyscore(key, since_ms, "+inf", withscores=True)
        return {str(user): int(at) for user, at in cast(list[Any], found)}

    def activated_invitees(self, referrer: str) -> set[str]:
        key = self._referrer_key(referrer, "activated")
        return {str(user) for user in cast(set[Any], self.store.redis.smembers(key))}

    def counts(self) -> dict[str, int]:
        """Loop events and refusals counted, e.g. `accepted`, `refused:self_invite`."""
        raw = cast(dict[str, str], self.store.redis.hgetall(self._counts_key()))
        return {name: int(value) for name, value in raw.items()}

    def log(self, kind: str, origin: str, at: datetime, **fields: str) -> bool:
        """Append a loop event once for (`kind`, `origin`); False when already there."""
        pairs = {"kind": kind, "at_ms": str(_ms(at)), **fields}
        args: list[str | int] = [RECORD_TTL_S, LOG_MAXLEN]
        args += [item for pair in pairs.items() if pair[1] for item in pair]
        marker = self.store.key("loop-logged", kind, origin)
        keys = [marker, self.store.key("loop-events")]
        added = bool(self._log_once(keys=keys, args=args))
        if added:
            self.store.redis.hincrby(self._counts_key(), kind, 1)
        return added

    # --- the events -------------------------------------------------------------

    def _invite_sent(self, occurrence: Occurrence) -> Observed:
        props = occurrence.facts.event
        referrer = occurrence.user_id
        invite_id = _text(props.get("invite_id"))
        claims = self._claims(_text(props.get("token")), occurrence)
        if claims is not None and claims.referrer != referrer:
            # A link passed on to a colleague: the colleague's invite is theirs.
            claims = None
        fields = {
            "referrer": referrer,
            "account": occurrence.account_id,
            "sent_ms": str(_ms(occurrence.time)),
            "email": _email_digest(self.store, occurrence.facts.user.get("email")),
        }
        if claims is not None:
            fields |= {
                "playbook": claims.playbook,
                "variant": claims.variant,
                "delivery_key": claims.delivery_key,
            }
        pipe = self.store.redis.pipeline(transaction=False)
        if invite_id:
            key = self._invite_key(invite_id)
            for name, value in fields.items():
                if value:
                    pipe.hsetnx(key, name, value)
            pipe.expire(key, RECORD_TTL_S)
        record = self._referrer_key(referrer)
        pipe.hsetnx(record, "first_invite_ms", str(_ms(occurrence.time)))
        pipe.expire(record, RECORD_TTL_S)
        pipe.execute()
        self._see(occurrence)
        self.log(
            INVITE_SENT,
            occurrence.occurrence_id,
            occurrence.time,
            referrer=referrer,
            account=occurrence.account_id,
            playbook=fields.get("playbook", ""),
            variant=fields.get("variant", ""),
            delivery_key=fields.get("delivery_key", ""),
            invite_id=invite_id,
        )
        return Observed(INVITE_SENT)

    def _accepted(self, occurrence: Occurrence) -> Credit:
        credit = self._resolve(occurrence)
        earlier = self.credit_of(occurrence.user_id)
        if earlier is not None and credit.referrer == earlier.referrer:
            # The same acceptance again, or another invite of the same referrer.
            credit = earlier
        elif earlier is not None and credit.referrer:
            credit = _with(credit, refused=ALREADY_CREDITED)
        else:
            credit = self._judge(credit, occurrence)
        if credit.refused:
            self._count(f"refused:{credit.refused}")
            self._remember_refusal(credit)
            logger.info(
                "Invite accepted by %s credits nobody: %s.",
                occurrence.user_id,
                credit.refused,
            )
        else:
            credit = self._credit(credit, occurrence)
        self._see(occurrence)
        self.log(
            INVITE_ACCEPTED,
            occurrence.occurrence_id,
            occurrence.time,
            **_log_fields(credit),
        )
        return credit

    def _activated(self, occurrence: Occurrence) -> Credit:
        invitee = occurrence.user_id
        credit = self.credit_of(invitee)
        if credit is None:
            refused = self._hash(self._credit_key(invitee, "refused"))
            if refused.get("referrer"):
                # The acceptance was refused: so is what it would have earned.
                return _credit_from(invitee, refused)
            # No acceptance was reported: the activation stands in for it.
            credit = self._accepted(occurrence)
            if not credit.is_credited:
                return credit
        key = self._credit_key(invitee)
        self.store.redis.hsetnx(key, "activated_ms", str(_ms(occurrence.time)))
        if credit.is_credited:
            self.store.redis.sadd(
                self._referrer_key(credit.referrer, "activated"), invitee
            )
        self.log(
            INVITEE_ACTIVATED,
            occurrence.occurrence_id,
            occurrence.time,
            **_log_fields(credit),
        )
        revoked = self._hash(key).get("revoked")
        if revoked:
            return _with(credit, refused=f"revoked:{revoked}")
        return credit

    def _revoked(self, occurrence: Occurrence) -> Observed:
        props = occurrence.facts.event
        invitee = occurrence.user_id
        invite_id = _text(props.get("invite_id"))
        if invite_id:
            invitee = self._hash(self._invite_key(invite_id)).get("invitee") or invitee
        reason = occurrence.source
        key = self._credit_key(invitee)
        if self.store.redis.hget(key, "referrer") is not None:
            self.store.redis.hsetnx(key, "revoked", reason)
        credit = self.credit_of(invitee)
        self.log(
            reason,
            occurrence.occurrence_id,
            occurrence.time,
            invitee=invitee,
            referrer=credit.referrer if credit else "",
            playbook=credit.playbook if credit else "",
        )
        return Observed(reason, revoked=invitee, revoked_reason=reason)

    # --- crediting ----------------------------------------------------------------

    def _resolve(self, occurrence: Occurrence) -> Credit:
        """The invite an acceptance names: its token first, then its invite id."""
        props = occurrence.facts.event
        invitee = occurrence.user_id
        invite_id = _text(props.get("invite_id"))
        token = _text(props.get("token"))
        refused = ""
        if token:
            claims, refused = self._verified(token, occurrence)
            if claims is not None:
                return Credit(
                    invitee=invitee,
                    referrer=claims.referrer,
                    account=claims.account,
                    playbook=claims.playbook,
                    variant=claims.variant,
                    delivery_key=claims.delivery_key,
                    invite_id=invite_id,
                )
        if invite_id:
            invite = self._hash(self._invite_key(invite_id))
            if invite.get("referrer"):
                return Credit(
                    invitee=invitee,
                    referrer=invite["referrer"],
                    account=invite.get("account", ""),
                    playbook=invite.get("playbook", ""),
                    variant=invite.get("variant", ""),
                    delivery_key=invite.get("delivery_key", ""),
                    invite_id=invite_id,
                )
            refused = refused or UNKNOWN_INVITE
        return Credit(
            invitee=invitee, invite_id=invite_id, refused=refused or NO_INVITE
        )

    def _verified(
        self, token: str, occurrence: Occurrence
    ) -> tuple[InviteClaims | None, str]:
        try:
            # Expiry is judged at the moment of acceptance, not of processing.
            return self.signer.verify(token, occurrence.time.timestamp()), ""
        except ExpiredToken:
            self._count(f"token:{TOKEN_EXPIRED}")
            logger.warning("An expired invite token was refused.")
            return None, TOKEN_EXPIRED
        except InvalidToken:
            self._count(f"token:{TOKEN_INVALID}")
            logger.warning("An invite token that is not genuine was refused.")
            return None, TOKEN_INVALID

    def _claims(self, token: str, occurrence: Occurrence) -> InviteClaims | None:
        if not token:
            return None
        try:
            return self.signer.verify(token, occurrence.time.timestamp())
        except InvalidToken:
            return None

    def _judge(self, credit: Credit, occurrence: Occurrence) -> Credit:
        """Refuse what is not a referral: a self-invite, an existing member."""
        if not credit.referrer:
            return credit
        invitee = occurrence.user_id
        if credit.referrer == invitee:
            return _with(credit, refused=SELF_INVITE)
        invite = (
            self._hash(self._invite_key(credit.invite_id)) if credit.invite_id else {}
        )
        email = _email_digest(self.store, occurrence.facts.user.get("email"))
        referrer_email = invite.get("email") or self._hash(
            self._referrer_key(credit.referrer)
        ).get("email", "")
        if email and email == referrer_email:
            return _with(credit, refused=SELF_INVITE)
        if self._was_member(credit, invite, occurrence):
            return _with(credit, refused=EXISTING_MEMBER)
        return credit

    def _was_member(
        self, credit: Credit, invite: Mapping[str, str], occurrence: Occurrence
    ) -> bool:
        """Whether the invitee belonged to the referrer's account before the invite."""
        props, user = occurrence.facts.event, occurrence.facts.user
        if props.get("existing_member") is True:
            return True
        sent_ms = int(invite.get("sent_ms") or _ms(occurrence.time))
        for name in CREATED_FIELDS:
            created = _as_ms(user.get(name))
            if created is not None and created < sent_ms:
                return True
        account = credit.account or occurrence.account_id
        if not account:
            return False
        seen = self.store.redis.zscore(self._seen_key(account), occurrence.user_id)
        return seen is not None and int(cast(float, seen)) < sent_ms

    def _remember_refusal(self, credit: Credit) -> None:
        """Keep the first refused acceptance of a would-be referral, with why."""
        if not credit.referrer or not credit.playbook:
            return
        key = self._credit_key(credit.invitee, "refused")
        fields = {name: value for name, value in _log_fields(credit).items() if value}
        fields["refused"] = fields.pop("reason")
        pipe = self.store.redis.pipeline(transaction=False)
        for name, value in fields.items():
            pipe.hsetnx(key, name, value)
        pipe.expire(key, RECORD_TTL_S)
        pipe.execute()

    def _credit(self, credit: Credit, occurrence: Occurrence) -> Credit:
        at_ms = _ms(occurrence.time)
        fields = {
            "referrer": credit.referrer,
            "account": credit.account,
            "playbook": credit.playbook,
            "variant": credit.variant,
            "delivery_key": credit.delivery_key,
            "invite_id": credit.invite_id,
            "accepted_ms": str(at_ms),
        }
        args: list[str | int] = [RECORD_TTL_S]
        args += [item for pair in fields.items() if pair[1] for item in pair]
        holder = str(
            self._credit_once(keys=[self._credit_key(credit.invitee)], args=args)
        )
        if holder != credit.referrer:
            self._count(f"refused:{ALREADY_CREDITED}")
            return _with(credit, refused=ALREADY_CREDITED)

        pipe = self.store.redis.pipeline(transaction=False)
        invitees = self._referrer_key(credit.referrer, "invitees")
        pipe.zadd(invitees, {credit.invitee: at_ms}, nx=True)
        pipe.expire(invitees, RECORD_TTL_S)
        record = self._referrer_key(credit.referrer)
        pipe.hsetnx(record, "first_success_ms", str(at_ms))
        pipe.expire(record, RECORD_TTL_S)
        if credit.invite_id:
            pipe.hsetnx(self._invite_key(credit.invite_id), "invitee", credit.invitee)
        pipe.execute()
        self._loop_time(credit.referrer)
        return credit

    def _loop_time(self, referrer: str) -> None:
        """Record activation to first accepted invite, once both are known."""
        record = self._hash(self._referrer_key(referrer))
        if "loop_ms" in record:
            return
        activated, success = record.get("activated_ms"), record.get("first_success_ms")
        if activated and success:
            loop_ms = max(0, int(success) - int(activated))
            self.store.redis.hsetnx(
                self._referrer_key(referrer), "loop_ms", str(loop_ms)
            )

    def _note_activation(self, occurrence: Occurrence, workspace: Workspace) -> None:
        """Remember when a user activated, and a digest of their address, once."""
        record = self._referrer_key(occurrence.user_id)
        fields: dict[str, str] = {}
        if occurrence.source == INVITEE_ACTIVATED:
            fields["activated_ms"] = str(_ms(occurrence.time))
        gate = workspace.activation
        if gate is not None and gate.property and gate.property.startswith("user."):
            at = _as_ms(occurrence.facts.user.get(gate.property.removeprefix("user.")))
            if at is not None:
                fields["activated_ms"] = str(at)
        email = _email_digest(self.store, occurrence.facts.user.get("email"))
        if email:
            fields["email"] = email
        if not fields:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for name, value in fields.items():
            pipe.hsetnx(record, name, value)
        pipe.expire(record, RECORD_TTL_S)
        pipe.execute()
        if "activated_ms" in fields:
            self._loop_time(occurrence.user_id)

    def _see(self, occurrence: Occurrence) -> None:
        """Remember the first time a user was seen in an account."""
        if not occurrence.account_id:
            return
        key = self._seen_key(occurrence.account_id)
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.zadd(key, {occurrence.user_id: _ms(occurrence.time)}, nx=True)
        pipe.expire(key, RECORD_TTL_S)
        pipe.execute()

    # --- keys -----------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.store.redis.hincrby(self._counts_key(), name, 1)

    def _hash(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.store.redis.hgetall(key))

    def _counts_key(self) -> str:
        return self.store.key("loop", "counts")

    def _invite_key(self, invite_id: str) -> str:
        return self.store.key("invite", invite_id)

    def _credit_key(self, invitee: str, *more: str) -> str:
        return self.store.key("credit", invitee, *more)

    def _referrer_key(self, user_id: str, *more: str) -> str:
        return self.store.key("referrer", user_id, *more)

    def _seen_key(self, account: str) -> str:
        return self.store.key("seen", account)


def _credit_from(invitee: str, fields: Mapping[str, str]) -> Credit:
    revoked = fields.get("revoked", "")
    refused = fields.get("refused", "") or (f"revoked:{revoked}" if revoked else "")
    return Credit(
        invitee=invitee,
        referrer=fields.get("referrer", ""),
        account=fields.get("account", ""),
        playbook=fields.get("playbook", ""),
        variant=fields.get("variant", ""),
        delivery_key=fields.get("delivery_key", ""),
        invite_id=fields.get("invite_id", ""),
        refused=refused,
    )


def _with(credit: Credit, **changes: Any) -> Credit:
    return Credit(**{**credit.__dict__, **changes})


def _log_fields(credit: Credit) -> dict[str, str]:
    return {
        "invitee": credit.invitee,
        "referrer": credit.referrer,
        "account": credit.account,
        "playbook": credit.playbook,
        "variant": credit.variant,
        "delivery_key": credit.delivery_key,
        "invite_id": credit.invite_id,
        "reason": credit.refused,
    }


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _email_digest(store: Store, value: Any) -> str:
    """A digest of an address, the same for its `+tag` aliases and any case.

    Only the digest is kept, so that a self-invite under an alias is caught
    without keeping anybody's address.
    """
    if not isinstance(value, str) or "@" not in value:
        return ""
    local, _, domain = value.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    salted = f"{store.namespace}\x1f{local}@{domain}".encode()
    return hashlib.sha256(salted).hexdigest()[:32]


def _as_ms(value: Any) -> int | None:
    """A time a product sent (ISO 8601, or Unix seconds or ms) in ms, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 < value < 10**14:
            return None
        return int(value * 1000) if value < 10**11 else int(value)
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)

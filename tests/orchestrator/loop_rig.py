"""An engine with a rewarded playbook, a movable clock and a recording reward
target, driven by product events as the web process hands them on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from integrations.base import GrantRequest, ProductEvent, RenderedNudge, Sent
from orchestrator.engine import Engine
from orchestrator.ledger import GRANTS, Entry, Ledger
from orchestrator.loader import load
from orchestrator.state import Store
from orchestrator.tokens import InviteClaims, InviteSigner

NOW = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # a Wednesday afternoon in London
KEY = "loop-test-signing-key-0123456789abcdefgh"
PLAYBOOK_ID = "pack-reviewers"

WORKSPACE = """\
name: loop tests
time_zone: Europe/London
activation:
  property: user.activated_at
rewards:
  farming_min_invitees: 3
  farming_activation_below: 34%
  farming_grace: 14d
"""

PLAYBOOK = """\
id: pack-reviewers
description: Ask for a reviewer, reward an activated invitee.
owner: growth
trigger:
  event: pack_uploaded
holdout: 0%
nudge:
  channel: intercom
  intercom: {{from_admin: 1}}
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
reinforcement:
  - on: invitee_activated
    nudge:
      channel: intercom
      intercom: {{from_admin: 1}}
      invite: {{share: review_request}}
      trust: Reviewers see one pack.
      message:
        body: "Your reviewer is in. Another? {{{{ invite.link }}}}"
  - on: collaboration_completed
    nudge:
      channel: intercom
      intercom: {{from_admin: 1}}
      invite: {{share: review_request}}
      trust: Reviewers see one pack.
      message:
        body: "Done together. Invite the next one: {{{{ invite.link }}}}"
  - on: reward_granted
    nudge:
      channel: intercom
      intercom: {{from_admin: 1}}
      invite: {{share: review_request}}
      trust: Reviewers see one pack.
      message:
        body: "Your reward is on. Invite again: {{{{ invite.link }}}}"
reward:
  earned_on: invitee_activated
  referrer: {{grant: guest_seats, amount: 2, note: Two seats for a reviewer.}}
  invitee: {{grant: onboarding_session}}
  hold: 7d
  expires: 180d
  approval: {approval}
  caps:
    per_referrer: {per_referrer}
    per_account: {per_account}
"""


@dataclass
class Channel:
    """A channel that records the deliveries it was given."""

    name: ClassVar[str] = "intercom"
    sent: list[RenderedNudge] = field(default_factory=list)

    def send(self, nudge: RenderedNudge) -> Sent:
        self.sent.append(nudge)
        return Sent(vendor_id=f"m-{len(self.sent)}")

    def steps(self) -> list[str]:
        return [nudge.step for nudge in self.sent]


@dataclass
class Target:
    """A reward target that records grants, and can be told how to answer."""

    name: ClassVar[str] = "product"
    answer: Callable[[GrantRequest], None] = lambda request: None
    grants: list[GrantRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def grant(self, request: GrantRequest) -> Sent:
        self.answer(request)
        with self.lock:
            self.grants.append(request)
        return Sent(vendor_id=f"g-{len(self.grants)}")


@dataclass
class Rig:
    engine: Engine
    channel: Channel
    target: Target
    signer: InviteSigner
    now: list[datetime]
    scheduled: list[str]
    counter: list[int] = field(default_factory=lambda: [0])
    nudged: dict[str, str] = field(default_factory=dict)

    @property
    def grants(self) -> Ledger:
        return Ledger(self.engine.store, GRANTS)

    def at(self, moment: datetime) -> None:
        self.now[0] = moment

    def later(self, **delta: float) -> None:
        self.now[0] += timedelta(**delta)

    def event(
        self,
        name: str,
        user_id: str,
        *,
        props: dict[str, Any] | None = None,
        account: str = "acct-1",
        event_id: str | None = None,
        **user: Any,
    ) -> str:
        """Report an event as the web process does, and decide it at once."""
        self.counter[0] += 1
        event = ProductEvent(
            event_id=event_id or f"evt-{self.counter[0]}",
            name=name,
            user_id=user_id,
            time=self.now[0],
            account_id=account,
            properties=props or {},
            user={"first_name": "Ada", **user},
        )
        self.engine.ingest_events([event], self.engine.decide_many)
        return event.event_id

    def nudge(self, referrer: str, **user: Any) -> str:
        """Nudge `referrer` through the playbook; return the delivery key sent.

        The playbook nudges a user once: a second call returns the first key.
        """
        if referrer in self.nudged:
            return self.nudged[referrer]
        profile = {"activated_at": "2026-01-01T00:00:00Z", **user}
        self.event("pack_uploaded", referrer, **profile)
        key = self.scheduled[-1]
        self.deliver()
        self.nudged[referrer] = key
        return key

    def deliver(self) -> None:
        while self.scheduled:
            keys = list(self.scheduled)
            self.scheduled.clear()
            self.engine.deliver_many(keys)

    def token(
        self,
        referrer: str,
        delivery_key: str = "dk_test",
        *,
        expires_in: timedelta = timedelta(days=14),
        playbook: str = PLAYBOOK_ID,
    ) -> str:
        claims = InviteClaims(
            referrer=referrer,
            account="acct-1",
            playbook=playbook,
            variant="a",
            delivery_key=delivery_key,
            share="review_request",
            expires_at=int((self.now[0] + expires_in).timestamp()),
        )
        return self.signer.sign(claims)

    def grant_of(self, gid: str) -> Entry:
        entry = self.grants.get(gid)
        assert entry is not None, f"no grant {gid}"
        return entry

    def settle(self) -> list[str]:
        """Run the due step and give what it hands on; return the ids given."""
        given = self.engine.grants_due()
        for gid in given:
            self.engine.decide_many(self.engine.give(gid))
        self.deliver()
        return given


def make_rig(
    store: Store,
    tmp_path: Path,
    *,
    approval: str = "automatic",
    per_referrer: str = "10 per 365d",
    per_account: str = "50 per 365d",
) -> Rig:
    folder = tmp_path / "playbooks"
    folder.mkdir(exist_ok=True)
    (folder / "referloop.yaml").write_text(WORKSPACE)
    text = PLAYBOOK.format(
        approval=approval, per_referrer=per_referrer, per_account=per_account
    )
    (folder / f"{PLAYBOOK_ID}.yaml").write_text(text)
    catalog = load([folder])
    assert not catalog.has_errors, catalog.problems

    channel, target = Channel(), Target()
    now = [NOW]
    scheduled: list[str] = []
    signer = InviteSigner([KEY])
    engine = Engine(
        store,
        catalog,
        signer,
        {"intercom": channel},
        lambda keys, delay: scheduled.extend(keys),
        lambda: now[0],
        rewards_target=target,
    )
    return Rig(engine, channel, target, signer, now, scheduled)

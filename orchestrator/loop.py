"""Closing the loop: invite events credited, rewards earned, reinforcements fired.

The engine hands each batch of occurrences here before judging its playbooks.
An invite event is credited (`orchestrator.attribution`); a credit earns or
revokes rewards (`orchestrator.rewards`); and the events a playbook's
`reinforcement` steps name become occurrences of those steps, for the user they
follow up:

- on `invite_accepted` and `invitee_activated`, the referrer credited with the
  invite, when their invite came from that playbook's nudge;
- on `reward_granted`, the user who got the grant;
- on any other event (`collaboration_completed`), the event's user, when that
  playbook has already nudged them.

Each follow-up has an id derived from what it follows, so a replayed event or a
redelivered message fires nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

from integrations.base import RewardTarget
from orchestrator import occurrences
from orchestrator.attribution import (
    INVITE_ACCEPTED,
    INVITE_EVENTS,
    INVITEE_ACTIVATED,
    REWARD_GRANTED,
    Attribution,
    Credit,
)
from orchestrator.journal import Journal
from orchestrator.ledger import Entry, Ledger
from orchestrator.loader import Catalog
from orchestrator.model import Playbook
from orchestrator.occurrences import Occurrence, Occurrences
from orchestrator.render import Facts
from orchestrator.rewards import Rewards, is_farming
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

logger = logging.getLogger(__name__)

CREDITED_EVENTS = (INVITE_ACCEPTED, INVITEE_ACTIVATED)


class Loop:
    """Attribution, rewards and reinforcement for one engine."""

    def __init__(
        self,
        store: Store,
        signer: InviteSigner,
        catalog: Callable[[], Catalog],
        deliveries: Ledger,
        found: Occurrences,
        reentry_key: Callable[[str, str], str],
        *,
        target: RewardTarget | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.deliveries = deliveries
        self.occurrences = found
        self.reentry_key = reentry_key
        self.journal = journal
        self.attribution = Attribution(store, signer)
        self.rewards = Rewards(store, target, on_granted=self._granted)

    def follow(self, batch: Sequence[Occurrence]) -> list[Occurrence]:
        """Credit, reward and revoke for each event; return the follow-ups fired."""
        fired: list[Occurrence] = []
        for occurrence in batch:
            if occurrence.kind != "event" or occurrence.playbook is not None:
                continue
            fired += self._follow(occurrence)
        for follow_up in fired:
            self.occurrences.save(follow_up)
        return fired

    def _follow(self, occurrence: Occurrence) -> list[Occurrence]:
        catalog = self.catalog()
        observed = self.attribution.observe(occurrence, catalog.workspace)
        if observed is not None and observed.revoked:
            with_rewards = [
                p.playbook.id for p in catalog.playbooks if p.playbook.reward
            ]
            self.rewards.revoke(with_rewards, observed.revoked, observed.revoked_reason)
        if observed is not None and observed.credit and observed.credit.playbook:
            credit = observed.credit
            loaded = catalog.get(credit.playbook)
            playbook = loaded.playbook if loaded is not None else None
            self.rewards.earn(credit, observed.event, occurrence.time, playbook)
            if credit.is_credited and playbook is not None:
                return self._reinforce_referrer(occurrence, credit, playbook)
            return []
        if occurrence.source in INVITE_EVENTS:
            return []
        return self._reinforce_user(occurrence, catalog)

    def _reinforce_referrer(
        self, occurrence: Occurrence, credit: Credit, playbook: Playbook
    ) -> list[Occurrence]:
        step = f"reinforcement:{occurrence.source}"
        if not playbook.enabled or not _has_step(playbook, step):
            return []
        facts = self.facts_of(credit.referrer, credit.account, credit.delivery_key)
        return [
            occurrences.reinforcing(
                occurrence.occurrence_id,
                playbook.id,
                occurrence.source,
                credit.referrer,
                credit.account,
                occurrence.time,
                Facts(facts.user, facts.account, dict(occurrence.facts.event)),
            )
        ]

    def _reinforce_user(
        self, occurrence: Occurrence, catalog: Catalog
    ) -> list[Occurrence]:
        """Follow-ups of `occurrence.source` for playbooks that nudged its user."""
        step = f"reinforcement:{occurrence.source}"
        candidates = [
            p.playbook
            for p in catalog.playbooks
            if p.playbook.enabled and _has_step(p.playbook, step)
        ]
        if not candidates:
            return []
        keys = [self.reentry_key(p.id, occurrence.user_id) for p in candidates]
        nudged = cast(list[str | None], self.store.redis.mget(keys))
        return [
            occurrences.reinforcing(
                occurrence.occurrence_id,
                playbook.id,
                occurrence.source,
                occurrence.user_id,
                occurrence.account_id,
                occurrence.time,
                occurrence.facts,
            )
            for playbook, last in zip(candidates, nudged, strict=True)
            if last is not None
        ]

    def facts_of(self, user_id: str, account_id: str, delivery_key: str) -> Facts:
        """What is known of a referrer: the facts their nudge was made with."""
        if delivery_key:
            entry = self.deliveries.get(delivery_key)
            found = (
                self.occurrences.load(entry.fields.get("occurrence", ""))
                if entry is not None
                else None
            )
            if found is not None:
                return Facts(found.facts.user, found.facts.account, {})
        return Facts({"id": user_id}, {"id": account_id}, {})

    # --- grants -----------------------------------------------------------------

    def grants_due(self, now_ms: int) -> list[str]:
        """The grants whose hold ended and that may be given now."""
        catalog = self.catalog()
        policy = catalog.workspace.rewards

        def playbook_of(playbook_id: str) -> Playbook | None:
            loaded = catalog.get(playbook_id)
            return loaded.playbook if loaded is not None else None

        def farming(referrer: str, at_ms: int) -> bool:
            invitees = self.attribution.invitees(referrer)
            activated = self.attribution.activated_invitees(referrer)
            return is_farming(invitees, activated, policy, at_ms)

        return self.rewards.due(
            now_ms, playbook_of, self.attribution.credit_of, farming
        )

    def after_grant(self, grant_id: str) -> list[Occurrence]:
        """The `reward_granted` follow-ups of a grant given: its referrer's."""
        entry = self.rewards.ledger.get(grant_id)
        if entry is None or entry.fields.get("step") != "reward:referrer":
            return []
        loaded = self.catalog().get(entry.fields.get("playbook", ""))
        step = f"reinforcement:{REWARD_GRANTED}"
        if loaded is None or not _has_step(loaded.playbook, step):
            return []
        fields = entry.fields
        facts = self.facts_of(
            fields.get("user", ""),
            fields.get("account", ""),
            fields.get("delivery_key", ""),
        )
        properties = {"grant": fields.get("grant", "")}
        if fields.get("amount"):
            properties["amount"] = fields["amount"]
        follow_up = occurrences.reinforcing(
            grant_id,
            loaded.playbook.id,
            REWARD_GRANTED,
            fields.get("user", ""),
            fields.get("account", ""),
            _at(fields.get("updated_ms", "")),
            Facts(facts.user, facts.account, properties),
        )
        self.occurrences.save(follow_up)
        return [follow_up]

    def _granted(self, entry: Entry) -> None:
        """Note a grant given, once: for the analytics vendor and the metrics."""
        fields = entry.fields
        if self.journal is not None:
            pipe = self.store.redis.pipeline(transaction=False)
            self.journal.note_in(pipe, "granted", entry.delivery_key)
            pipe.execute()
        self.attribution.log(
            REWARD_GRANTED,
            entry.delivery_key,
            _at(fields.get("updated_ms", "")),
            user=fields.get("user", ""),
            referrer=fields.get("referrer", ""),
            invitee=fields.get("invitee", ""),
            account=fields.get("account", ""),
            playbook=fields.get("playbook", ""),
            party=fields.get("step", "").removeprefix("reward:"),
            grant=fields.get("grant", ""),
        )


def _has_step(playbook: Playbook, step: str) -> bool:
    return any(step == f"reinforcement:{r.on}" for r in playbook.reinforcement)


def _at(ms: str) -> datetime:
    if ms.isdigit():
        return datetime.fromtimestamp(int(ms) / 1000, UTC)
    return datetime.now(UTC)

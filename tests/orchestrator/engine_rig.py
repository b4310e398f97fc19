"""A small engine for tests: a playbook folder, two recording vendors, a fixed
clock, and the schedule captured instead of enqueued."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from integrations.base import ProductEvent, RenderedNudge, Sent
from orchestrator import occurrences
from orchestrator.engine import Engine
from orchestrator.loader import load
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

NOW = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # a Wednesday afternoon in London

WORKSPACE = """\
name: engine tests
time_zone: Europe/London
activation:
  property: user.activated_at
caps:
  per_user: 1 per 7d
"""

PLAYBOOK = """\
id: {id}
description: Ask for a reviewer.
owner: growth
priority: {priority}
trigger:
  event: {event}
holdout: 0%
nudge:
  channel: intercom
  fallback: [braze]
  intercom: {{from_admin: 1}}
  braze: {{campaign: c-1}}
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  on_ambiguous: {on_ambiguous}
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
"""


@dataclass
class Vendor:
    """A channel that records what it is given, and can be told how to answer."""

    name: ClassVar[str] = "vendor"
    answer: Callable[[RenderedNudge], None] = lambda nudge: None
    delay_s: float = 0.0
    sent: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, nudge: RenderedNudge) -> Sent:
        time.sleep(self.delay_s)
        self.answer(nudge)
        with self.lock:
            self.sent.append(nudge.delivery_key)
        return Sent(vendor_id=f"v-{len(self.sent)}")


@dataclass
class Rig:
    engine: Engine
    intercom: Vendor
    braze: Vendor
    scheduled: list[tuple[str, int]]

    def event(
        self,
        user_id: str,
        name: str = "pack_uploaded",
        account: dict[str, object] | None = None,
        **user: object,
    ) -> str:
        profile = {"first_name": "Ada", "activated_at": "2026-01-01", **user}
        event = ProductEvent(
            event_id=f"evt-{user_id}-{name}",
            name=name,
            user_id=user_id,
            time=NOW,
            account_id="acct-1",
            account=account or {},
            user=profile,
        )
        occurrence = occurrences.from_event(event)
        self.engine.occurrences.save(occurrence)
        return occurrence.occurrence_id


def make_rig(
    store: Store,
    tmp_path: Path,
    playbooks: list[dict[str, object]] | None = None,
    workspace: str = WORKSPACE,
) -> Rig:
    folder = tmp_path / "playbooks"
    folder.mkdir(exist_ok=True)
    (folder / "referloop.yaml").write_text(workspace)
    defaults = {"priority": 0, "event": "pack_uploaded", "on_ambiguous": "hold"}
    for spec in playbooks or [{"id": "pack-reviewers"}]:
        text = PLAYBOOK.format(**{**defaults, **spec})
        (folder / f"{spec['id']}.yaml").write_text(text)
    catalog = load([folder])
    assert not catalog.has_errors, catalog.problems

    intercom, braze = Vendor(), Vendor()
    scheduled: list[tuple[str, int]] = []
    engine = Engine(
        store,
        catalog,
        InviteSigner(["k" * 40]),
        {"intercom": intercom, "braze": braze},
        lambda keys, delay: scheduled.extend((key, delay) for key in keys),
        lambda: NOW,
    )
    return Rig(engine, intercom, braze, scheduled)

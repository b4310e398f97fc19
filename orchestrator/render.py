"""Render a playbook's nudge for one recipient: Liquid, the signed invite link, data.

The worker and `referloop preview` both render here, so a preview shows exactly
what a delivery will carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from integrations.base import Recipient, RenderedNudge
from orchestrator import templates
from orchestrator.errors import UsageError
from orchestrator.model import Nudge, Playbook, Workspace
from orchestrator.tokens import InviteClaims, InviteSigner, invite_link
from orchestrator.units import humanize_duration


@dataclass(frozen=True)
class Facts:
    """The user, account and event properties a nudge is rendered with."""

    user: Mapping[str, Any]
    account: Mapping[str, Any]
    event: Mapping[str, Any]


@dataclass(frozen=True)
class Rendered:
    """A rendered nudge, with its invite link and trust wording."""

    nudge: RenderedNudge
    invite_link: str
    trust: str


def render(
    playbook: Playbook,
    workspace: Workspace,
    facts: Facts,
    signer: InviteSigner,
    *,
    step: str,
    channel_name: str,
    key: str,
    now: datetime,
) -> Rendered:
    """Render `step` of `playbook` for `facts`, signing its invite link.

    Raises:
        TemplateError: a template fails for these facts.
    """
    nudge = nudge_of(playbook, step)
    expires_at = now + nudge.invite.expires
    claims = InviteClaims(
        referrer=str(facts.user["id"]),
        account=str(facts.account.get("id", "")),
        playbook=playbook.id,
        variant=nudge.variant,
        delivery_key=key,
        share=nudge.invite.share.value,
        expires_at=int(expires_at.timestamp()),
    )
    link = invite_link(workspace.invite_url, signer.sign(claims))
    context = _context(playbook, nudge, facts, step, link, now, expires_at)
    rendered = _render(nudge, context, key, playbook, step, facts, channel_name)
    return Rendered(rendered, link, str(context["trust"]))


def steps(playbook: Playbook) -> list[str]:
    """The names of a playbook's steps: `nudge`, then `reinforcement:<event>`."""
    return ["nudge", *(f"reinforcement:{step.on}" for step in playbook.reinforcement)]


def nudge_of(playbook: Playbook, step: str) -> Nudge:
    if step == "nudge":
        return playbook.nudge
    for reinforcement in playbook.reinforcement:
        if step == f"reinforcement:{reinforcement.on}":
            return reinforcement.nudge
    choices = ", ".join(steps(playbook))
    raise UsageError(f"no step `{step}` in `{playbook.id}`; use {choices}")


def event_of(playbook: Playbook, step: str) -> str | None:
    if step == "nudge":
        return playbook.trigger.event
    return step.removeprefix("reinforcement:")


def channel_settings(name: str, workspace: Workspace) -> dict[str, Any]:
    vendors = workspace.vendors
    known: dict[str, dict[str, Any]] = {
        "customerio": {"region": vendors.customerio.region},
        "braze": {"rest_url": vendors.braze.rest_url},
        "intercom": {"region": vendors.intercom.region},
    }
    return known.get(name, {})


def _context(
    playbook: Playbook,
    nudge: Nudge,
    data: Facts,
    step: str,
    link: str,
    moment: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    event = event_of(playbook, step)
    trigger: dict[str, Any]
    if event is not None:
        trigger = {"name": event, "time": moment.isoformat(), "properties": data.event}
    else:
        trigger = {"cohort": playbook.trigger.cohort, "entered_at": moment.isoformat()}
    context: dict[str, Any] = {
        "user": dict(data.user),
        "account": dict(data.account),
        "trigger": trigger,
        "invite": {
            "link": link,
            "share": nudge.invite.share.value,
            "role": nudge.invite.role,
            "expires_at": expires_at.isoformat(),
            "expires_in": humanize_duration(nudge.invite.expires),
        },
        "playbook": {"id": playbook.id, "variant": nudge.variant, "step": step},
    }
    if playbook.reward is not None:
        context["reward"] = playbook.reward.model_dump(mode="json", by_alias=True)
    context["trust"] = templates.render(nudge.trust, context, field="trust")
    return context


def _render(
    nudge: Nudge,
    context: dict[str, Any],
    key: str,
    playbook: Playbook,
    step: str,
    data: Facts,
    name: str,
) -> RenderedNudge:
    subject = nudge.message.subject
    fields = {
        key: templates.render(value, context, field=f"data.{key}")
        for key, value in nudge.data.items()
    }
    message_data = {
        "invite_link": context["invite"]["link"],
        "share": nudge.invite.share.value,
        "trust": context["trust"],
        **fields,
    }
    email = data.user.get("email")
    recipient = Recipient(
        user_id=str(data.user["id"]),
        account_id=str(data.account["id"]),
        email=str(email) if email else None,
        time_zone=str(data.user.get("time_zone") or "") or None,
    )
    return RenderedNudge(
        delivery_key=key,
        playbook_id=playbook.id,
        step=step,
        variant=nudge.variant,
        recipient=recipient,
        subject=templates.render(subject, context, field="message.subject")
        if subject
        else None,
        body=templates.render(nudge.message.body, context, field="message.body"),
        data=message_data,
        reference=nudge.reference(name),
    )

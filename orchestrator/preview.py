"""Render a playbook's nudge for sample or given data, exactly as it would be sent.

A preview builds the same vendor request the worker would send and the message the
recipient would read, with a signed invite link, and sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from integrations.base import Recipient, RenderedNudge, VendorRequest
from integrations.registry import channel
from orchestrator import templates
from orchestrator.errors import PlaybookError, UsageError
from orchestrator.keys import delivery_key
from orchestrator.model import Nudge, Playbook, Workspace
from orchestrator.problems import START, Problem, did_you_mean
from orchestrator.tokens import InviteClaims, InviteSigner, invite_link
from orchestrator.units import humanize_duration
from orchestrator.yamlsource import YamlProblem, parse

SAMPLE_USER = {"id": "u_sample", "email": "dana.reviewer@example.com"}
SAMPLE_ACCOUNT = {"id": "acct_sample"}
SAMPLE_OCCURRENCE = "preview"
SAMPLE_KEYS = ("user", "account", "event")


@dataclass(frozen=True)
class Sample:
    """The user, account and event properties a preview renders with."""

    user: Mapping[str, Any]
    account: Mapping[str, Any]
    event: Mapping[str, Any]


@dataclass(frozen=True)
class Preview:
    """A nudge as the vendor would receive it and as the recipient would read it."""

    playbook_id: str
    step: str
    channel: str
    request: VendorRequest
    nudge: RenderedNudge
    invite_link: str
    trust: str
    signed_with_throwaway_key: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook_id,
            "step": self.step,
            "channel": self.channel,
            "delivery_key": self.nudge.delivery_key,
            "request": {
                "method": self.request.method,
                "url": self.request.url,
                "headers": dict(self.request.headers),
                "json": self.request.json,
            },
            "message": {"subject": self.nudge.subject, "body": self.nudge.body},
            "invite_link": self.invite_link,
            "trust": self.trust,
            "signed_with_throwaway_key": self.signed_with_throwaway_key,
        }


def steps(playbook: Playbook) -> list[str]:
    """The names of a playbook's steps: `nudge`, then `reinforcement:<event>`."""
    return ["nudge", *(f"reinforcement:{step.on}" for step in playbook.reinforcement)]


def sample(workspace: Workspace, playbook: Playbook, step: str) -> Sample:
    """Sample data from the workspace's declared fields."""
    event = _event_of(playbook, step)
    user = {**SAMPLE_USER, "time_zone": workspace.time_zone, **workspace.fields.user}
    account = {**SAMPLE_ACCOUNT, **workspace.fields.account}
    properties = dict(workspace.fields.events.get(event or "", {}))
    return Sample(user, account, properties)


def read_sample(path: Path, base: Sample) -> Sample:
    """Override `base` with the `user`, `account` and `event` of a YAML or JSON file."""
    try:
        data = parse(path.read_text(encoding="utf-8")).data
    except (OSError, UnicodeError) as exc:
        raise _sample_error(path, f"cannot be read ({exc})") from exc
    except YamlProblem as exc:
        raise _sample_error(path, exc.message, exc) from exc

    if not isinstance(data, dict):
        raise _sample_error(path, "expected a mapping with `user`, `account`, `event`")
    for key, value in data.items():
        if key not in SAMPLE_KEYS:
            hint = did_you_mean(key, SAMPLE_KEYS) or f"; write {', '.join(SAMPLE_KEYS)}"
            raise _sample_error(path, f"unknown key `{key}`{hint}")
        if not isinstance(value, dict):
            raise _sample_error(path, f"`{key}` must be a mapping of fields")
    return Sample(
        {**base.user, **data.get("user", {})},
        {**base.account, **data.get("account", {})},
        {**base.event, **data.get("event", {})},
    )


def build(
    playbook: Playbook,
    workspace: Workspace,
    data: Sample,
    signer: InviteSigner,
    *,
    step: str = "nudge",
    channel_name: str | None = None,
    now: datetime | None = None,
) -> Preview:
    """Render `step` of `playbook` for `data` and build its vendor request."""
    nudge = _nudge_of(playbook, step)
    name = channel_name or nudge.channel
    if name not in nudge.channels():
        choices = ", ".join(nudge.channels())
        message = (
            f"`{playbook.id}` does not send `{step}` through `{name}`; use {choices}"
        )
        raise UsageError(message)

    moment = now or datetime.now(UTC)
    user_id, account_id = str(data.user["id"]), str(data.account["id"])
    key = delivery_key(playbook.id, step, f"user:{user_id}", SAMPLE_OCCURRENCE)
    expires_at = moment + nudge.invite.expires
    claims = InviteClaims(
        referrer=user_id,
        account=account_id,
        playbook=playbook.id,
        variant=nudge.variant,
        delivery_key=key,
        share=nudge.invite.share.value,
        expires_at=int(expires_at.timestamp()),
    )
    link = invite_link(workspace.invite_url, signer.sign(claims))
    context = _context(playbook, nudge, data, step, link, moment, expires_at)
    rendered = _render(nudge, context, key, playbook, step, data, name)
    built = channel(name, **_settings(name, workspace)).build_request(rendered)
    return Preview(
        playbook.id,
        step,
        name,
        built,
        rendered,
        link,
        str(context["trust"]),
        signer.is_ephemeral,
    )


def _nudge_of(playbook: Playbook, step: str) -> Nudge:
    if step == "nudge":
        return playbook.nudge
    for reinforcement in playbook.reinforcement:
        if step == f"reinforcement:{reinforcement.on}":
            return reinforcement.nudge
    choices = ", ".join(steps(playbook))
    raise UsageError(f"no step `{step}` in `{playbook.id}`; use {choices}")


def _event_of(playbook: Playbook, step: str) -> str | None:
    if step == "nudge":
        return playbook.trigger.event
    return step.removeprefix("reinforcement:")


def _context(
    playbook: Playbook,
    nudge: Nudge,
    data: Sample,
    step: str,
    link: str,
    moment: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    event = _event_of(playbook, step)
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
    data: Sample,
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


def _settings(name: str, workspace: Workspace) -> dict[str, Any]:
    vendors = workspace.vendors
    known: dict[str, dict[str, Any]] = {
        "customerio": {"region": vendors.customerio.region},
        "braze": {"rest_url": vendors.braze.rest_url},
        "intercom": {"region": vendors.intercom.region},
    }
    return known.get(name, {})


def _sample_error(
    path: Path, message: str, exc: YamlProblem | None = None
) -> PlaybookError:
    position = exc.position if exc is not None else START
    return PlaybookError([Problem(path, position, message, code="sample")])

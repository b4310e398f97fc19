"""Render a playbook's nudge for sample or given data, exactly as it would be sent.

A preview builds the same vendor request the worker would send and the message the
recipient would read, with a signed invite link, and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from integrations.base import RenderedNudge, VendorRequest
from integrations.registry import channel
from orchestrator import render
from orchestrator.errors import PlaybookError, UsageError
from orchestrator.keys import delivery_key
from orchestrator.model import Playbook, Workspace
from orchestrator.problems import START, Problem, did_you_mean
from orchestrator.render import Facts
from orchestrator.tokens import InviteSigner
from orchestrator.yamlsource import YamlProblem, parse

SAMPLE_USER = {"id": "u_sample", "email": "dana.reviewer@example.com"}
SAMPLE_ACCOUNT = {"id": "acct_sample"}
SAMPLE_OCCURRENCE = "preview"
SAMPLE_KEYS = ("user", "account", "event")


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


def sample(workspace: Workspace, playbook: Playbook, step: str) -> Facts:
    """Sample facts from the workspace's declared fields."""
    event = render.event_of(playbook, step)
    user = {**SAMPLE_USER, "time_zone": workspace.time_zone, **workspace.fields.user}
    account = {**SAMPLE_ACCOUNT, **workspace.fields.account}
    properties = dict(workspace.fields.events.get(event or "", {}))
    return Facts(user, account, properties)


def read_sample(path: Path, base: Facts) -> Facts:
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
    return Facts(
        {**base.user, **data.get("user", {})},
        {**base.account, **data.get("account", {})},
        {**base.event, **data.get("event", {})},
    )


def build(
    playbook: Playbook,
    workspace: Workspace,
    data: Facts,
    signer: InviteSigner,
    *,
    step: str = "nudge",
    channel_name: str | None = None,
    now: datetime | None = None,
) -> Preview:
    """Render `step` of `playbook` for `data` and build its vendor request."""
    nudge = render.nudge_of(playbook, step)
    name = channel_name or nudge.channel
    if name not in nudge.channels():
        choices = ", ".join(nudge.channels())
        message = (
            f"`{playbook.id}` does not send `{step}` through `{name}`; use {choices}"
        )
        raise UsageError(message)

    moment = now or datetime.now(UTC)
    user_id = str(data.user["id"])
    key = delivery_key(playbook.id, step, f"user:{user_id}", SAMPLE_OCCURRENCE)
    made = render.render(
        playbook,
        workspace,
        data,
        signer,
        step=step,
        channel_name=name,
        key=key,
        now=moment,
    )
    settings = render.channel_settings(name, workspace)
    built = channel(name, **settings).build_request(made.nudge)
    return Preview(
        playbook.id,
        step,
        name,
        built,
        made.nudge,
        made.invite_link,
        made.trust,
        signer.is_ephemeral,
    )


def _sample_error(
    path: Path, message: str, exc: YamlProblem | None = None
) -> PlaybookError:
    position = exc.position if exc is not None else START
    return PlaybookError([Problem(path, position, message, code="sample")])

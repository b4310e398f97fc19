"""Checks that need more than one field at a time, or more than one playbook.

Each check returns problems positioned at the line the author must change. The
loader runs these only on playbooks whose shape is already valid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from integrations.registry import channel_names, reference_models
from orchestrator import templates
from orchestrator.model import Playbook, Workspace, is_sign_up
from orchestrator.problems import Position, Problem, Severity, did_you_mean
from orchestrator.units import Cap
from orchestrator.yamlsource import Document, Path_

if TYPE_CHECKING:
    from orchestrator.loader import LoadedPlaybook

HOLDOUT_WARNING_ABOVE = 50.0
LOCAL_CHANNEL = "outbox"
OUTBOX_WARNING = (
    "`outbox` writes nudges to a file on this machine: fine for trying a playbook out, "
    "not for production, where names and messages would sit on a server's disk"
)
WHY_VALUE_FIRST = (
    "people invite colleagues to a product once it has helped them; asked earlier, "
    "they ignore the nudge, and a colleague invited into an empty workspace rarely "
    "comes back"
)


@dataclass(frozen=True)
class _Where:
    """The file being checked, to turn paths into positioned problems."""

    path: Path
    document: Document
    text: str

    def error(
        self, at: Path_, message: str, code: str, *, key: bool = False
    ) -> Problem:
        position = self.document.position(at, of_key=key)
        return Problem(self.path, position, message, code=code)

    def warning(
        self, at: Path_, message: str, code: str, *, key: bool = False
    ) -> Problem:
        position = self.document.position(at, of_key=key)
        return Problem(self.path, position, message, Severity.WARNING, code)


def check_playbook(
    playbook: Playbook,
    document: Document,
    text: str,
    workspace: Workspace | None,
    path: Path,
) -> list[Problem]:
    """Every problem of one playbook that its shape alone does not show.

    With no usable workspace (its file is broken and reported), the checks that
    depend on it are left out.
    """
    where = _Where(path, document, text)
    problems = _check_conditions(playbook, where)
    problems += _check_reinforcement(playbook, where)
    problems += _check_caps(playbook, where)
    problems += _check_holdout(playbook, where)
    if workspace is not None:
        problems += _check_activation(playbook, workspace, where)
        problems += _global_caps(playbook, workspace, where)
        problems += _check_hours(playbook, workspace, where)
    return problems


def check_document(
    document: Document, text: str, workspace: Workspace | None, path: Path
) -> list[Problem]:
    """Channel and template problems, found even when the shape is wrong elsewhere.

    These read the raw data, so that an author sees them in the same pass as the
    shape errors instead of one round later.
    """
    data = document.data if isinstance(document.data, dict) else {}
    where = _Where(path, document, text)
    problems: list[Problem] = []
    for prefix, nudge in _raw_nudges(data):
        problems += _check_channels(nudge, prefix, where)
        scope = _scope(data, prefix, workspace or Workspace())
        problems += _check_templates(nudge, prefix, scope, where)
    return problems


def check_overlaps(playbooks: Sequence[LoadedPlaybook]) -> list[Problem]:
    """Two enabled playbooks on the same trigger need different priorities."""
    problems: list[Problem] = []
    enabled = [p for p in playbooks if p.playbook.enabled]
    for first, second in combinations(enabled, 2):
        a, b = first.playbook, second.playbook
        if a.trigger.source != b.trigger.source or a.priority != b.priority:
            continue
        position = second.document.position(("trigger",), of_key=True)
        message = (
            f"`{b.id}` and `{a.id}` ({first.path.name}) both fire on "
            f"`{b.trigger.source}` with priority {b.priority}; give one a higher "
            "`priority` so that the order is yours, not the file names'"
        )
        problems.append(Problem(second.path, position, message, code="overlap"))
    return problems


def _raw_nudges(data: dict[str, Any]) -> Iterator[tuple[Path_, dict[str, Any]]]:
    if isinstance(data.get("nudge"), dict):
        yield ("nudge",), data["nudge"]
    steps = data.get("reinforcement")
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict) and isinstance(step.get("nudge"), dict):
            yield ("reinforcement", index, "nudge"), step["nudge"]


def _text_list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str)]


# --- channels --------------------------------------------------------------------


def _check_channels(
    nudge: dict[str, Any], prefix: Path_, where: _Where
) -> list[Problem]:
    known = channel_names()
    needs_reference = reference_models()
    used = _text_list(nudge.get("channel"))[:1] + _text_list(nudge.get("fallback"))
    problems: list[Problem] = []
    for index, name in enumerate(used):
        at = (*prefix, "channel") if index == 0 else (*prefix, "fallback", index - 1)
        if name not in known:
            hint = did_you_mean(name, known) or f"; write one of {', '.join(known)}"
            problems.append(where.error(at, f"no channel `{name}`{hint}", "channel"))
        elif name in used[:index]:
            problems.append(where.error(at, f"`{name}` is listed twice", "channel"))
        elif name == LOCAL_CHANNEL:
            problems.append(where.warning(at, OUTBOX_WARNING, "channel"))
        elif name in needs_reference and name not in nudge:
            message = (
                f"the channel `{name}` has no vendor reference: add `{name}:` under "
                "`nudge` with the message to send (see docs/playbooks.md)"
            )
            problems.append(where.error(at, message, "reference"))

    has_channel = isinstance(nudge.get("channel"), str)  # else its own error says so
    for name in needs_reference:
        if has_channel and name in nudge and name not in used:
            message = (
                f"`{name}:` is given but `{name}` is not the channel or a fallback"
            )
            at = (*prefix, name)
            problems.append(where.warning(at, message, "reference", key=True))
    return problems + _check_intercom_subject(nudge, used, prefix, where)


def _check_intercom_subject(
    nudge: dict[str, Any], used: list[str], prefix: Path_, where: _Where
) -> list[Problem]:
    reference = nudge.get("intercom")
    message_ = nudge.get("message")
    if "intercom" not in used or not isinstance(reference, dict):
        return []
    has_subject = isinstance(message_, dict) and message_.get("subject")
    if reference.get("message_type") != "email" or has_subject:
        return []
    message = "an Intercom email needs a subject: add `subject:` under `message`"
    return [where.error((*prefix, "message"), message, "reference", key=True)]


# --- templates -------------------------------------------------------------------


def _check_templates(
    nudge: dict[str, Any], prefix: Path_, scope: templates.Scope, where: _Where
) -> list[Problem]:
    problems: list[Problem] = []
    for at, source in _template_fields(nudge, prefix):
        for issue in templates.check(source, scope):
            position = _template_position(where, at, issue)
            problems.append(Problem(where.path, position, issue.message, code="liquid"))
    return problems


def _scope(
    data: dict[str, Any], prefix: Path_, workspace: Workspace
) -> templates.Scope:
    raw = data.get("trigger")
    trigger: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = "cohort" if "cohort" in trigger else "event"
    event = trigger.get("event")
    if prefix != ("nudge",):
        kind, event = "event", data["reinforcement"][prefix[1]].get("on")
    properties = workspace.fields.events.get(str(event), {})
    return templates.Scope(
        trigger_kind=kind,
        user_fields=frozenset(workspace.fields.user),
        account_fields=frozenset(workspace.fields.account),
        event_properties=frozenset(properties),
        has_reward=isinstance(data.get("reward"), dict),
    )


def _template_fields(
    nudge: dict[str, Any], prefix: Path_
) -> Iterator[tuple[Path_, str]]:
    if isinstance(nudge.get("trust"), str):
        yield (*prefix, "trust"), nudge["trust"]
    message = nudge.get("message")
    for key in ("subject", "body"):
        if isinstance(message, dict) and isinstance(message.get(key), str):
            yield (*prefix, "message", key), message[key]
    data = nudge.get("data")
    for key, value in data.items() if isinstance(data, dict) else []:
        if isinstance(value, str):
            yield (*prefix, "data", key), value


def _template_position(
    where: _Where, at: Path_, issue: templates.TemplateIssue
) -> Position:
    """The file position of a place inside a template written at `at`."""
    start = where.document.position(at)
    lines = where.text.splitlines()
    if at in where.document.block_scalars:
        line = start.line + issue.line
    elif issue.line == 1:
        opening = lines[start.line - 1][start.column - 1 : start.column]
        quote = 1 if opening in ("'", '"') else 0
        return Position(start.line, start.column + quote + issue.column)
    else:
        line = start.line + issue.line - 1
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    indent = len(text) - len(text.lstrip(" "))
    return Position(line, indent + issue.column + 1)


# --- value before the ask, audience ------------------------------------------


def _check_activation(
    playbook: Playbook, workspace: Workspace, where: _Where
) -> list[Problem]:
    gate = playbook.activation or workspace.activation
    if gate is None:
        message = (
            "no activation gate: add `activation:` (e.g. `activation: {property: "
            "user.activated_at}`) or a default in referloop.yaml, because "
            f"{WHY_VALUE_FIRST}"
        )
        return [where.error(("trigger",), message, "activation", key=True)]
    if gate.skip is None:
        return []

    at = ("activation", "skip")
    if is_sign_up(playbook.trigger.event):
        message = (
            f"this playbook would ask at sign-up (`{playbook.trigger.event}`) with no "
            "activation gate; gate it with `activation: {property: ...}` or trigger "
            "on a later event"
        )
        return [where.error(at, message, "activation")]
    return [
        where.warning(at, f"asking before activation: {WHY_VALUE_FIRST}", "activation")
    ]


def _check_conditions(playbook: Playbook, where: _Where) -> list[Problem]:
    problems: list[Problem] = []
    if playbook.trigger.kind == "cohort":
        for key in playbook.trigger.where:
            if key.startswith("event."):
                message = (
                    f"`{key}`: a cohort trigger has no event; use `user.` or `account.`"
                    " fields, or trigger on an `event:`"
                )
                problems.append(
                    where.error(
                        ("trigger", "where", key), message, "condition", key=True
                    )
                )
    for key in playbook.audience.account:
        if not key.startswith("account."):
            message = f"`{key}`: audience account conditions take `account.` fields"
            problems.append(
                where.error(
                    ("audience", "account", key), message, "condition", key=True
                )
            )
    return problems


def _check_reinforcement(playbook: Playbook, where: _Where) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, step in enumerate(playbook.reinforcement):
        if step.on in seen:
            message = (
                f"a second reinforcement on `{step.on}`; merge the two steps, or use "
                "another event"
            )
            problems.append(
                where.error(("reinforcement", index, "on"), message, "step")
            )
        seen.add(step.on)
    return problems


# --- caps, hours, holdout --------------------------------------------------------


def _check_caps(playbook: Playbook, where: _Where) -> list[Problem]:
    limits = playbook.limits
    problems = _caps_of_one_level(limits.per_user, ("limits", "per_user"), where)
    problems += _caps_of_one_level(limits.per_account, ("limits", "per_account"), where)
    problems += _caps_under(
        limits.per_user,
        ("limits", "per_user"),
        limits.per_account,
        "per account",
        where,
    )

    if playbook.reward is not None:
        caps = playbook.reward.caps
        referrer = ("reward", "caps", "per_referrer")
        account = ("reward", "caps", "per_account")
        problems += _caps_of_one_level(caps.per_referrer, referrer, where)
        problems += _caps_of_one_level(caps.per_account, account, where)
        problems += _caps_under(
            caps.per_referrer, referrer, caps.per_account, "per account", where
        )
    return problems


def _caps_of_one_level(caps: Sequence[Cap], at: Path_, where: _Where) -> list[Problem]:
    problems: list[Problem] = []
    for index, cap in enumerate(caps):
        if cap.count == 0:
            message = f"`{cap}` never allows a send; use `enabled: false` to pause"
            problems.append(where.error((*at, index), message, "cap"))
    for (i, a), (j, b) in combinations(enumerate(caps), 2):
        if a == b:
            problems.append(where.error((*at, j), f"`{b}` is listed twice", "cap"))
            continue
        for index, loose, strict in ((i, a, b), (j, b, a)):
            if loose != strict and loose.never_binds_beside(strict):
                message = _contradiction(loose, strict, "beside it")
                problems.append(where.error((*at, index), message, "cap"))
    return problems


def _caps_under(
    inner: Sequence[Cap],
    at: Path_,
    outer: Sequence[Cap],
    outer_name: str,
    where: _Where,
) -> list[Problem]:
    """A cap per person that allows more than the cap of their account never binds."""
    problems: list[Problem] = []
    for index, cap in enumerate(inner):
        strict = next((o for o in outer if cap.never_binds_beside(o)), None)
        if strict is not None and cap != strict:
            message = _contradiction(cap, strict, outer_name)
            problems.append(where.error((*at, index), message, "cap"))
    return problems


def _global_caps(
    playbook: Playbook, workspace: Workspace, where: _Where
) -> list[Problem]:
    problems: list[Problem] = []
    pairs: Any = (
        ("per_user", playbook.limits.per_user, workspace.caps.per_user),
        ("per_account", playbook.limits.per_account, workspace.caps.per_account),
    )
    for name, local, shared in pairs:
        for index, cap in enumerate(local):
            stricter = (s for s in shared if s != cap and cap.never_binds_beside(s))
            strict = next(stricter, None)
            if strict is None:
                continue
            message = (
                f"`{cap}` never holds a send back: the workspace cap `{strict}` "
                "across all playbooks is stricter"
            )
            problems.append(where.warning(("limits", name, index), message, "cap"))
    return problems


def _contradiction(loose: Cap, strict: Cap, beside: str) -> str:
    return (
        f"caps contradict: `{loose}` can never be reached because `{strict}` "
        f"({beside}) allows fewer over as long a window; remove `{loose}` or raise "
        f"`{strict}`"
    )


def _check_hours(
    playbook: Playbook, workspace: Workspace, where: _Where
) -> list[Problem]:
    window = playbook.limits.send_window
    quiet = playbook.limits.quiet_hours or workspace.quiet_hours
    if window is None or window.hours is None or quiet is None:
        return []
    if not quiet.covers(window.hours):
        return []
    message = (
        f"the send window {window.hours} lies inside the quiet hours {quiet}; "
        "nothing could ever be sent"
    )
    return [where.error(("limits", "send_window", "hours"), message, "hours")]


def _check_holdout(playbook: Playbook, where: _Where) -> list[Problem]:
    if playbook.holdout == 0:
        message = "holdout is 0%: nobody is held out, so lift cannot be measured"
        return [where.warning(("holdout",), message, "holdout")]
    if playbook.holdout > HOLDOUT_WARNING_ABOVE:
        message = f"holdout {playbook.holdout:g}% nudges fewer users than it holds out"
        return [where.warning(("holdout",), message, "holdout")]
    return []

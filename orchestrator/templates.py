"""Liquid templates of nudges: a sandboxed environment and what a template may read.

A template sees `user`, `account`, `trigger`, `invite`, `trust` and `playbook`, and
`reward` when the playbook has one. It reads no files and no environment, and its
loops and output are bounded, because playbooks are edited by many hands.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from liquid import BoundTemplate, Environment
from liquid.exceptions import LiquidError

from orchestrator.problems import did_you_mean

MAX_LOOP_ITERATIONS = 1_000
MAX_OUTPUT_CHARS = 64 * 1024
MAX_CONTEXT_DEPTH = 20

BUILT_IN_USER_FIELDS = frozenset({"id", "email", "time_zone"})
BUILT_IN_ACCOUNT_FIELDS = frozenset({"id"})
TRIGGER_FIELDS = {
    "event": frozenset({"name", "time", "properties"}),
    "cohort": frozenset({"cohort", "entered_at"}),
}
INVITE_FIELDS = frozenset({"link", "share", "role", "expires_at", "expires_in"})
PLAYBOOK_FIELDS = frozenset({"id", "variant", "step"})
REWARD_FIELDS = frozenset({"earned_on", "referrer", "invitee"})


class _Sandbox(Environment):
    """No loader (so no `include` of files), bounded loops, output and nesting."""

    loop_iteration_limit = MAX_LOOP_ITERATIONS
    output_stream_limit = MAX_OUTPUT_CHARS
    context_depth_limit = MAX_CONTEXT_DEPTH


ENVIRONMENT = _Sandbox()


@dataclass(frozen=True)
class TemplateIssue:
    """A problem in one template, at a 1-based line and 0-based column within it."""

    line: int
    column: int
    message: str


@dataclass(frozen=True)
class Scope:
    """What a template may read, for one playbook and trigger kind.

    An empty set of user or account fields means "not declared": anything goes.
    """

    trigger_kind: str
    user_fields: frozenset[str]
    account_fields: frozenset[str]
    event_properties: frozenset[str]
    has_reward: bool

    def roots(self) -> list[str]:
        roots = ["user", "account", "trigger", "invite", "trust", "playbook"]
        return [*roots, "reward"] if self.has_reward else roots

    def children(self, root: str) -> frozenset[str] | None:
        """The fields `root` has, or None when any field may be read."""
        known: dict[str, frozenset[str]] = {
            "trigger": TRIGGER_FIELDS[self.trigger_kind],
            "invite": INVITE_FIELDS,
            "playbook": PLAYBOOK_FIELDS,
            "reward": REWARD_FIELDS,
        }
        if self.user_fields:
            known["user"] = self.user_fields | BUILT_IN_USER_FIELDS
        if self.account_fields:
            known["account"] = self.account_fields | BUILT_IN_ACCOUNT_FIELDS
        return known.get(root)


def parse(source: str) -> BoundTemplate:
    """Parse `source`; raises LiquidError on a syntax error."""
    return ENVIRONMENT.from_string(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    return str(parse(source).render(**context))


def check(source: str, scope: Scope) -> list[TemplateIssue]:
    """Every syntax error or unknown variable in `source`, where it is."""
    try:
        template = parse(source)
    except LiquidError as exc:
        token = exc.token
        index = token.start_index if token is not None else -1
        if index < 0:  # the end of the template: point at its last character
            index = max(len(source.rstrip()) - 1, 0)
        return [_issue(source, index, f"Liquid: {exc.message}")]

    return list(_unknown_variables(source, template, scope))


def _unknown_variables(
    source: str, template: BoundTemplate, scope: Scope
) -> Iterator[TemplateIssue]:
    roots = scope.roots()
    for root, variables in template.analyze().globals.items():
        for variable in variables:
            text = ".".join(str(part) for part in variable.segments)
            if root not in roots:
                hint = did_you_mean(root, roots) or f"; use one of {', '.join(roots)}"
                message = f"`{{{{ {text} }}}}`: no `{root}` in this context{hint}"
                yield _issue(source, variable.span.index, message)
                continue
            child = _unknown_child(root, variable.segments, scope)
            if child is not None:
                yield _issue(
                    source, variable.span.index, f"`{{{{ {text} }}}}`: {child}"
                )


def _unknown_child(root: str, segments: list[Any], scope: Scope) -> str | None:
    children = scope.children(root)
    if children is None or len(segments) < 2 or not isinstance(segments[1], str):
        return _unknown_property(root, segments, scope)
    name = segments[1]
    if name in children:
        return _unknown_property(root, segments, scope)
    hint = did_you_mean(name, children) or f"; it has {', '.join(sorted(children))}"
    return f"`{root}` has no `{name}`{hint}"


def _unknown_property(root: str, segments: list[Any], scope: Scope) -> str | None:
    """Event properties are checked when the workspace declares the event's fields."""
    if root != "trigger" or len(segments) < 3 or segments[1] != "properties":
        return None
    name = segments[2]
    known = scope.event_properties
    if not known or not isinstance(name, str) or name in known:
        return None
    hint = did_you_mean(name, known) or f"; it has {', '.join(sorted(known))}"
    return f"the event has no property `{name}`{hint}"


def _issue(source: str, index: int, message: str) -> TemplateIssue:
    line = source.count("\n", 0, index) + 1
    column = index - (source.rfind("\n", 0, index) + 1)
    return TemplateIssue(line, column, message)

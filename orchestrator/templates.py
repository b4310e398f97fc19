"""Liquid templates of nudges: a sandboxed environment and what a template may read.

A template sees `user`, `account`, `trigger`, `invite`, `trust` and `playbook`, and
`reward` when the playbook has one. It reads no files and no environment, and its
loops and output are bounded, because playbooks are edited by many hands.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from liquid import BoundTemplate, Environment
from liquid.builtin.filters.misc import date
from liquid.exceptions import LiquidError
from liquid.filter import liquid_filter, with_environment

from orchestrator.errors import TemplateError
from orchestrator.problems import did_you_mean

PARSED_CACHE_SIZE = 512
MAX_LOOP_ITERATIONS = 1_000
MAX_OUTPUT_CHARS = 64 * 1024
MAX_CONTEXT_DEPTH = 20

_OUTPUT = re.compile(r"\{\{.*?\}\}", re.DOTALL)
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


@with_environment
@liquid_filter
def _date(value: Any, fmt: str, *, environment: Environment) -> str:
    """Liquid's `date`, reading ISO 8601 text (our own `expires_at`, `time`) with
    `datetime.fromisoformat` before falling back to dateutil, which is slow."""
    if isinstance(value, str) and not value.isdigit():
        with suppress(ValueError):
            value = datetime.fromisoformat(value)
    return str(date(value, fmt, environment=environment))


ENVIRONMENT = _Sandbox()
ENVIRONMENT.add_filter("date", _date)


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


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def parse(source: str) -> BoundTemplate:
    """Parse `source`; raises LiquidError on a syntax error.

    Parsed templates are kept: a worker renders the same few templates for every
    delivery, and parsing costs more than rendering. A parsed template holds no
    state of a render, so threads share it safely.
    """
    return ENVIRONMENT.from_string(source)


def render(source: str, context: Mapping[str, Any], *, field: str = "template") -> str:
    """Render `source`; `field` names it in the error (`nudge.message.body`).

    Raises:
        TemplateError: the template does not parse, or fails for this data
            (a loop or output limit, a filter given the wrong kind of value).
    """
    try:
        return str(parse(source).render(**context))
    except LiquidError as exc:
        raise TemplateError(f"{field}: Liquid: {exc.message}") from exc


def check(source: str, scope: Scope) -> list[TemplateIssue]:
    """Every syntax error or unknown variable in `source`, where it is."""
    try:
        template = parse(source)
    except LiquidError as exc:
        token = exc.token
        index = token.start_index if token is not None else -1
        if index < 0:
            index = _failing_output(source)
        return [_issue(source, index, f"Liquid: {exc.message}")]

    issues = list(_unknown_filters(source, template))
    return issues + list(_unknown_variables(source, template, scope))


def _unknown_filters(source: str, template: BoundTemplate) -> Iterator[TemplateIssue]:
    known = sorted(ENVIRONMENT.filters)
    for name, spans in template.analyze().filters.items():
        if name in ENVIRONMENT.filters:
            continue
        hint = did_you_mean(name, known) or ""
        for span in spans:
            yield _issue(source, span.index, f"Liquid: no filter `{name}`{hint}")


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


def _failing_output(source: str) -> int:
    """Where the first `{{ ... }}` that does not parse starts, else the last character.

    Liquid reports an error inside an expression without its place in the source.
    """
    for match in _OUTPUT.finditer(source):
        try:
            parse(match.group(0))
        except LiquidError:
            return match.start()
    return max(len(source.rstrip()) - 1, 0)


def _issue(source: str, index: int, message: str) -> TemplateIssue:
    line = source.count("\n", 0, index) + 1
    column = index - (source.rfind("\n", 0, index) + 1)
    return TemplateIssue(line, column, message)

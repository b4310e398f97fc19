"""Load playbooks and the workspace file, reporting every problem at its line.

A playbook with an error is skipped and the others load: one broken file never
stops the loops that are fine. Problems are collected, never raised one at a time,
so an author sees all of them in one pass.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator import checks
from orchestrator.model import (
    PATTERN_HINTS,
    REMOVED_IN,
    RENAMED_KEYS,
    Playbook,
    Workspace,
    members_of,
    model_at,
)
from orchestrator.problems import START, Problem, Severity, did_you_mean
from orchestrator.yamlsource import Document, Path_, YamlProblem, parse

logger = logging.getLogger(__name__)

WORKSPACE_FILE = "referloop.yaml"
SUFFIXES = (".yaml", ".yml")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class LoadedPlaybook:
    """A playbook that passed every check, with where it came from."""

    playbook: Playbook
    path: Path
    document: Document
    text: str


@dataclass
class Catalog:
    """What a load found: the usable playbooks, the workspace, and every problem."""

    workspace: Workspace
    workspace_path: Path | None
    workspace_is_valid: bool = True
    playbooks: list[LoadedPlaybook] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return any(problem.is_error for problem in self.problems)

    def get(self, playbook_id: str) -> LoadedPlaybook | None:
        return next((p for p in self.playbooks if p.playbook.id == playbook_id), None)


def discover(paths: Iterable[Path]) -> tuple[Path | None, list[Path]]:
    """Split `paths` (files or folders) into the workspace file and playbook files.

    With no workspace file among them, one beside the first playbook is used.
    """
    files: list[Path] = []
    for path in paths:
        found = sorted(path.iterdir()) if path.is_dir() else [path]
        files += [f for f in found if f.suffix in SUFFIXES or f == path]

    workspaces = [f for f in files if f.name == WORKSPACE_FILE]
    playbooks = [f for f in dict.fromkeys(files) if f.name != WORKSPACE_FILE]
    if workspaces:
        return workspaces[0], playbooks
    beside = playbooks[0].parent / WORKSPACE_FILE if playbooks else None
    return (beside if beside and beside.is_file() else None), playbooks


def load(paths: Sequence[Path]) -> Catalog:
    """Load every playbook under `paths` and the workspace file that goes with them."""
    workspace_path, playbook_paths = discover(paths)
    catalog = Catalog(Workspace(), workspace_path)
    if workspace_path is not None:
        workspace = _load_workspace(workspace_path, catalog.problems)
        catalog.workspace = workspace or Workspace()
        catalog.workspace_is_valid = workspace is not None

    known = catalog.workspace if catalog.workspace_is_valid else None
    for path in playbook_paths:
        loaded, problems = load_playbook(path, known)
        catalog.problems += problems
        if loaded is None:
            catalog.skipped.append(path)
        else:
            catalog.playbooks.append(loaded)

    _check_together(catalog)
    for path in catalog.skipped:
        logger.warning("Skipped playbook %s: it has errors.", path)
    return catalog


def load_playbook(
    path: Path, workspace: Workspace | None
) -> tuple[LoadedPlaybook | None, list[Problem]]:
    """Load one playbook file; None with the problems when it cannot be used.

    `workspace` is None when the workspace file is broken: the checks that depend
    on it are left out rather than reported wrongly.
    """
    document, text, problems = _read(path)
    if document is None:
        return None, problems

    problems += _apply_renames(document, path)
    problems += checks.check_document(document, text, workspace, path)
    playbook = _validate(Playbook, document, path, problems)
    if playbook is None:
        return None, problems

    problems += checks.check_playbook(playbook, document, text, workspace, path)
    if any(problem.is_error for problem in problems):
        return None, problems
    return LoadedPlaybook(playbook, path, document, text), problems


def _load_workspace(path: Path, problems: list[Problem]) -> Workspace | None:
    document, _, read_problems = _read(path)
    problems += read_problems
    if document is None:
        return None
    return _validate(Workspace, document, path, problems)


def _read(path: Path) -> tuple[Document | None, str, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "", [_problem(path, "not UTF-8 text; save it as UTF-8")]
    except OSError as exc:
        return None, "", [_problem(path, f"cannot be read ({exc.strerror})")]

    try:
        return parse(text), text, []
    except YamlProblem as exc:
        return None, text, [Problem(path, exc.position, exc.message, code="yaml")]


def _problem(path: Path, message: str) -> Problem:
    return Problem(path, START, message, code="file")


def _check_together(catalog: Catalog) -> None:
    seen: dict[str, LoadedPlaybook] = {}
    for loaded in list(catalog.playbooks):
        first = seen.setdefault(loaded.playbook.id, loaded)
        if first is loaded:
            continue
        position = loaded.document.position(("id",))
        message = (
            f"the id `{loaded.playbook.id}` is taken by {first.path}; pick another"
        )
        catalog.problems.append(Problem(loaded.path, position, message, code="id"))
        catalog.playbooks.remove(loaded)
        catalog.skipped.append(loaded.path)
    catalog.problems += checks.check_overlaps(catalog.playbooks)


def _validate(
    model: type[M], document: Document, path: Path, problems: list[Problem]
) -> M | None:
    if not isinstance(document.data, dict):
        problems.append(
            Problem(
                path,
                document.position(()),
                "expected a mapping of keys (`id: ...`) at the top of the file",
                code="shape",
            )
        )
        return None
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        problems += _explain(exc, model, document, path)
        return None


# --- From validation errors to problems an author can act on -------------------

_QUOTED = re.compile(r"'([^']*)'")
_TYPE_WORDS = {
    "dict_type": "expected a mapping of keys here",
    "model_type": "expected a mapping of keys here",
    "model_attributes_type": "expected a mapping of keys here",
    "list_type": "expected a list here (`- item` lines or `[a, b]`)",
    "string_type": "expected text here",
    "int_type": "expected a whole number here",
    "int_parsing": "expected a whole number here",
    "int_from_float": "expected a whole number here",
    "float_type": "expected a number here",
    "float_parsing": "expected a number here",
    "bool_type": "expected `true` or `false` here",
    "bool_parsing": "expected `true` or `false` here",
}


def _explain(
    exc: ValidationError, model: type[BaseModel], document: Document, path: Path
) -> list[Problem]:
    plain: list[Problem] = []
    unions: dict[Path_, list[_Tried]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        located = document.locate(loc)
        problem = _explain_one(error, loc, located, model, document, path)
        branch = _union_point(loc, document)
        if branch is None:
            plain.append(problem)
        else:
            tried = _Tried(located, problem, error["type"] == "value_error")
            unions.setdefault(branch, []).append(tried)

    for branch, members in unions.items():
        plain += _pick_union_problems(branch, members, model, document, path)
    return sorted(_without_echoes(plain), key=lambda p: (p.position, p.message))


def _without_echoes(problems: list[Problem]) -> set[Problem]:
    """Drop "missing `x`" where an unknown key already says "did you mean `x`"."""
    suggested = {
        p.message.rsplit("`", 2)[-2] for p in problems if "did you mean" in p.message
    }
    return {
        p
        for p in problems
        if not (p.code == "missing" and p.message.split("`")[1] in suggested)
    }


@dataclass(frozen=True)
class _Tried:
    """One member of a union that did not fit, and what it said."""

    located: Path_
    problem: Problem
    said_why: bool


def _union_point(loc: tuple[Any, ...], document: Document) -> Path_ | None:
    """Where a union was tried, when `loc` names a member type rather than a key."""
    path: Path_ = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in document.values or candidate in document.keys:
            path = candidate
        elif isinstance(part, str) and (
            "[" in part or part[:1].isupper() or part in ("str", "int", "float", "bool")
        ):
            return path
    return None


def _pick_union_problems(
    branch: Path_,
    members: list[_Tried],
    model: type[BaseModel],
    document: Document,
    path: Path,
) -> list[Problem]:
    """One clear problem for a value that fit none of the forms a key allows.

    The member that got deepest into the value, or else one that said why it
    refused it, speaks; otherwise the key's description does.
    """
    deeper = [m.problem for m in members if len(m.located) > len(branch)]
    if deeper:
        return deeper
    reasons = [m.problem for m in members if m.said_why]
    if reasons:
        return reasons[:1]
    description = _field_description(model, branch) or "see docs/playbooks.md"
    message = f"this value does not fit here: {description}"
    return [Problem(path, document.position(branch), message, code="shape")]


def _explain_one(
    error: Any,
    loc: tuple[Any, ...],
    located: Path_,
    model: type[BaseModel],
    document: Document,
    path: Path,
) -> Problem:
    kind = error["type"]
    name = str(loc[-1]) if loc else ""
    if kind == "missing":
        parent = document.locate(loc[:-1])
        description = _field_description(model, loc)
        hint = f": {description}" if description else ""
        position = document.position(parent, of_key=True)
        return Problem(path, position, f"missing `{name}`{hint}", code="missing")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = did_you_mean(name, allowed) or _one_of(allowed)
        position = document.position(located, of_key=True)
        return Problem(
            path, position, f"unknown key `{name}`{hint}", code="unknown-key"
        )

    position = document.position(located)
    message = _value_message(error, kind, _field_description(model, loc))
    return Problem(path, position, message, code="value")


def _value_message(error: Any, kind: str, description: str | None) -> str:
    given = error.get("input")
    if kind in ("literal_error", "enum"):
        choices = _QUOTED.findall(str(error.get("ctx", {}).get("expected", "")))
        hint = did_you_mean(str(given), choices) or ""
        return f"`{given}` is not allowed here{hint}; write one of {', '.join(choices)}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern")
        hint = PATTERN_HINTS.get(pattern) or description or "see docs/playbooks.md"
        return f"`{given}` is not written as expected: {hint}"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    message = str(error.get("msg", "not valid"))
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _one_of(allowed: list[str]) -> str:
    return f"; this place takes {', '.join(allowed)}" if allowed else ""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    target = model_at(model, loc)
    if target is None:
        return []
    return [info.alias or name for name, info in target.model_fields.items()]


def _field_description(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    if not loc:
        return None
    parent = model_at(model, loc[:-1])
    if parent is None:
        return None
    for name, info in parent.model_fields.items():
        if loc[-1] in (name, info.alias):
            return info.description or _type_description(info.annotation)
    return None


def _type_description(annotation: Any) -> str | None:
    for candidate in members_of(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return (candidate.__doc__ or "").strip().splitlines()[0] or None
    return None


def _apply_renames(document: Document, path: Path) -> list[Problem]:
    """Move earlier spellings of keys to their current names, with a warning."""
    problems: list[Problem] = []
    for where, old, new in RENAMED_KEYS:
        for parent in _mappings_at(document.data, where):
            if old not in parent.mapping:
                continue
            position = document.keys.get((*parent.path, old))
            problems.append(_rename(document, parent, old, new, path, position))
    return problems


@dataclass
class _Mapping:
    path: Path_
    mapping: Any


def _mappings_at(data: Any, where: tuple[str, ...]) -> list[_Mapping]:
    """Every mapping at `where` (`*` stands for each item of a list)."""
    found = [_Mapping((), data)]
    for part in where:
        step: list[_Mapping] = []
        for item in found:
            value = item.mapping
            if part == "*" and isinstance(value, list):
                step += [_Mapping((*item.path, i), v) for i, v in enumerate(value)]
            elif isinstance(value, dict) and part in value:
                step.append(_Mapping((*item.path, part), value[part]))
        found = step
    return [item for item in found if isinstance(item.mapping, dict)]


def _rename(
    document: Document,
    parent: _Mapping,
    old: str,
    new: str,
    path: Path,
    position: Any,
) -> Problem:
    where = position or START
    if new in parent.mapping:
        del parent.mapping[old]  # reported here; not again as an unknown key
        message = f"`{old}` and `{new}` both given; `{old}` is the old name: remove it"
        return Problem(path, where, message, code="renamed")

    items = [
        (new if key == old else key, value) for key, value in parent.mapping.items()
    ]
    parent.mapping.clear()
    parent.mapping.update(items)
    _move_positions(document, (*parent.path, old), (*parent.path, new))
    message = (
        f"`{old}` is now `{new}`; the old name works until {REMOVED_IN}, write `{new}`"
    )
    return Problem(path, where, message, severity=Severity.WARNING, code="renamed")


def _move_positions(document: Document, old: Path_, new: Path_) -> None:
    for table in (document.values, document.keys):
        for key in [k for k in table if k[: len(old)] == old]:
            table[(*new, *key[len(old) :])] = table.pop(key)
    moved = {k for k in document.block_scalars if k[: len(old)] == old}
    document.block_scalars -= moved
    document.block_scalars |= {(*new, *k[len(old) :]) for k in moved}

"""JSON Schemas of the playbook and workspace files, for editors and CI.

The committed copies in `schema/` are what the `yaml-language-server` modeline of
each example points at; a test keeps them equal to what the models produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.model import REMOVED_IN, RENAMED_KEYS, Playbook, Workspace, model_at

DRAFT = "https://json-schema.org/draft/2020-12/schema"
KINDS: dict[str, type[BaseModel]] = {"playbook": Playbook, "workspace": Workspace}


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of `kind` (`playbook` or `workspace`)."""
    model = KINDS[kind]
    generated = model.model_json_schema(by_alias=True, mode="validation")
    if model is Playbook:
        _mark_renamed_keys(generated)
    return {
        "$schema": DRAFT,
        "$id": f"https://referloop.dev/schema/{kind}.schema.json",
        **generated,
    }


def _mark_renamed_keys(generated: dict[str, Any]) -> None:
    """List old key names as deprecated: editors strike them through, not flag them."""
    for where, old, new in RENAMED_KEYS:
        loc = tuple(0 if part == "*" else part for part in where)
        holder = model_at(Playbook, loc)
        if holder is None:
            continue
        target = (
            generated if holder is Playbook else generated["$defs"][holder.__name__]
        )
        note = f"Renamed `{new}`; the old name stops working in {REMOVED_IN}."
        target["properties"][old] = {"deprecated": True, "description": note}


def file_name(kind: str) -> str:
    return f"{kind}.schema.json"


def render(kind: str) -> str:
    """The schema as the committed file holds it: sorted, indented, one newline."""
    return json.dumps(schema(kind), indent=2, sort_keys=True) + "\n"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        target = folder / file_name(kind)
        target.write_text(render(kind), encoding="utf-8")
        written.append(target)
    return written

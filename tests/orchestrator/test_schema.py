"""The committed JSON Schemas match the models, and the examples pass them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from orchestrator import schema
from orchestrator.loader import WORKSPACE_FILE, load

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schema"
EXAMPLES_DIR = ROOT / "playbooks"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
BOOL_TAG = "tag:yaml.org,2002:bool"


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 booleans as editors read them.

    `yaml.safe_load` is YAML 1.1, where the key `on:` of a reinforcement is the
    boolean true. yaml-language-server and referloop read YAML 1.2, where it is text.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def kind_of(path: Path) -> str:
    return "workspace" if path.name == WORKSPACE_FILE else "playbook"


def committed(kind: str) -> Path:
    return SCHEMA_DIR / schema.file_name(kind)


@pytest.mark.parametrize("kind", sorted(schema.KINDS))
def test_the_committed_schema_is_what_the_models_produce(kind: str) -> None:
    """A model change without a schema update fails here, with the fix to run."""
    path = committed(kind)
    fix = "run `referloop schema --write schema/` and commit the result"
    assert path.is_file(), f"{path} is missing: {fix}"

    assert path.read_text(encoding="utf-8") == schema.render(kind), (
        f"{path} is out of date: {fix}"
    )


def test_there_are_example_playbooks_and_a_workspace() -> None:
    """The parametrized checks below would pass vacuously on an empty folder."""
    names = [path.name for path in EXAMPLES]

    assert WORKSPACE_FILE in names
    assert len(names) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_validates_against_its_committed_schema(path: Path) -> None:
    """What an editor checks as you type, the examples pass."""
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=Yaml12Loader)
    validator = Draft202012Validator(json.loads(committed(kind_of(path)).read_text()))

    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))

    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_names_its_schema_on_the_first_line(path: Path) -> None:
    """The modeline lets yaml-language-server find the schema without settings."""
    first_line = path.read_text(encoding="utf-8").splitlines()[0]

    expected = f"# yaml-language-server: $schema=../schema/{kind_of(path)}.schema.json"
    assert first_line == expected


def test_the_shipped_examples_load_without_any_problem() -> None:
    """Not one error or warning: the examples are what people copy."""
    catalog = load([EXAMPLES_DIR])

    assert [str(problem) for problem in catalog.problems] == []
    assert catalog.skipped == []
    assert len(catalog.playbooks) >= 5

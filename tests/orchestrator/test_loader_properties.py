"""Whatever text arrives, the loader returns a playbook or problems; it never raises."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator import units
from orchestrator.loader import LoadedPlaybook, load_playbook
from orchestrator.model import Workspace
from orchestrator.problems import Problem

EXAMPLES = settings(max_examples=200, deadline=None)

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Values an author might plausibly write in the wrong place.
PLAYBOOK_WORDS = st.sampled_from(
    [
        "braze",
        "outbox",
        "2h",
        "150%",
        "0%",
        "1 per 0d",
        "0 per 1d",
        "20:00-08:00",
        "{{ usr.name }}",
        "{% if %}",
        "{{ user..id",
        "mixpanel:1",
        "signed_up",
        "guest_seats",
    ]
)
UNIT_WORDS = st.sampled_from(
    ["s", "m", "h", "d", "w", "days", "weeks", "hour", "fortnight", "%", ""]
)


@pytest.fixture(scope="module")
def playbook_path(tmp_path_factory) -> Path:
    """One file, rewritten by every example (hypothesis runs them one at a time)."""
    return tmp_path_factory.mktemp("properties") / "playbook.yaml"


@pytest.fixture(scope="module")
def valid_mapping(minimal_playbook) -> dict[str, Any]:
    return yaml.safe_load(minimal_playbook)


def outcome_of(path: Path, text: str) -> tuple[LoadedPlaybook | None, list[Problem]]:
    """Load `text` as a playbook and check the shape of what comes back."""
    path.write_text(text, encoding="utf-8")

    loaded, problems = load_playbook(path, Workspace())

    assert loaded is not None or problems, "neither a playbook nor a problem"
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.position.line >= 1
        assert problem.position.column >= 1
        assert problem.message.strip()
    return loaded, problems


def key_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path to a key of the nested mappings in `value`."""
    if not isinstance(value, dict):
        return []
    paths = []
    for key, child in value.items():
        paths += [(*prefix, key), *key_paths(child, (*prefix, key))]
    return paths


def mutated(mapping: dict[str, Any], changes: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A copy of `mapping` with each (path, value) set, extending paths by a key."""
    result = copy.deepcopy(mapping)
    for path, value in changes:
        parent = result
        for key in path[:-1]:
            child = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                break
            parent = child
        else:
            parent[path[-1]] = value
    return result


@EXAMPLES
@given(text=st.text())
@example(text="")
@example(text="- a\n- b\n")
@example(text="id: [unclosed\n")
@example(text="\x00")
@example(text="a: &x 1\nb: *x\n")
@example(text="[" * 2_000)
def test_any_text_gives_a_playbook_or_problems(playbook_path, text: str) -> None:
    """Arbitrary text never makes the loader raise."""
    outcome_of(playbook_path, text)


@EXAMPLES
@given(value=JSON_LIKE)
def test_any_yaml_value_gives_a_playbook_or_problems(playbook_path, value) -> None:
    """Any JSON-like value, written as YAML, is loaded or explained."""
    text = yaml.safe_dump(value, allow_unicode=True)

    outcome_of(playbook_path, text)


@EXAMPLES
@given(data=st.data())
def test_any_mutation_of_a_valid_playbook_gives_a_playbook_or_problems(
    playbook_path, valid_mapping, data
) -> None:
    """Random values at random keys (or new keys under them) never crash the load."""
    # Given a valid playbook with some values replaced or keys added
    paths = key_paths(valid_mapping)
    new_key = st.text(min_size=1, max_size=12)
    path = st.sampled_from(paths) | st.builds(
        lambda p, k: (*p, k), st.sampled_from([(), *paths]), new_key
    )
    value = PLAYBOOK_WORDS | JSON_LIKE
    changes = data.draw(st.lists(st.tuples(path, value), max_size=4))
    text = yaml.safe_dump(mutated(valid_mapping, changes), allow_unicode=True)

    # When it is loaded, then the answer is a playbook or well-formed problems
    outcome_of(playbook_path, text)


def test_the_unmutated_playbook_loads_without_problems(
    playbook_path, valid_mapping
) -> None:
    """The mutation test starts from a playbook that is valid as dumped."""
    text = yaml.safe_dump(valid_mapping)
    gated = Workspace.model_validate({"activation": {"cohort": "mixpanel:1"}})
    playbook_path.write_text(text, encoding="utf-8")

    loaded, problems = load_playbook(playbook_path, gated)

    assert problems == []
    assert loaded is not None


# --- units ------------------------------------------------------------------------

UNIT_TEXT = st.text() | st.builds(
    lambda number, space, unit: f"{number}{space}{unit}",
    st.integers(min_value=0),
    st.sampled_from(["", " "]),
    UNIT_WORDS,
)
CAP_TEXT = st.text() | st.builds(
    lambda count, window: f"{count} per {window}", st.integers(min_value=0), UNIT_TEXT
)
CLOCK_TEXT = st.text() | st.builds(
    lambda a, b, c, d: f"{a}:{b:02d}-{c}:{d:02d}",
    st.integers(0, 30),
    st.integers(0, 70),
    st.integers(0, 30),
    st.integers(0, 70),
)
PARSERS = {
    "parse_duration": (units.parse_duration, UNIT_TEXT),
    "parse_percentage": (units.parse_percentage, UNIT_TEXT),
    "parse_cap": (units.parse_cap, CAP_TEXT),
    "parse_clock_range": (units.parse_clock_range, CLOCK_TEXT),
}


@pytest.mark.parametrize("name", PARSERS)
@EXAMPLES
@given(data=st.data())
def test_unit_parsers_read_a_string_or_raise_value_error(name: str, data) -> None:
    """Any string is parsed or refused with ValueError, the one error pydantic maps."""
    parse, strategy = PARSERS[name]
    text = data.draw(strategy)

    with contextlib.suppress(ValueError):
        parse(text)


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (units.parse_duration, "99999999999999999999d"),
        (units.parse_cap, "1 per 99999999999999999999w"),
    ],
)
def test_unit_parsers_refuse_a_number_too_large_with_value_error(parse, text) -> None:
    """A window beyond what a timedelta holds is a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match="99999999999999999999"):
        parse(text)

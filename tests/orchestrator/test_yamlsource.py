"""The strict YAML reader: YAML 1.2 values, 1-based positions, hostile input refused."""

from __future__ import annotations

import pytest

from orchestrator.loader import load_playbook
from orchestrator.model import Workspace
from orchestrator.problems import START, Position
from orchestrator.yamlsource import MAX_BYTES, MAX_DEPTH, YamlProblem, parse


def refusal(text: str) -> YamlProblem:
    """The problem `parse` raises for `text`; fails when it reads it."""
    with pytest.raises(YamlProblem) as caught:
        parse(text)
    return caught.value


# --- positions --------------------------------------------------------------------


def test_positions_are_one_based_lines_and_columns() -> None:
    """Keys and values carry the line and column an editor shows."""
    document = parse("id: welcome-loop\nnudge:\n  channel: outbox\n")

    assert document.values[()] == Position(1, 1)
    assert document.keys[("id",)] == Position(1, 1)
    assert document.values[("id",)] == Position(1, 5)
    assert document.keys[("nudge", "channel")] == Position(3, 3)
    assert document.values[("nudge", "channel")] == Position(3, 12)


def test_items_of_a_list_have_their_own_positions() -> None:
    """Each `- item` is located, and so is a key inside a listed mapping."""
    document = parse("fallback:\n  - braze\n  - on: outbox\n")

    assert document.values[("fallback", 0)] == Position(2, 5)
    assert document.keys[("fallback", 1, "on")] == Position(3, 5)
    assert document.values[("fallback", 1, "on")] == Position(3, 9)


def test_a_path_without_a_place_falls_back_to_its_nearest_parent() -> None:
    """A default filled in by the model has no line: its parent's is used."""
    document = parse("nudge:\n  channel: outbox\n")

    assert document.position(("nudge", "invite", "share")) == Position(2, 3)
    assert document.position(("trigger",)) == Position(1, 1)


def test_block_scalars_are_remembered_so_templates_can_be_located() -> None:
    """A `|` value is marked as a block; a plain one is not."""
    document = parse("body: |\n  Hello\nsubject: Hi\n")

    assert document.block_scalars == {("body",)}
    assert document.data == {"body": "Hello\n", "subject": "Hi"}


# --- YAML 1.2 values --------------------------------------------------------------


@pytest.mark.parametrize(
    "word", ["no", "on", "yes", "off", "No", "ON", "y", "n", "22:00", "20:00-08:00"]
)
def test_yaml_1_1_booleans_and_sexagesimals_stay_strings(word: str) -> None:
    """`no`, `on` and `yes` are words, and `22:00` is a time, not 1320."""
    document = parse(f"value: {word}\n")

    assert document.data == {"value": word}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("010", 10),
        ("-7", -7),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("0x1F", 31),
        ("0o17", 15),
        ("true", True),
        ("False", False),
        ("null", None),
        ("~", None),
        ("", None),
        (".inf", float("inf")),
    ],
)
def test_plain_scalars_resolve_as_the_yaml_1_2_core_schema_says(
    written: str, expected: object
) -> None:
    """Numbers, booleans and null are read as such; `010` is ten, not eight."""
    document = parse(f"value: {written}\n")

    assert document.data == {"value": expected}
    assert type(document.data["value"]) is type(expected)


@pytest.mark.parametrize("written", ["'010'", '"true"', "'null'", "!!str 5"])
def test_quoted_or_tagged_strings_stay_strings(written: str) -> None:
    """Quotes (or `!!str`) keep what looks like a number or boolean as text."""
    document = parse(f"value: {written}\n")

    assert isinstance(document.data["value"], str)


def test_keys_always_stay_strings() -> None:
    """`1:`, `true:` and `on:` are keys named by their text."""
    document = parse("1: a\ntrue: b\non: c\n")

    assert list(document.data) == ["1", "true", "on"]


def test_a_bare_number_for_holdout_is_read_as_a_percentage(
    tmp_path, minimal_playbook
) -> None:
    """`holdout: 10` is documented as 10%; the number must reach the model."""
    path = tmp_path / "welcome-loop.yaml"
    path.write_text(minimal_playbook + "holdout: 10\n")
    gated = Workspace.model_validate({"activation": {"cohort": "mixpanel:1"}})

    loaded, problems = load_playbook(path, gated)

    assert problems == []
    assert loaded is not None
    assert loaded.playbook.holdout == 10.0


def test_a_number_longer_than_python_reads_is_a_problem_not_a_crash(
    tmp_path,
) -> None:
    """A 5,000-digit number is refused or kept, but never raised out of the loader."""
    path = tmp_path / "long.yaml"
    path.write_text("id: long-loop\npriority: " + "9" * 5000 + "\n")

    loaded, problems = load_playbook(path, Workspace())

    assert loaded is None
    assert problems
    assert all(problem.position.line >= 1 for problem in problems)


# --- refused features -------------------------------------------------------------


def test_a_duplicate_key_is_refused_at_the_second_key() -> None:
    """The second `holdout:` is the one to remove."""
    problem = refusal("id: loop\nholdout: 5%\nowner: growth\nholdout: 10%\n")

    assert problem.position == Position(4, 1)
    assert "`holdout` appears twice" in problem.message


def test_a_duplicate_nested_key_is_refused_at_its_line() -> None:
    """Inside a mapping, the duplicate is found at its own indentation."""
    problem = refusal("nudge:\n  channel: braze\n  channel: outbox\n")

    assert problem.position == Position(3, 3)
    assert "`channel` appears twice" in problem.message


def test_anchors_are_refused_where_they_are_declared() -> None:
    """`&name` is refused, so an alias can never expand."""
    problem = refusal("owner: &team growth\ndescription: x\n")

    assert problem.position == Position(1, 8)
    assert "anchors (`&team`) are not allowed" in problem.message


def test_an_alias_is_refused_even_without_its_anchor() -> None:
    """`*name` alone is refused as an alias, not resolved."""
    problem = refusal("owner: growth\ndescription: *team\n")

    assert problem.position == Position(2, 14)
    assert "aliases" in problem.message


def test_a_billion_laughs_document_is_refused_at_its_first_anchor() -> None:
    """The classic expansion bomb never expands: its first anchor stops it."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for name, previous in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = "\n".join(lines) + "\n"

    problem = refusal(bomb)

    assert problem.position == Position(1, 4)
    assert "anchors" in problem.message


@pytest.mark.parametrize(
    "tag", ["!!python/object/apply:os.system", "!!python/name:os.system", "!custom"]
)
def test_custom_tags_are_refused(tag: str) -> None:
    """Only YAML's own types are read; a tag that builds objects is refused."""
    problem = refusal(f"owner: {tag} ['echo hi']\n")

    assert problem.position == Position(1, 8)
    assert "is not allowed; remove it" in problem.message


def test_a_second_document_is_refused_at_its_separator() -> None:
    """One playbook per file: the `---` of the second document is reported."""
    problem = refusal("id: first-loop\n---\nid: second-loop\n")

    assert problem.position == Position(2, 1)
    assert "a second YAML document" in problem.message


def test_one_explicit_document_is_accepted() -> None:
    """A leading `---` and a closing `...` still make one document."""
    document = parse("---\nid: only-loop\n...\n")

    assert document.data == {"id": "only-loop"}


def test_ten_thousand_nested_brackets_are_refused_with_a_clear_message() -> None:
    """A stack-exhausting document is a problem about nesting, not a RecursionError."""
    problem = refusal("[" * 10_000 + "]" * 10_000)

    assert problem.position.line == 1
    assert "nest" in problem.message


def test_nesting_deeper_than_the_limit_is_refused_at_the_level_too_deep() -> None:
    """The first bracket beyond the limit is where the problem is."""
    depth = MAX_DEPTH + 8

    problem = refusal("[" * depth + "]" * depth)

    assert problem.position == Position(1, MAX_DEPTH + 1)
    assert f"nested deeper than {MAX_DEPTH} levels" in problem.message


def test_deep_block_nesting_is_refused_too() -> None:
    """Indented mappings count as levels just like brackets."""
    lines = [" " * (2 * level) + f"k{level}:" for level in range(MAX_DEPTH + 4)]
    text = "\n".join(lines) + " 1\n"

    problem = refusal(text)

    assert problem.position == Position(MAX_DEPTH + 1, 2 * MAX_DEPTH + 1)
    assert "nested deeper" in problem.message


def test_a_document_larger_than_the_limit_is_refused_before_parsing() -> None:
    """Over 256 KiB is refused at the start of the file."""
    problem = refusal("description: " + "x" * MAX_BYTES + "\n")

    assert problem.position == START
    assert "larger than 256 KiB" in problem.message


def test_the_size_limit_counts_bytes_not_characters() -> None:
    """150,000 `é` are 300,000 bytes of UTF-8: over the limit."""
    problem = refusal("description: " + "é" * 150_000 + "\n")

    assert "larger than 256 KiB" in problem.message


def test_a_document_just_under_the_limit_is_read() -> None:
    """The limit refuses only what is over it."""
    prefix = "description: "
    text = prefix + "x" * (MAX_BYTES - len(prefix) - 1) + "\n"

    document = parse(text)

    assert len(document.data["description"]) == MAX_BYTES - len(prefix) - 1


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_refused(text: str) -> None:
    """No document at all is a problem at the start, saying the file is empty."""
    problem = refusal(text)

    assert problem.position == START
    assert "file is empty" in problem.message


def test_a_key_that_is_a_list_is_refused() -> None:
    """Keys are plain words; `? [a]` is refused at the key."""
    problem = refusal("? [a, b]\n: 1\n")

    assert problem.position == Position(1, 3)
    assert "a key must be a plain word" in problem.message


def test_a_syntax_error_is_reported_where_the_parser_stopped() -> None:
    """An unclosed flow list names the line where the parser gave up."""
    problem = refusal("id: loop\nfallback: [braze, outbox\nowner: growth\n")

    assert problem.position.line == 3
    assert problem.message.startswith("not valid YAML:")


def test_bytes_that_are_not_utf8_are_a_problem_from_the_loader(tmp_path) -> None:
    """Latin-1 bytes give a problem at the start of the file, not an exception."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"id: caf\xe9-loop\nowner: growth\n")

    loaded, problems = load_playbook(path, Workspace())

    assert loaded is None
    assert [(p.position, p.is_error) for p in problems] == [(START, True)]
    assert "not UTF-8" in problems[0].message

"""A broken file never stops the others: the loader skips it and says so."""

from __future__ import annotations

import pytest

from orchestrator.loader import WORKSPACE_FILE, load
from orchestrator.model import Workspace
from orchestrator.problems import Position

OWN_GATE = "activation:\n  property: user.activated_at\n"

BROKEN_PLAYBOOKS = {
    "not YAML": b"id: [unclosed\n",
    "an unknown key": b"id: broken-loop\nholdot: 5%\n",
    "an empty file": b"",
    "a list, not a mapping": b"- id: broken-loop\n",
    "a duplicate key": b"id: broken-loop\nid: broken-again\n",
    "bytes that are not UTF-8": b"id: caf\xe9-loop\n",
    "an alias": b"id: &name broken-loop\nowner: *name\n",
}


@pytest.mark.parametrize("content", BROKEN_PLAYBOOKS.values(), ids=BROKEN_PLAYBOOKS)
def test_a_broken_playbook_does_not_stop_a_good_one(
    folder, minimal_playbook, content
) -> None:
    """The good playbook loads; the broken one is skipped with a problem."""
    # Given a good playbook and, beside it, a broken one
    folder.playbook(minimal_playbook, "b-good.yaml")
    broken = folder.root / "a-broken.yaml"
    broken.write_bytes(content)

    # When the folder is loaded
    catalog = folder.load()

    # Then the good one is usable, and the catalog names the skipped file
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]
    assert catalog.skipped == [broken]
    assert {problem.path for problem in catalog.problems} == {broken}
    assert catalog.has_errors


def test_the_catalog_lists_every_skipped_playbook_and_loads_the_rest(
    folder, minimal_playbook, on_channel
) -> None:
    """Two broken, two good: both good ones load and both broken ones are listed."""
    folder.playbook(minimal_playbook, "a-good.yaml")
    second = minimal_playbook.replace("welcome-loop", "second-loop")
    folder.playbook(second + "priority: 5\n", "c-good.yaml")
    bad_enum = folder.playbook(on_channel(minimal_playbook, "brazee"), "b.yaml")
    bad_yaml = folder.playbook("id: [\n", "d-bad.yaml")

    catalog = folder.load()

    loaded = sorted(entry.playbook.id for entry in catalog.playbooks)
    assert loaded == ["second-loop", "welcome-loop"]
    assert sorted(catalog.skipped) == [bad_enum.path, bad_yaml.path]


def test_a_playbook_with_only_warnings_is_not_skipped(folder, minimal_playbook) -> None:
    """Warnings are shown, but they never cost the playbook its place."""
    folder.playbook(minimal_playbook + "holdout: 0%\n")

    catalog = folder.load()

    assert catalog.skipped == []
    assert not catalog.has_errors
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]


@pytest.mark.parametrize(
    ("workspace", "needle"),
    [
        ("time_zone: Mars/Olympus\nquiet_hours: 20:00-08:00\n", "Mars/Olympus"),
        ("quiet_hours: 20:00-08:00\ncaps: [\n", None),
        ("quiet_hours: 20:00-08:00\nlimits: {}\n", "limits"),
    ],
    ids=["a bad value", "not YAML", "an unknown key"],
)
def test_a_broken_workspace_is_reported_and_the_defaults_are_used(
    folder, minimal_playbook, workspace, needle
) -> None:
    """The workspace's problem is reported; its settings fall back to defaults."""
    # Given a broken workspace file and a playbook with its own activation gate
    written = folder.workspace(workspace)
    folder.playbook(minimal_playbook + OWN_GATE)

    # When the folder is loaded
    catalog = folder.load()

    # Then the problem is in the workspace file, the defaults apply (the valid
    # quiet hours too), and the playbook still loads
    problems = written.problems_in(catalog)
    assert [p.path.name for p in problems] == [WORKSPACE_FILE]
    assert problems[0].is_error
    if needle is not None:
        assert problems[0].position == written.at(needle)
    assert catalog.workspace == Workspace()
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]


def test_a_workspace_that_is_not_utf8_is_reported_and_the_defaults_are_used(
    folder, minimal_playbook
) -> None:
    """Unreadable bytes in `referloop.yaml` are a problem at its start, not a crash."""
    workspace = folder.root / WORKSPACE_FILE
    workspace.write_bytes(b"name: caf\xe9\n")
    folder.playbook(minimal_playbook + OWN_GATE)

    catalog = folder.load()

    assert [(p.path, p.position) for p in catalog.problems] == [
        (workspace, Position(1, 1))
    ]
    assert catalog.workspace == Workspace()
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]


def test_without_a_workspace_file_the_defaults_are_used(
    tmp_path, minimal_playbook
) -> None:
    """No `referloop.yaml` is no problem: the playbook brings its own gate."""
    (tmp_path / "welcome-loop.yaml").write_text(minimal_playbook + OWN_GATE)

    catalog = load([tmp_path])

    assert catalog.workspace_path is None
    assert catalog.problems == []
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]

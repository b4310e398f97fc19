"""Playbook folders for the orchestrator tests: a workspace file and playbooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.loader import WORKSPACE_FILE, Catalog, load
from orchestrator.problems import Position, Problem

# The smallest playbook that loads once the workspace gives an activation gate.
MINIMAL_PLAYBOOK = """\
id: welcome-loop
description: Ask users who shared a report to invite a colleague.
owner: growth
trigger:
  event: report_shared
nudge:
  channel: intercom
  invite:
    share: workspace_invite
  trust: They will see the report you shared, and nothing else.
  message:
    body: Invite a colleague to {{ account.id }}.
  intercom: {from_admin: 394051}
"""
# The vendor reference of the minimal playbook's channel, on its own last line.
INTERCOM_REFERENCE = "  intercom: {from_admin: 394051}\n"


def _on_channel(playbook: str, name: str) -> str:
    """The minimal playbook sent through `name`, with no vendor reference."""
    without = playbook.replace(INTERCOM_REFERENCE, "")
    return without.replace("  channel: intercom", f"  channel: {name}")


GATED_WORKSPACE = """\
name: test workspace
activation:
  property: user.activated_at
"""


@dataclass(frozen=True)
class WrittenFile:
    """A file written for a test, which can say where a piece of its text is."""

    path: Path
    text: str

    def at(self, needle: str) -> Position:
        """The 1-based line and column where `needle`, found once, starts."""
        found = [
            Position(number, line.index(needle) + 1)
            for number, line in enumerate(self.text.splitlines(), start=1)
            if needle in line
        ]
        assert len(found) == 1, f"{needle!r} should be on exactly one line"
        return found[0]

    def problems_in(self, catalog: Catalog) -> list[Problem]:
        return [problem for problem in catalog.problems if problem.path == self.path]


class PlaybookFolder:
    """A folder of playbooks beside a `referloop.yaml`, loaded as the CLI does."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def workspace(self, text: str) -> WrittenFile:
        return self.write(WORKSPACE_FILE, text)

    def playbook(self, text: str, name: str = "welcome-loop.yaml") -> WrittenFile:
        return self.write(name, text)

    def write(self, name: str, text: str) -> WrittenFile:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return WrittenFile(path, text)

    def load(self) -> Catalog:
        return load([self.root])


@pytest.fixture
def folder(tmp_path: Path) -> PlaybookFolder:
    """An empty playbook folder whose workspace gives the activation gate."""
    playbooks = PlaybookFolder(tmp_path / "playbooks")
    playbooks.workspace(GATED_WORKSPACE)
    return playbooks


@pytest.fixture(scope="session")
def minimal_playbook() -> str:
    """The text of a valid playbook (given a gated workspace), to edit per test."""
    return MINIMAL_PLAYBOOK


@pytest.fixture(scope="session")
def on_channel() -> Callable[[str, str], str]:
    """Turns the minimal playbook to another channel, without a vendor reference."""
    return _on_channel

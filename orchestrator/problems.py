"""Problems found in playbooks: where they are, how bad, and what to write instead."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Severity(StrEnum):
    """How a problem affects loading: an error skips the file, a warning does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Position:
    """A place in a file, 1-based, as editors count."""

    line: int
    column: int


START = Position(1, 1)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, at the line where it is."""

    path: Path
    position: Position
    message: str
    severity: Severity = Severity.ERROR
    code: str = "invalid"

    def __str__(self) -> str:
        where = f"{self.path}:{self.position.line}:{self.position.column}"
        label = "" if self.severity is Severity.ERROR else "warning: "
        return f"{where}: {label}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "line": self.position.line,
            "column": self.position.column,
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
        }


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ` (did you mean `x`?)` for the closest choice, or an empty string."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        return ""
    return f" (did you mean `{matches[0]}`?)"

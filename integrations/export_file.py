"""What the raw event exports share: the file they write and how they count it.

An export is written to a hidden `.part` file beside its target and takes the
target's place only when every chunk is in (`staged`); answers are split into
lines at newlines only (`split_lines`); a download reports an `ExportResult`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orchestrator.errors import UsageError


@dataclass(frozen=True)
class ExportResult:
    """What a download wrote: `events` lines in `chunks` chunks, with `requests`
    queries (retries included); `skipped` lines that were not a JSON event and
    `duplicates` left out."""

    events: int
    chunks: int
    requests: int
    skipped: int = 0
    duplicates: int = 0


def split_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream at newlines only.

    Not `httpx.Response.iter_lines`: it splits as `str.splitlines` does, also
    at U+2028 and other separators that JSON strings may hold unescaped.
    """
    rest = b""
    for piece in pieces:
        *whole, rest = (rest + piece).split(b"\n")
        yield from whole
    if rest:
        yield rest


def cut_back(out: IO[bytes], start: int) -> None:
    """Drop what was written to `out` after offset `start`: a chunk that failed
    partway leaves nothing behind."""
    out.seek(start)
    out.truncate()


@contextmanager
def staged(target: Path) -> Iterator[IO[bytes]]:
    """A hidden file beside `target` that takes its place only when complete.

    It is created readable by its owner only (an export holds personal data);
    on any error it is removed and `target` is left as it was.

    Raises:
        UsageError: nothing can be written beside `target`.
    """
    staging = hidden_beside(target, ".part")
    try:
        with staging.open("wb") as out:
            yield out
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def hidden_beside(target: Path, suffix: str) -> Path:
    """A new, empty file beside `target`, hidden and private to its owner.

    Raises:
        UsageError: nothing can be written beside `target`.
    """
    try:
        handle, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=suffix
        )
    except OSError as exc:
        raise UsageError(
            f"cannot write the export to {target}: {exc.strerror}"
        ) from None
    os.close(handle)
    return Path(name)

"""What the raw event exports share: the file they write, how they count it, and
how they ask again for a chunk that failed.

An export is written to a hidden `.part` file beside its target and takes the
target's place only when every chunk is in (`staged`); answers are split into
lines at newlines only (`split_lines`); a chunk that failed in a way that asking
again may mend (`ChunkFailed`) is asked again by `chunk_retrying`, after the wait
the vendor asked for or a jittered backoff, and given up as a `TransientError`
(`gave_up`); a download reports an `ExportResult`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
import tenacity

from orchestrator.errors import TransientError, UsageError

# The longest backoff between two tries of a chunk, when the vendor asked none.
MAX_BACKOFF_S = 30.0


class ChunkFailed(Exception):
    """A chunk failed in a way that asking again may mend: `reason` says how,
    `retry_after_s` is the wait the vendor asked for, `lines` what was dropped."""

    def __init__(
        self, reason: str, *, retry_after_s: float | None = None, lines: int = 0
    ) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.lines = lines
        super().__init__(reason)


def chunk_retrying(
    vendor: str,
    chunk: object,
    attempts: int,
    backoff_s: float,
    log_to: logging.Logger,
) -> tenacity.Retrying:
    """Up to `attempts` tries of `chunk` while it fails with `ChunkFailed`; each
    retry is logged to `log_to` (the vendor's logger) with what it dropped and
    how long it waits."""

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ChunkFailed) and error.retry_after_s is not None:
            return error.retry_after_s
        backoff = tenacity.wait_random_exponential(
            multiplier=backoff_s, max=MAX_BACKOFF_S
        )
        return float(backoff(state))

    def log(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        failed = error if isinstance(error, ChunkFailed) else None
        log_to.info(
            "%s export of %s: %s; %d lines of it dropped, asking again in "
            "%.1f s (attempt %d of %d).",
            vendor,
            chunk,
            failed.reason if failed else "failed",
            failed.lines if failed else 0,
            state.next_action.sleep if state.next_action else 0.0,
            state.attempt_number + 1,
            attempts,
        )

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(ChunkFailed),
        before_sleep=log,
        reraise=True,
    )


def gave_up(
    vendor: str, where: str, chunk: object, attempts: int, failed: ChunkFailed
) -> TransientError:
    """The error of a chunk that failed every try: export again later."""
    return TransientError(
        vendor,
        f"{where} of {chunk}: {failed.reason}, {attempts} times; export again later",
        retry_after_s=failed.retry_after_s,
    )


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


class ExportClient:
    """What both exports' clients hold: how often a chunk is tried and how long
    it may wait, and one HTTP client on the export's host, closed with the
    client (use it as a context manager)."""

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str],
        *,
        attempts: int,
        backoff_s: float,
        max_wait_s: float,
        timeout: httpx.Timeout,
        transport: httpx.BaseTransport | None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be 1 or more")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

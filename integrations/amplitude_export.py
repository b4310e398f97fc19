"""Amplitude's raw event export, streamed to a JSON lines file a day at a time.

`AmplitudeExport.download` asks the Export API (`GET /api/2/export` on
`amplitude.com`, or `analytics.eu.amplitude.com` for an EU project) for the
events of a range of days and writes them as JSON lines, a file
`referloop report --events` reads.

- The range goes in chunks of `chunk_days` days (1 unless told), one query
  each, for hours `start` to `end`, both included, in UTC.
- Each answer is a zip archive of gzipped JSON lines files (one per hour and
  part). It is streamed to a hidden scratch file beside the target, never held
  in memory, then unpacked file by file and appended to a hidden `.part` file,
  which takes the target's name only when every chunk is in.
- A chunk with no data is answered 404: an empty chunk, not an error. A chunk
  answered 400 is split in halves and each half asked for, down to one hour:
  Amplitude refuses an export over 4 GB that way, and the range is checked
  here before any query, so a 400 means size.
- A chunk that fails (429, 408, 5xx, a timeout, a connection dropped, an
  archive that cannot be read) is asked again, up to `attempts` times, after
  the wait a 429 asks for or a short backoff; the lines it wrote are cut off
  first, so the file never holds part of a chunk, or a chunk twice.
- Events land in the export about two hours after Amplitude receives them, so
  a range whose last day ended less than two hours ago is refused with the
  hour it can be exported from; a partial day would make the report undercount
  without a word. Hours are the hours Amplitude received the events, so an
  event sent late may come with a later day.
- Lines that are not a JSON event (an object with an `event_type`) are counted
  and left out. Amplitude dedupes by `$insert_id` as it takes events, so the
  export is not deduped again.
- A refusal becomes an error that says what to fix: the keys or the residency
  (401, 403), an hour too large to export (400). Messages carry the range,
  the host and the status, never the keys, the query string or the body.
"""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, ClassVar

import httpx

from integrations.amplitude_cohorts import URLS, VENDOR, Residency
from integrations.export_file import (
    ChunkFailed,
    ExportClient,
    ExportResult,
    chunk_retrying,
    cut_back,
    gave_up,
    hidden_beside,
    split_lines,
    staged,
)
from integrations.http import retry_after_of
from orchestrator.errors import PermanentError, TransientError, UsageError

logger = logging.getLogger(__name__)

EXPORT_URLS = URLS
EXPORT_PATH = "/api/2/export"
WHERE = f"GET {EXPORT_PATH}"
HOUR_FORMAT = "%Y%m%dT%H"

# A day of a B2B product's events is a chunk that is cheap to fetch again.
CHUNK_DAYS = 1
# Amplitude's Export API answers at most a year of hours per query.
MAX_CHUNK_DAYS = 365
# Events reach the export about two hours after Amplitude's servers take them
# (the Export API's documented delay; its reports have none).
LANDING_DELAY = timedelta(hours=2)

CHUNK_ATTEMPTS = 5
BACKOFF_S = 1.0
# The longest wait, for a 429's Retry-After, taken in this thread; a longer
# one ends the export with a TransientError saying when to export again.
MAX_WAIT_S = 120.0
# Amplitude prepares the archive before its first byte; the read timeout is
# the longest silence between two reads.
EXPORT_TIMEOUT = httpx.Timeout(300.0, connect=5.0, pool=5.0)
HEADERS = {"Accept": "application/zip"}
COPY_BYTES = 1 << 16

_DROPPED = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
_UNREADABLE = (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class HourRange:
    """The hours from `first` to `last` (UTC), both included: one query."""

    first: datetime
    last: datetime

    def __str__(self) -> str:
        return f"{self.first:%Y-%m-%d %H}:00 to {self.last:%Y-%m-%d %H}:59 UTC"

    @property
    def hours(self) -> int:
        return int((self.last - self.first) / timedelta(hours=1)) + 1

    def halves(self) -> tuple[HourRange, HourRange]:
        """The first half of the hours and the rest; for two hours or more."""
        middle = self.first + timedelta(hours=self.hours // 2)
        before = HourRange(self.first, middle - timedelta(hours=1))
        return before, HourRange(middle, self.last)


@dataclass
class _Counts:
    events: int = 0
    skipped: int = 0


class _TooLarge(Exception):
    """Amplitude would not export the chunk whole (400): ask for its halves.
    `requests` is how many queries were spent on it."""

    def __init__(self, requests: int = 1) -> None:
        self.requests = requests
        super().__init__("too large")


class AmplitudeExport(ExportClient):
    """Download Amplitude's raw events of a range of days into a JSON lines file.

    `api_key` and `secret_key` are the project's; `residency` picks the host and
    `base_url` replaces it (a simulated vendor). Build one from the workspace
    and environment with `integrations.vendors.amplitude_export`. Use one at a
    time per thread.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        residency: Residency = "us",
        base_url: str | None = None,
        chunk_days: int = CHUNK_DAYS,
        attempts: int = CHUNK_ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        max_wait_s: float = MAX_WAIT_S,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not 1 <= chunk_days <= MAX_CHUNK_DAYS:
            raise ValueError("chunk_days must be 1 to 365")
        super().__init__(
            base_url or EXPORT_URLS[residency],
            (api_key, secret_key),
            attempts=attempts,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
            timeout=timeout or EXPORT_TIMEOUT,
            transport=transport,
        )
        self.residency = residency
        self.chunk_days = chunk_days
        self._clock = clock or (lambda: datetime.now(UTC))

    def download(
        self, path: str | Path, from_date: date, to_date: date
    ) -> ExportResult:
        """Write the events from `from_date` to `to_date` (UTC days, both
        included) to `path`, replaced only when the whole range is in; on an
        error it is left as it was.

        Raises:
            UsageError: the range ends before it starts, or its last day is
                not yet complete in the export, or `path` cannot be written.
            PermanentError: Amplitude refused the keys (401, 403) or an hour
                too large to export (400).
            TransientError: Amplitude kept failing, or asks for a longer wait
                than `max_wait_s`; `retry_after_s` says when to try again.
        """
        self._check_range(from_date, to_date)
        target = Path(path)
        pending = deque(hour_ranges(from_date, to_date, self.chunk_days))
        total, chunks, requests = _Counts(), 0, 0

        scratch = hidden_beside(target, ".zip")
        try:
            with staged(target) as out:
                while pending:
                    chunk = pending.popleft()
                    try:
                        counts, tries = self._fetch(chunk, out, scratch)
                    except _TooLarge as split:
                        requests += split.requests
                        pending.extendleft(reversed(chunk.halves()))
                        continue
                    total = _added(total, counts)
                    chunks, requests = chunks + 1, requests + tries
        finally:
            scratch.unlink(missing_ok=True)

        logger.info(
            "Wrote %d events from Amplitude (%s), %s to %s, to %s in %d chunks "
            "(%d queries); %d lines skipped.",
            total.events,
            self.base_url,
            from_date,
            to_date,
            target,
            chunks,
            requests,
            total.skipped,
        )
        return ExportResult(
            events=total.events, chunks=chunks, requests=requests, skipped=total.skipped
        )

    def _check_range(self, from_date: date, to_date: date) -> None:
        """Refuse, before any query, a range Amplitude would refuse or answer
        only in part."""
        if to_date < from_date:
            raise UsageError(
                f"the export range ends on {to_date}, before it starts on "
                f"{from_date}: give the earlier date first"
            )
        day_after = datetime.combine(to_date + timedelta(days=1), datetime.min.time())
        ready = day_after.replace(tzinfo=UTC) + LANDING_DELAY
        if ready > self._clock():
            raise UsageError(
                f"the export range ends on {to_date}, which Amplitude has not "
                "finished loading: events land in its export about two hours "
                f"after they are sent, so that day is complete from "
                f"{ready:%Y-%m-%d %H:%M} UTC; end the range earlier, or export "
                "after that"
            )

    # --- one chunk ------------------------------------------------------------

    def _fetch(
        self, chunk: HourRange, out: IO[bytes], scratch: Path
    ) -> tuple[_Counts, int]:
        """Append one chunk's events to `out`, asking again when that may help.

        Returns:
            What was written, and how many queries it took.

        Raises:
            _TooLarge: Amplitude would not export the chunk whole.
        """
        start = out.tell()
        retrying = chunk_retrying(
            "Amplitude", chunk, self.attempts, self.backoff_s, logger
        )
        try:
            counts: _Counts = retrying(self._attempt, chunk, out, start, scratch)
        except ChunkFailed as exc:
            raise gave_up(VENDOR, WHERE, chunk, self.attempts, exc) from None
        except _TooLarge:
            tries = retrying.statistics.get("attempt_number", 1)
            logger.info(
                "Amplitude will not export %s whole (400); asking for its halves.",
                chunk,
            )
            raise _TooLarge(tries) from None
        tries = retrying.statistics.get("attempt_number", 1)

        logger.info(
            "Exported %d events of %s from Amplitude in %d queries.",
            counts.events,
            chunk,
            tries,
        )
        return counts, tries

    def _attempt(
        self, chunk: HourRange, out: IO[bytes], start: int, scratch: Path
    ) -> _Counts:
        # A try that failed may have written part of the chunk: cut it off.
        cut_back(out, start)

        counts = _Counts()
        try:
            if self._receive(chunk, scratch):
                _unpack(scratch, out, counts)
        except _DROPPED as exc:
            raise ChunkFailed(type(exc).__name__, lines=counts.events) from None
        except _UNREADABLE:
            raise ChunkFailed(
                "the archive was unreadable", lines=counts.events
            ) from None
        return counts

    def _receive(self, chunk: HourRange, scratch: Path) -> bool:
        """Stream the chunk's archive to `scratch`; False when there is none."""
        params = {
            "start": chunk.first.strftime(HOUR_FORMAT),
            "end": chunk.last.strftime(HOUR_FORMAT),
        }
        with self._client.stream(
            "GET", EXPORT_PATH, params=params, headers=HEADERS
        ) as response:
            if response.status_code == 404:
                return False
            self._judge(response, chunk)
            with scratch.open("wb") as archive:
                for piece in response.iter_raw(COPY_BYTES):
                    archive.write(piece)
        return True

    def _judge(self, response: httpx.Response, chunk: HourRange) -> None:
        """Return for a 2xx; raise what any other answer means."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 400 and chunk.hours > 1:
            raise _TooLarge()
        if status not in (408, 429) and status < 500:
            raise self._refusal(status, chunk)

        wait_s = retry_after_of(response.headers)
        reason = "rate limited (429)" if status == 429 else f"answered {status}"
        if wait_s is not None and wait_s > self.max_wait_s:
            raise TransientError(
                VENDOR,
                f"{WHERE} of {chunk}: {reason} and asks to wait {wait_s:.0f} s; "
                "export again after that",
                retry_after_s=wait_s,
            )
        raise ChunkFailed(reason, retry_after_s=wait_s)

    def _refusal(self, status: int, chunk: HourRange) -> PermanentError:
        """What a 4xx other than 404, 408 and 429 means, and what to change."""
        where = f"{WHERE} of {chunk} on {self.base_url}"
        if status in (401, 403):
            message = (
                f"{where}: Amplitude refused the project's keys ({status}): check "
                "AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY, and that "
                f"`vendors.amplitude.residency` ({self.residency}) is the "
                "project's: an EU project's keys work only on its EU host"
            )
        elif status == 400:
            message = (
                f"{where}: refused (400): one hour's events are over the 4 GB an "
                "export may hold; export that hour with Amplitude's Amazon S3 "
                "export instead"
            )
        else:
            message = f"{where}: refused ({status})"
        return PermanentError(VENDOR, message, status)


def hour_ranges(
    first: date, last: date, chunk_days: int = CHUNK_DAYS
) -> list[HourRange]:
    """Split the days from `first` to `last` into consecutive chunks of
    `chunk_days` whole UTC days, as hours."""
    days = (last - first).days + 1
    start = datetime.combine(first, datetime.min.time())
    step = timedelta(days=chunk_days)
    ranges = []
    for offset in range(0, days, chunk_days):
        begins = start + timedelta(days=offset)
        ends = min(begins + step, start + timedelta(days=days))
        ranges.append(HourRange(begins, ends - timedelta(hours=1)))
    return ranges


def _unpack(scratch: Path, out: IO[bytes], counts: _Counts) -> None:
    """Append the events of every file of the archive to `out`, in name order."""
    with zipfile.ZipFile(scratch) as archive:
        members = sorted(
            (member for member in archive.infolist() if not member.is_dir()),
            key=lambda member: member.filename,
        )
        for member in members:
            with archive.open(member) as stored:
                _write_events(_pieces(stored, member.filename), out, counts)


def _pieces(stored: IO[bytes], name: str) -> Iterator[bytes]:
    """The bytes of one file of the archive, gunzipped when it is gzipped."""
    if not name.endswith(".gz"):
        yield from iter(lambda: stored.read(COPY_BYTES), b"")
        return
    with gzip.GzipFile(fileobj=stored) as unzipped:
        yield from iter(lambda: unzipped.read(COPY_BYTES), b"")


def _write_events(pieces: Iterator[bytes], out: IO[bytes], counts: _Counts) -> None:
    """Copy the JSON events of a file to `out`, a line each, and count them and
    the lines skipped."""
    for line in split_lines(pieces):
        record = line.strip()
        if not record:
            continue
        if not _is_event(record):
            counts.skipped += 1
            continue
        out.write(record + b"\n")
        counts.events += 1


def _is_event(record: bytes) -> bool:
    """Whether a line is an event: a JSON object with an `event_type`."""
    try:
        event = json.loads(record)
    except (ValueError, RecursionError):
        return False
    return isinstance(event, dict) and isinstance(event.get("event_type"), str)


def _added(total: _Counts, counts: _Counts) -> _Counts:
    return _Counts(
        events=total.events + counts.events, skipped=total.skipped + counts.skipped
    )

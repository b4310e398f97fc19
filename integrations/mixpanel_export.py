"""Mixpanel's raw event export, streamed to a JSON lines file a few days at a time.

`MixpanelExport.download` asks the Export API (`GET /api/2.0/export` on
`data.mixpanel.com`, `data-eu.mixpanel.com` or `data-in.mixpanel.com`, by
residency) for the events of a date range and writes them as JSON lines, the file
`referloop report --events` reads.

- The range goes in chunks of `chunk_days` days (7 unless told), one query each,
  widened when a range would take more than `MAX_CHUNKS` queries, so that a whole
  export and its retries fit in Mixpanel's 60 export queries an hour.
- Each answer is read as it arrives, gzip-decoded by httpx, and written line by
  line: an export is never held in memory. The file appears under its name only
  when every chunk is in; until then it is a hidden `.part` file beside it.
- A chunk that fails (429, 408, 5xx, a timeout, a connection dropped before or
  during the answer) is asked again, up to `attempts` times, after the wait a 429
  asks for or a short backoff; the lines it wrote are cut off first, so the file
  never holds part of a chunk, or a chunk twice. A GET of an export is safe to
  repeat.
- Mixpanel allows 60 export queries an hour, 3 a second and 100 at once per
  project. This process keeps its own queries within the first two; another
  process exporting from the same project at the same time meets Mixpanel's 429,
  which is waited out like any other.
- Lines that are not a JSON event are counted and left out. Mixpanel does not
  dedupe raw exports: an event seen twice in a chunk (same name, distinct id, time
  and `$insert_id`) is written once. Events of one day are always in one chunk.
- A refusal becomes an error that says what to fix: the range (400), the service
  account (401), the project (403). Messages carry the range and the status,
  never the credentials, the query string or the body.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx

from integrations.export_file import (
    ChunkFailed,
    ExportClient,
    ExportResult,
    chunk_retrying,
    cut_back,
    gave_up,
    split_lines,
    staged,
)
from integrations.http import retry_after_of
from integrations.mixpanel import VENDOR, Residency
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    TransientError,
    UsageError,
)

logger = logging.getLogger(__name__)

EXPORT_URLS = {
    "us": "https://data.mixpanel.com",
    "eu": "https://data-eu.mixpanel.com",
    "in": "https://data-in.mixpanel.com",
}
EXPORT_PATH = "/api/2.0/export"
WHERE = f"GET {EXPORT_PATH}"

# A week of a B2B product's events is a chunk that is cheap to fetch again; a
# year is 53 of them.
CHUNK_DAYS = 7
# At most this many chunks (queries) per export: the other 10 of Mixpanel's 60 an
# hour are left for retries.
MAX_CHUNKS = 50
# The Export API's limits per project: "60 queries per hour, 3 queries per
# second, and a maximum of 100 concurrent queries". Each window is kept with a
# little margin, since the vendor's clock starts when a request arrives.
QUERIES_PER_HOUR = 60
QUERIES_PER_SECOND = 3
PACE_MARGIN_S = 0.05

CHUNK_ATTEMPTS = 5
BACKOFF_S = 1.0
# The longest wait, for a 429's Retry-After or the hourly limit, taken in this
# thread; a longer one ends the export with a TransientError saying when to
# export again.
MAX_WAIT_S = 120.0
# Mixpanel prepares a large export before its first byte: "larger than 60
# seconds". The read timeout is the longest silence between two reads.
EXPORT_TIMEOUT = httpx.Timeout(180.0, connect=5.0, pool=5.0)
HEADERS = {"Accept": "text/plain", "Accept-Encoding": "gzip"}
# The latest day that can be past in some time zone (UTC+14).
LATEST_ZONE = timedelta(hours=14)

_DROPPED = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
)


@dataclass(frozen=True)
class DayRange:
    """The days from `first` to `last`, both included: one export query."""

    first: date
    last: date

    def __str__(self) -> str:
        return f"{self.first} to {self.last}"

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


@dataclass
class _Counts:
    events: int = 0
    skipped: int = 0
    duplicates: int = 0


class MixpanelExport(ExportClient):
    """Download Mixpanel's raw events of a date range into a JSON lines file.

    `username` and `secret` are a service account's, `project_id` the project
    exported; `export_url` replaces the residency's host (a simulated vendor).
    Build one from the workspace and environment with
    `integrations.vendors.mixpanel_export`. Use one at a time per thread.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        username: str,
        secret: str,
        project_id: int | None,
        *,
        residency: Residency = "us",
        export_url: str | None = None,
        chunk_days: int = CHUNK_DAYS,
        attempts: int = CHUNK_ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        max_wait_s: float = MAX_WAIT_S,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if chunk_days < 1:
            raise ValueError("chunk_days must be 1 or more")
        super().__init__(
            export_url or EXPORT_URLS[residency],
            (username, secret),
            attempts=attempts,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
            timeout=timeout or EXPORT_TIMEOUT,
            transport=transport,
        )
        self.project_id = project_id
        self.chunk_days = chunk_days
        self._pace = _Pace(max_wait_s)

    def download(
        self,
        path: str | os.PathLike[str],
        from_date: date,
        to_date: date,
        *,
        events: Sequence[str] = (),
    ) -> ExportResult:
        """Write the events from `from_date` to `to_date` (both included) to
        `path`, only those named in `events` when given.

        Days are UTC days, or the project's time zone for a project created
        before 2023 (Mixpanel's rule). `path` is replaced only when the whole
        range is in; on an error it is left as it was.

        Raises:
            UsageError: the range ends before it starts or lies in the future,
                or `path` cannot be written.
            ConfigurationError: the project id is not set.
            PermanentError: Mixpanel refused the range (400), the service
                account (401) or its access to the project (403).
            TransientError: Mixpanel kept failing, or asks for a longer wait
                than `max_wait_s`; `retry_after_s` says when to try again.
        """
        _check_range(from_date, to_date)
        if self.project_id is None:
            raise ConfigurationError(
                "Mixpanel needs a project id: give `vendors.mixpanel.project_id` "
                "in the workspace file or MIXPANEL_PROJECT_ID"
            )
        chunks = day_ranges(from_date, to_date, self.chunk_days)
        names = [events] if isinstance(events, str) else list(events)
        target = Path(path)

        with staged(target) as out:
            total, requests = _Counts(), 0
            for chunk in chunks:
                counts, tries = self._fetch(chunk, names, out)
                total = _added(total, counts)
                requests += tries

        logger.info(
            "Wrote %d events from Mixpanel project %s, %s to %s, to %s in %d "
            "chunks (%d queries); %d lines skipped, %d duplicates left out.",
            total.events,
            self.project_id,
            from_date,
            to_date,
            target,
            len(chunks),
            requests,
            total.skipped,
            total.duplicates,
        )
        return ExportResult(
            events=total.events,
            chunks=len(chunks),
            requests=requests,
            skipped=total.skipped,
            duplicates=total.duplicates,
        )

    # --- one chunk ------------------------------------------------------------

    def _fetch(
        self, chunk: DayRange, names: list[str], out: IO[bytes]
    ) -> tuple[_Counts, int]:
        """Append one chunk's events to `out`, asking again when that may help.

        Returns:
            What was written, and how many queries it took.
        """
        start = out.tell()
        retrying = chunk_retrying(
            "Mixpanel", chunk, self.attempts, self.backoff_s, logger
        )
        try:
            counts: _Counts = retrying(self._attempt, chunk, names, out, start)
        except ChunkFailed as exc:
            raise gave_up(VENDOR, WHERE, chunk, self.attempts, exc) from None
        tries = retrying.statistics.get("attempt_number", 1)

        logger.info(
            "Exported %d events of %s from Mixpanel project %s in %d queries.",
            counts.events,
            chunk,
            self.project_id,
            tries,
        )
        return counts, tries

    def _attempt(
        self, chunk: DayRange, names: list[str], out: IO[bytes], start: int
    ) -> _Counts:
        # A try that failed may have written part of the chunk: cut it off.
        cut_back(out, start)
        self._pace.take()

        counts = _Counts()
        params = self._params(chunk, names)
        try:
            with self._client.stream(
                "GET", EXPORT_PATH, params=params, headers=HEADERS
            ) as response:
                self._judge(response, chunk)
                _write_events(response.iter_bytes(), out, counts)
        except _DROPPED as exc:
            raise ChunkFailed(type(exc).__name__, lines=counts.events) from None
        return counts

    def _params(self, chunk: DayRange, names: list[str]) -> dict[str, str]:
        params = {
            "project_id": str(self.project_id),
            "from_date": chunk.first.isoformat(),
            "to_date": chunk.last.isoformat(),
        }
        if names:
            params["event"] = json.dumps(names)
        return params

    def _judge(self, response: httpx.Response, chunk: DayRange) -> None:
        """Return for a 2xx; raise what any other answer means."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if status not in (408, 429) and status < 500:
            raise _refusal(status, chunk, self.project_id)

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


class _Pace:
    """This process's export queries, kept within Mixpanel's limits: 3 in any
    second and 60 in any hour."""

    LIMITS: ClassVar[tuple[tuple[int, float], ...]] = (
        (QUERIES_PER_SECOND, 1.0),
        (QUERIES_PER_HOUR, 3_600.0),
    )

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._sent: deque[float] = deque(maxlen=QUERIES_PER_HOUR)

    def take(self) -> None:
        """Wait for the next query's turn, and count it.

        Raises:
            TransientError: the turn is further off than `max_wait_s`.
        """
        wait_s = self._wait_s(time.monotonic())
        if wait_s > self.max_wait_s:
            raise TransientError(
                VENDOR,
                f"{WHERE}: Mixpanel allows {QUERIES_PER_HOUR} export queries an "
                f"hour and this process has used them; export again in "
                f"{math.ceil(wait_s)} s",
                retry_after_s=wait_s,
            )
        if wait_s > 0:
            time.sleep(wait_s)
        self._sent.append(time.monotonic())

    def _wait_s(self, now: float) -> float:
        waits = [0.0]
        for count, window_s in self.LIMITS:
            if len(self._sent) >= count:
                opens = self._sent[-count] + window_s + PACE_MARGIN_S
                waits.append(opens - now)
        return max(waits)


def day_ranges(first: date, last: date, chunk_days: int = CHUNK_DAYS) -> list[DayRange]:
    """Split the days from `first` to `last` into consecutive chunks of
    `chunk_days`, or longer ones when that would take more than `MAX_CHUNKS`."""
    days = (last - first).days + 1
    if days < 1:
        return []
    size = max(chunk_days, math.ceil(days / MAX_CHUNKS))
    return [
        DayRange(
            first + timedelta(days=offset),
            min(first + timedelta(days=offset + size - 1), last),
        )
        for offset in range(0, days, size)
    ]


def _check_range(from_date: date, to_date: date) -> None:
    """Refuse, before any query, a range Mixpanel would refuse for sure."""
    if to_date < from_date:
        raise UsageError(
            f"the export range ends on {to_date}, before it starts on "
            f"{from_date}: give the earlier date first"
        )
    latest = (datetime.now(UTC) + LATEST_ZONE).date()
    if to_date > latest:
        raise UsageError(
            f"the export range ends on {to_date}, in the future: Mixpanel "
            "exports days up to today"
        )


def _refusal(status: int, chunk: DayRange, project_id: int | None) -> PermanentError:
    """What a 4xx other than 408 and 429 means, and what to change."""
    where = f"{WHERE} of {chunk}"
    if status == 400:
        message = (
            f"{where}: refused (400): a date is before the project was created or "
            "after today (in UTC, or the project's time zone for projects created "
            "before 2023); start or end the range within the project's life"
        )
    elif status == 401:
        message = (
            f"{where}: Mixpanel refused the service account (401): check "
            "MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SERVICE_SECRET"
        )
    elif status == 403:
        message = (
            f"{where}: the service account may not read project {project_id} "
            "(403): add it to the project in Mixpanel's organization settings, "
            "or check `vendors.mixpanel.project_id` and MIXPANEL_PROJECT_ID"
        )
    else:
        message = f"{where}: refused ({status})"
    return PermanentError(VENDOR, message, status)


def _write_events(pieces: Iterable[bytes], out: IO[bytes], counts: _Counts) -> None:
    """Copy the JSON events of an answer to `out`, a line each, and count them,
    the lines skipped and the duplicates."""
    seen: set[bytes] = set()
    for line in split_lines(pieces):
        record = line.strip()
        if not record:
            continue
        event = _event(record)
        if event is None:
            counts.skipped += 1
            continue
        key = _dedupe_key(event)
        if key is not None and key in seen:
            counts.duplicates += 1
            continue
        if key is not None:
            seen.add(key)
        out.write(record + b"\n")
        counts.events += 1


def _event(record: bytes) -> dict[str, Any] | None:
    """The event on a line: a JSON object with an `event` name and
    `properties`; None for anything else."""
    try:
        event = json.loads(record)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event if isinstance(event.get("properties"), dict) else None


def _dedupe_key(event: dict[str, Any]) -> bytes | None:
    """What Mixpanel dedupes by: name, distinct id, time and `$insert_id`.

    None for an event without an insert id, which Mixpanel never dedupes.
    """
    properties = event["properties"]
    insert_id = properties.get("$insert_id")
    if not isinstance(insert_id, str) or not insert_id:
        return None
    fields = [event["event"], properties.get("distinct_id"), properties.get("time")]
    material = json.dumps([*fields, insert_id], default=str).encode("utf-8")
    return hashlib.blake2b(material, digest_size=16).digest()


def _added(total: _Counts, counts: _Counts) -> _Counts:
    return _Counts(
        events=total.events + counts.events,
        skipped=total.skipped + counts.skipped,
        duplicates=total.duplicates + counts.duplicates,
    )

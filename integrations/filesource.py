"""A local file of triggers: product events and cohort members, as JSONL or CSV.

The embedded default and tests read triggers from a file instead of a vendor. One
file may hold both kinds of record; for a cohort it stands in for the vendor's
cohort, listing its members.

JSONL (`.jsonl`, `.ndjson`) holds one JSON object a line:

    {"event": "permissions_set", "id": "evt_1", "time": "2026-12-01T09:30:00Z",
     "user": {"id": "u_1", ...}, "account": {"id": "acct_1", ...},
     "properties": {...}}
    {"cohort": "mixpanel:61877", "user": {"id": "u_2", ...}, "account": {...}}

CSV (`.csv`) has a header row naming the columns `event`, `id`, `time`, `cohort`,
`user.id`, `user.<field>`, `account.id`, `account.<field>` and
`properties.<name>`. Values stay strings, an empty cell is an absent field, and a
cell may not span lines.

A record that cannot be used becomes a `Rejected` that says where it was and why,
never what it held (it may hold personal data), and reading goes on. A line longer
than MAX_LINE_BYTES is refused without being held in memory.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from integrations.base import Member, ProductEvent, Rejected
from orchestrator.errors import ConfigurationError

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
PAGE_SIZE = 1000
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_SUFFIXES = frozenset({".csv"})
CSV_COLUMNS = frozenset({"event", "id", "time", "cohort"})
CSV_GROUPS = frozenset({"user", "account", "properties"})
BOTH_KINDS = "has both `event` and `cohort`; a record is one or the other"
_BOM = b"\xef\xbb\xbf"

Record = dict[str, Any]


class _UnreadableError(ValueError):
    """A record that cannot be used; the message names fields, never values."""


@dataclass(frozen=True)
class _Entry:
    """One record, read, and which reading reports it.

    An event goes to `events()`, a member to the pages of its cohort. A record that
    cannot be told apart (bad JSON, neither kind) is reported by `events()` alone,
    so that a caller reading both kinds from one file hears of it once.
    """

    value: ProductEvent | Member | Rejected
    cohort: str | None = None
    is_event: bool = False

    @property
    def is_unattributable(self) -> bool:
        return self.cohort is None and not self.is_event

    def concerns_events(self) -> bool:
        return self.is_event or self.is_unattributable


class FileSource:
    """Read product events and cohort members from one JSONL or CSV file.

    Every reading opens the file again and streams it, except that `events()` holds
    the file's events in memory to yield them in time order: it suits local runs
    and tests, not millions of events.
    """

    name: ClassVar[str] = "file"

    def __init__(self, path: Path, page_size: int = PAGE_SIZE) -> None:
        suffix = Path(path).suffix.lower()
        if suffix not in JSONL_SUFFIXES | CSV_SUFFIXES:
            raise ConfigurationError(
                f"the trigger file {path} must end in .jsonl, .ndjson or .csv"
            )
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")

        self.path = Path(path)
        self.page_size = page_size
        self.is_csv = suffix in CSV_SUFFIXES

    def events(self) -> Iterator[ProductEvent | Rejected]:
        """Yield the rejections first, in file order, then the events by time."""
        found: list[ProductEvent] = []
        rejected = 0
        for entry in self._entries():
            value = entry.value
            if not entry.concerns_events():
                continue
            if isinstance(value, ProductEvent):
                found.append(value)
            elif isinstance(value, Rejected):
                rejected += 1
                yield value

        logger.info(
            "Read %d events from %s; %d records rejected.",
            len(found),
            self.path.name,
            rejected,
        )
        yield from sorted(found, key=_event_time)

    def cohort_pages(self, cohort: str) -> Iterator[list[Member | Rejected]]:
        """Yield the cohort's members in pages of `page_size`, with rejections.

        Rejections of this cohort's records ride along in the page being filled
        and do not count towards its size. Lines that cannot be told to be
        anyone's (bad JSON, too long) are `events()`'s to report; here they are
        only counted in a warning. A cohort with no member in the file gives one
        empty page: the cohort is empty, which is not the same as not read.
        """
        page: list[Member | Rejected] = []
        members = pages = in_page = unattributable = 0
        for entry in self._entries():
            value = entry.value
            unattributable += entry.is_unattributable
            if isinstance(value, ProductEvent) or entry.cohort != cohort:
                continue
            page.append(value)
            if isinstance(value, Member):
                members, in_page = members + 1, in_page + 1
            if in_page == self.page_size:
                pages += 1
                yield page
                page, in_page = [], 0

        if page or pages == 0:
            pages += 1
            yield page
        self._log_cohort_read(cohort, members, pages, unattributable)

    def _log_cohort_read(
        self, cohort: str, members: int, pages: int, unattributable: int
    ) -> None:
        logger.info(
            "Read %d members of cohort %s from %s in %d pages.",
            members,
            cohort,
            self.path.name,
            pages,
        )
        if unattributable:
            logger.warning(
                "Skipped %d unreadable lines of %s while reading cohort %s; "
                "events() reports each of them.",
                unattributable,
                self.path.name,
                cohort,
            )

    def _entries(self) -> Iterator[_Entry]:
        records = self._csv_records() if self.is_csv else self._jsonl_records()
        for item in records:
            if isinstance(item, Rejected):
                yield _Entry(item)
            else:
                yield _entry(*item)

    def _jsonl_records(self) -> Iterator[tuple[str, Any] | Rejected]:
        for item in self._lines():
            if isinstance(item, Rejected):
                yield item
                continue
            where, text = item
            try:
                record = json.loads(text)
            except (ValueError, RecursionError):
                yield Rejected(where, "not valid JSON")
                continue
            yield where, record

    def _csv_records(self) -> Iterator[tuple[str, Any] | Rejected]:
        lines = self._lines()
        header = next(lines, None)
        if header is None:
            return
        if isinstance(header, Rejected):
            yield Rejected(header.where, f"header {header.reason}; nothing read")
            return
        try:
            columns = _columns(header[1])
        except _UnreadableError as exc:
            yield Rejected(header[0], f"{exc}; nothing read")
            return

        for item in lines:
            yield item if isinstance(item, Rejected) else _csv_row(columns, *item)

    def _lines(self) -> Iterator[tuple[str, str] | Rejected]:
        """Yield each non-blank line with where it is, or why it cannot be read."""
        try:
            stream = self.path.open("rb")
        except OSError as exc:
            message = f"cannot read the trigger file {self.path}: {exc.strerror}"
            raise ConfigurationError(message) from exc

        with stream:
            for number, raw in enumerate(_physical_lines(stream), start=1):
                where = f"{self.path.name}:{number}"
                if raw is None:
                    yield Rejected(where, f"line longer than {MAX_LINE_BYTES} bytes")
                    continue
                try:
                    text = raw.removeprefix(_BOM if number == 1 else b"").decode()
                except UnicodeDecodeError:
                    yield Rejected(where, "not valid UTF-8")
                    continue
                if text.strip():
                    yield where, text


def _physical_lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """Yield each line without its line break, or None for one that is too long.

    A long line is skipped in chunks, never read whole.
    """
    limit = MAX_LINE_BYTES + 2
    while line := stream.readline(limit):
        is_whole = line.endswith(b"\n") or len(line) < limit
        content = line.rstrip(b"\r\n")
        if not is_whole:
            _skip_rest_of_line(stream)
        yield content if is_whole and len(content) <= MAX_LINE_BYTES else None


def _skip_rest_of_line(stream: BinaryIO) -> None:
    while chunk := stream.readline(MAX_LINE_BYTES):
        if chunk.endswith(b"\n"):
            return


def _columns(text: str) -> list[str]:
    """The header's columns, checked: every row depends on them."""
    try:
        columns = [column.strip() for column in _cells(text)]
    except csv.Error as exc:
        raise _UnreadableError("header is not valid CSV") from exc
    for number, column in enumerate(columns, start=1):
        group, dot, field = column.partition(".")
        if column not in CSV_COLUMNS and not (group in CSV_GROUPS and dot and field):
            # Not named: a file without a header row would put personal data here.
            raise _UnreadableError(
                f"header column {number} is not event, id, time, cohort, "
                "user.<field>, account.<field> or properties.<name>"
            )
    if len(set(columns)) != len(columns):
        raise _UnreadableError("header names a column twice")
    if "user.id" not in columns:
        raise _UnreadableError("header has no `user.id` column")
    return columns


def _csv_row(columns: list[str], where: str, text: str) -> tuple[str, Any] | Rejected:
    try:
        cells = _cells(text)
    except csv.Error:
        reason = "not valid CSV: a quote is unterminated or misplaced"
        return Rejected(where, f"{reason} (a cell may not span lines)")
    if len(cells) != len(columns):
        return Rejected(where, f"has {len(cells)} cells; the header has {len(columns)}")

    record: Record = {}
    for column, cell in zip(columns, cells, strict=True):
        group, _, field = column.partition(".")
        if cell and field:
            record.setdefault(group, {})[field] = cell
        elif cell:
            record[column] = cell
    return where, record


def _cells(text: str) -> list[str]:
    return next(csv.reader([text], strict=True), [])


def _entry(where: str, record: Any) -> _Entry:
    """Tell an event from a cohort member, and read it."""
    if not isinstance(record, dict):
        return _Entry(Rejected(where, "not a JSON object"))
    if "event" in record and "cohort" in record:
        return _Entry(Rejected(where, BOTH_KINDS))
    if "event" in record:
        return _Entry(_attempt(_event, where, record), is_event=True)
    if "cohort" not in record:
        return _Entry(Rejected(where, "has neither `event` nor `cohort`"))

    cohort = record["cohort"]
    if not isinstance(cohort, str) or not cohort.strip():
        return _Entry(Rejected(where, "`cohort` is not a cohort name"))
    return _Entry(_attempt(_member, where, record), cohort=cohort)


def read_event(where: str, record: Any) -> ProductEvent | Rejected:
    """One product event from its JSON record, or why it cannot be used.

    The same rules as a file's event lines: `event`, `id`, `time` with an offset
    and `user.id` are required. The reason never holds the record's content.
    """
    if not isinstance(record, dict):
        return Rejected(where, "not a JSON object")
    if "cohort" in record:
        return Rejected(where, "has `cohort`: only events are taken here")
    if "event" not in record:
        return Rejected(where, "missing `event`")
    value = _attempt(_event, where, record)
    return value if not isinstance(value, Member) else Rejected(where, "not an event")


def _attempt(
    read: Callable[[Record], ProductEvent | Member], where: str, record: Record
) -> ProductEvent | Member | Rejected:
    try:
        return read(record)
    except _UnreadableError as exc:
        return Rejected(where, str(exc))


def _event(record: Record) -> ProductEvent:
    user = _object(record, "user", required=True)
    account = _object(record, "account")
    return ProductEvent(
        event_id=_identifier(record, "id", "events need one, to apply once"),
        name=_identifier(record, "event"),
        user_id=_identifier(user, "id", label="user.id"),
        time=_time(record),
        account_id=_optional_identifier(account, "account.id"),
        properties=_object(record, "properties"),
        user=user,
        account=account,
    )


def _member(record: Record) -> Member:
    user = _object(record, "user", required=True)
    account = _object(record, "account")
    return Member(
        user_id=_identifier(user, "id", label="user.id"),
        account_id=_optional_identifier(account, "account.id"),
        user=user,
        account=account,
    )


def _object(record: Record, key: str, *, required: bool = False) -> Record:
    value = record.get(key)
    if value is None and required:
        raise _UnreadableError(f"missing `{key}`")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _UnreadableError(f"`{key}` is not an object")
    return value


def _identifier(
    record: Record, key: str, why: str | None = None, *, label: str | None = None
) -> str:
    name = label or key
    value = record.get(key)
    if value is None:
        hint = f": {why}" if why else ""
        raise _UnreadableError(f"missing `{name}`{hint}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _UnreadableError(f"`{name}` is not a string")
    text = str(value).strip()
    if not text:
        raise _UnreadableError(f"`{name}` is empty")
    return text


def _optional_identifier(account: Record, label: str) -> str | None:
    if account.get("id") is None:
        return None
    return _identifier(account, "id", label=label)


def _time(record: Record) -> datetime:
    value = record.get("time")
    if value is None:
        raise _UnreadableError("missing `time`: events need one")
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise _UnreadableError("`time` is not an ISO 8601 timestamp")
    if moment.utcoffset() is None:
        raise _UnreadableError("`time` has no UTC offset: add Z or +00:00")
    return moment


def _event_time(event: ProductEvent) -> datetime:
    return event.time

"""The file source: events and cohort members from JSONL or CSV, bad records refused."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.base import CohortSource, EventSource, Member, ProductEvent, Rejected
from integrations.filesource import MAX_LINE_BYTES, FileSource
from orchestrator.errors import ConfigurationError

COHORT = "mixpanel:61877"
EMAIL = "dana.secret@example.com"
NAME = "Dana Secretname"
USER = {"id": "u_1", "first_name": "Dana", "email": EMAIL, "time_zone": "Europe/Oslo"}
ACCOUNT = {"id": "acct_1", "name": "Halden & Marsh", "plan": "business"}


def _event(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": "document_pack_uploaded",
        "id": "evt_1",
        "time": "2026-12-01T09:30:00Z",
        "user": dict(USER),
        "account": dict(ACCOUNT),
        "properties": {"pack_name": "Falcon Q3", "document_count": 38},
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


def _member(user_id: str = "u_2", cohort: str = COHORT) -> dict[str, Any]:
    return {"cohort": cohort, "user": {**USER, "id": user_id}, "account": ACCOUNT}


def _jsonl(tmp_path: Path, *lines: Any, name: str = "triggers.jsonl") -> FileSource:
    """Write one line per item: dicts as JSON, strings as they are."""
    texts = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path = tmp_path / name
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return FileSource(path)


def _csv(tmp_path: Path, text: str) -> FileSource:
    path = tmp_path / "triggers.csv"
    path.write_text(text, encoding="utf-8")
    return FileSource(path)


def _rejected(items: Any) -> list[Rejected]:
    return [item for item in items if isinstance(item, Rejected)]


def _pages_of(source: FileSource, cohort: str = COHORT) -> list[list[Any]]:
    return [list(page) for page in source.cohort_pages(cohort)]


def test_a_file_source_is_both_kinds_of_source(tmp_path: Path) -> None:
    """The engine can read cohorts and events from the same file."""
    source = _jsonl(tmp_path, _event())

    assert isinstance(source, CohortSource)
    assert isinstance(source, EventSource)
    assert source.name == "file"


def test_a_jsonl_event_is_read_with_its_user_account_and_properties(
    tmp_path: Path,
) -> None:
    """Every part of the record reaches the event; the time keeps its offset."""
    source = _jsonl(tmp_path, _event())

    events = list(source.events())

    assert events == [
        ProductEvent(
            event_id="evt_1",
            name="document_pack_uploaded",
            user_id="u_1",
            time=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
            account_id="acct_1",
            properties={"pack_name": "Falcon Q3", "document_count": 38},
            user=USER,
            account=ACCOUNT,
        )
    ]


def test_events_come_in_time_order_and_without_cohort_members(
    tmp_path: Path,
) -> None:
    """A file written out of order is still read in the order things happened."""
    source = _jsonl(
        tmp_path,
        _event(id="late", time="2026-12-02T08:00:00+01:00"),
        _member(),
        _event(id="early", time="2026-12-01T23:00:00-05:00"),
    )

    events = list(source.events())

    assert [event.event_id for event in events] == ["early", "late"]


def test_a_cohort_member_is_read(tmp_path: Path) -> None:
    """A member record becomes a Member of its cohort; events are left out."""
    source = _jsonl(tmp_path, _event(), _member("u_2"))

    pages = _pages_of(source)

    assert pages == [[Member("u_2", "acct_1", {**USER, "id": "u_2"}, ACCOUNT)]]


def test_a_large_cohort_comes_in_pages_of_a_thousand(tmp_path: Path) -> None:
    """2,500 members give pages of 1,000, 1,000 and 500, in file order."""
    members = [_member(f"u_{number}") for number in range(2500)]
    other = _member("u_other", cohort="mixpanel:63390")
    source = _jsonl(tmp_path, *members[:1200], other, *members[1200:])

    pages = _pages_of(source)

    assert [len(page) for page in pages] == [1000, 1000, 500]
    user_ids = [member.user_id for page in pages for member in page]
    assert user_ids == [f"u_{number}" for number in range(2500)]


def test_an_empty_cohort_gives_one_empty_page(tmp_path: Path) -> None:
    """No member in the file means an empty cohort, which a snapshot must record."""
    source = _jsonl(tmp_path, _event(), _member(cohort="mixpanel:63390"))

    assert _pages_of(source) == [[]]


def test_csv_rows_are_read_as_strings_and_empty_cells_are_absent(
    tmp_path: Path,
) -> None:
    """Columns name where each value goes; a quoted comma stays in its cell."""
    source = _csv(
        tmp_path,
        "event,id,time,cohort,user.id,user.first_name,account.id,account.name,"
        "properties.document_count\n"
        'document_pack_uploaded,evt_1,2026-12-01T09:30:00Z,,u_1,Dana,acct_1,"Halden, '
        'Marsh",38\n'
        ",,,mixpanel:61877,u_2,,acct_1,,\n",
    )

    events = list(source.events())
    pages = _pages_of(source)

    assert events == [
        ProductEvent(
            event_id="evt_1",
            name="document_pack_uploaded",
            user_id="u_1",
            time=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
            account_id="acct_1",
            properties={"document_count": "38"},
            user={"id": "u_1", "first_name": "Dana"},
            account={"id": "acct_1", "name": "Halden, Marsh"},
        )
    ]
    assert pages == [[Member("u_2", "acct_1", {"id": "u_2"}, {"id": "acct_1"})]]


def test_a_csv_header_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Spreadsheets often write one; it is not part of the first column's name."""
    path = tmp_path / "cohort.csv"
    path.write_bytes(b"\xef\xbb\xbfcohort,user.id\nmixpanel:61877,u_1\n")

    pages = _pages_of(FileSource(path))

    assert pages == [[Member("u_1", None, {"id": "u_1"}, {})]]


JSONL_REJECTIONS = [
    pytest.param("{not json", "not valid JSON", id="bad-json"),
    pytest.param(json.dumps([USER]), "not a JSON object", id="not-an-object"),
    pytest.param(_event(user=None), "missing `user`", id="no-user"),
    pytest.param(_event(user={"email": EMAIL}), "missing `user.id`", id="no-user-id"),
    pytest.param(_event(user=EMAIL), "`user` is not an object", id="user-not-object"),
    pytest.param(_event(user={"id": ""}), "`user.id` is empty", id="empty-user-id"),
    pytest.param(_event(user={"id": True}), "`user.id` is not", id="bool-user-id"),
    pytest.param(_event(time=None), "missing `time`", id="no-time"),
    pytest.param(_event(time="yesterday"), "not an ISO 8601", id="bad-time"),
    pytest.param(_event(time=1764581400), "not an ISO 8601", id="epoch-time"),
    pytest.param(_event(time="2026-12-01T09:30:00"), "no UTC offset", id="naive"),
    pytest.param(_event(id=None), "missing `id`", id="no-id"),
    pytest.param(_event(account=NAME), "`account` is not", id="account-not-object"),
    pytest.param(_event(properties=[NAME]), "`properties` is not", id="bad-props"),
    pytest.param({"user": USER}, "neither `event` nor `cohort`", id="neither"),
    pytest.param({**_event(), "cohort": COHORT}, "both", id="both"),
    pytest.param({"cohort": 61877, "user": USER}, "`cohort` is not", id="bad-cohort"),
]


@pytest.mark.parametrize(("line", "reason"), JSONL_REJECTIONS)
def test_an_unreadable_record_is_rejected_and_reading_goes_on(
    tmp_path: Path, line: Any, reason: str
) -> None:
    """The rejection says where and why; the good record after it is still read."""
    source = _jsonl(tmp_path, _event(id="before"), line, _event(id="after"))

    items = list(source.events())

    [rejected] = _rejected(items)
    assert rejected.where == "triggers.jsonl:2"
    assert reason in rejected.reason
    assert [item.event_id for item in items if isinstance(item, ProductEvent)] == [
        "before",
        "after",
    ]


def test_a_member_without_a_user_id_is_rejected_in_its_cohort_pages(
    tmp_path: Path,
) -> None:
    """A bad member record is reported with the cohort it names, not to events."""
    bad = {"cohort": COHORT, "user": {"email": EMAIL}}
    source = _jsonl(tmp_path, _member("u_1"), bad, _member("u_3"))

    pages = _pages_of(source)
    events = list(source.events())

    assert pages == [
        [
            Member("u_1", "acct_1", {**USER, "id": "u_1"}, ACCOUNT),
            Rejected("triggers.jsonl:2", "missing `user.id`"),
            Member("u_3", "acct_1", {**USER, "id": "u_3"}, ACCOUNT),
        ]
    ]
    assert events == []


def test_an_unattributable_line_is_reported_once_by_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad JSON could have been either kind: events() reports it, pages count it."""
    source = _jsonl(tmp_path, _member("u_1"), "{oops", _event())

    from_events = _rejected(source.events())
    with caplog.at_level(logging.WARNING, logger="integrations.filesource"):
        pages = _pages_of(source)

    assert from_events == [Rejected("triggers.jsonl:2", "not valid JSON")]
    assert _rejected(item for page in pages for item in page) == []
    assert "Skipped 1 unreadable lines of triggers.jsonl" in caplog.text


def test_a_line_longer_than_the_bound_is_refused_unread(tmp_path: Path) -> None:
    """A 64 KiB bound protects memory; the lines after it are still read."""
    padding = "x" * (MAX_LINE_BYTES + 10)
    source = _jsonl(tmp_path, _event(id="a"), _event(id="b", pad=padding), _event())

    items = list(source.events())

    assert _rejected(items) == [
        Rejected("triggers.jsonl:2", f"line longer than {MAX_LINE_BYTES} bytes")
    ]
    assert len(items) == 3


def test_a_line_of_exactly_the_bound_is_read(tmp_path: Path) -> None:
    """The bound counts the line's own bytes, not its line break."""
    record = _event()
    record["properties"]["pad"] = ""
    room = MAX_LINE_BYTES - len(json.dumps(record))
    record["properties"]["pad"] = "x" * room
    path = tmp_path / "bound.jsonl"
    path.write_bytes(json.dumps(record).encode() + b"\r\n")

    items = list(FileSource(path).events())

    assert [type(item) for item in items] == [ProductEvent]


def test_a_line_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    """Bytes that do not decode are refused without echoing them."""
    path = tmp_path / "triggers.jsonl"
    path.write_bytes(json.dumps(_event()).encode() + b"\n\xff\xfe{}\n")

    items = list(FileSource(path).events())

    assert _rejected(items) == [Rejected("triggers.jsonl:2", "not valid UTF-8")]


CSV_HEADER = "event,id,time,user.id,user.email\n"
CSV_REJECTIONS = [
    pytest.param(CSV_HEADER + f"x,e1,2026-12-01T09:30:00Z,u_1,{EMAIL},extra\n",
                 "has 6 cells; the header has 5", id="cells"),
    pytest.param(CSV_HEADER + f'x,e1,2026-12-01T09:30:00Z,u_1,"{EMAIL}\n',
                 "quote is unterminated", id="quote"),
    pytest.param(CSV_HEADER + f"x,e1,,u_1,{EMAIL}\n", "missing `time`", id="time"),
    pytest.param(CSV_HEADER + f"x,e1,2026-12-01T09:30:00Z,,{EMAIL}\n",
                 "missing `user.id`", id="user"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), CSV_REJECTIONS)
def test_an_unreadable_csv_row_is_rejected_and_reading_goes_on(
    tmp_path: Path, text: str, reason: str
) -> None:
    """Row 2 is refused; row 3, a good one, is read."""
    good = "x,e2,2026-12-01T10:00:00Z,u_2,\n"
    source = _csv(tmp_path, text + good)

    items = list(source.events())

    [rejected] = _rejected(items)
    assert rejected.where == "triggers.csv:2"
    assert reason in rejected.reason
    assert [item.event_id for item in items if isinstance(item, ProductEvent)] == ["e2"]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("event,id,time,user_id\n", "header column 4 is not event"),
        ("event,id,time,user.name\n", "no `user.id` column"),
        ("event,user.id,user.id\n", "names a column twice"),
    ],
)
def test_a_bad_csv_header_is_rejected_once_and_nothing_is_read(
    tmp_path: Path, header: str, reason: str
) -> None:
    """Every row depends on the header, so one rejection says it all."""
    source = _csv(tmp_path, header + "x,e1,2026-12-01T09:30:00Z,u_1\n")

    items = list(source.events())

    assert len(items) == 1
    assert items[0].where == "triggers.csv:1"
    assert reason in items[0].reason


def test_no_rejection_carries_personal_data(tmp_path: Path) -> None:
    """Reasons name fields, never values: the records held an email and a name."""
    lines = [param.values[0] for param in JSONL_REJECTIONS]
    lines.append('{"event": "x", "user": {"id": "' + EMAIL + '"}, "time": "' + NAME)
    source = _jsonl(tmp_path, *lines, {"cohort": COHORT, "user": {"name": NAME}})

    rejected = _rejected(source.events())
    rejected += _rejected(item for page in _pages_of(source) for item in page)

    assert len(rejected) == len(lines) + 1
    for item in rejected:
        for secret in (EMAIL, NAME, "Dana", "Secretname"):
            assert secret not in item.where + item.reason


def test_a_csv_without_a_header_row_is_refused_without_echoing_it(
    tmp_path: Path,
) -> None:
    """The first data row taken for a header must not leak into the reason."""
    source = _csv(tmp_path, f"x,e1,2026-12-01T09:30:00Z,u_1,{EMAIL}\n")

    [rejected] = list(source.events())

    assert rejected == Rejected(
        "triggers.csv:1",
        "header column 1 is not event, id, time, cohort, user.<field>, "
        "account.<field> or properties.<name>; nothing read",
    )


def test_a_file_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    """The suffix decides the format; anything else is the operator's to fix."""
    with pytest.raises(ConfigurationError, match=r"\.jsonl, \.ndjson or \.csv"):
        FileSource(tmp_path / "triggers.xlsx")


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    """The file is named; nothing is read."""
    source = FileSource(tmp_path / "absent.jsonl")

    with pytest.raises(ConfigurationError, match=r"absent\.jsonl"):
        list(source.events())


@settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_are_read_or_rejected_never_raised(
    tmp_path: Path, lines: list[bytes]
) -> None:
    """Whatever the file holds, each reading yields records or rejections."""
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(b"\n".join(lines))
        source = FileSource(path)

        events = list(source.events())
        pages = list(source.cohort_pages(COHORT))

        assert all(isinstance(item, ProductEvent | Rejected) for item in events)
        assert all(isinstance(item, Member | Rejected) for p in pages for item in p)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
_KEYS = st.sampled_from(
    ["event", "id", "time", "cohort", "user", "account", "properties"]
)


@settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.dictionaries(_KEYS, _JSON_VALUES), max_size=8))
def test_any_json_object_is_read_or_rejected_never_raised(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    """Fields of every type in every place are read or refused, one by one."""
    source = _jsonl(tmp_path, *records, {"cohort": COHORT, "user": {"id": 7}})

    events = list(source.events())
    pages = list(source.cohort_pages(COHORT))

    assert len(events) + sum(len(page) for page in pages) >= len(records)
    assert pages[-1][-1] == Member("7", None, {"id": 7}, {})

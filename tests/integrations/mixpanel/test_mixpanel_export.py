"""Mixpanel's raw event export, downloaded to a file in day chunks.

Every download goes to the simulated Mixpanel over real HTTP on loopback; the file
it writes is read as `referloop report --events` reads it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations import vendors
from integrations.mixpanel_export import (
    EXPORT_URLS,
    MAX_CHUNKS,
    ExportResult,
    MixpanelExport,
    day_ranges,
)
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    TransientError,
    UsageError,
)
from orchestrator.metrics import Funnel
from orchestrator.model import MetricsSettings, Workspace
from simulator import Fault, Received, Simulator
from simulator.env import vendor_env
from simulator.mixpanel import SIM_PROJECT_ID, SIM_SECRET, SIM_USERNAME, MixpanelSim

EXPORT = "/api/2.0/export"
AUTH = (SIM_USERNAME, SIM_SECRET)
FIRST = date(2026, 11, 1)
LAST = date(2026, 11, 10)
# The events `Funnel.read_mixpanel_export` keeps with the default settings.
LOOP_EVENTS = (
    "referloop nudge sent",
    "invite_sent",
    "invite_accepted",
    "invitee_activated",
)
OTHER_EVENT = "Document Viewed"

ExportFactory = Callable[..., MixpanelExport]


def event(
    name: str, user: str, day: date, hour: int = 12, **extra: Any
) -> dict[str, Any]:
    """One event as the export answers it, at `hour` UTC on `day`."""
    moment = datetime(day.year, day.month, day.day, hour, 15, tzinfo=UTC)
    properties = {
        "time": int(moment.timestamp()),
        "distinct_id": user,
        "$insert_id": f"{user}-{day:%Y%m%d}-{hour}",
        "playbook": "pack-reviewers",
        "referrer_id": "user-0",
        **extra,
    }
    return {"event": name, "properties": properties}


def days_of_events(first: date, last: date) -> list[dict[str, Any]]:
    """For each day: each loop event once, and one the report has no use for."""
    found = []
    day = first
    while day <= last:
        names = (*LOOP_EVENTS, OTHER_EVENT)
        found += [event(name, f"user-{n}", day, n) for n, name in enumerate(names)]
        day += timedelta(days=1)
    return found


def in_range(events: list[dict[str, Any]], first: date, last: date) -> list[Any]:
    return [e for e in events if first <= day_of(e) <= last]


def day_of(item: dict[str, Any]) -> date:
    return datetime.fromtimestamp(item["properties"]["time"], UTC).date()


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def keys(events: list[dict[str, Any]]) -> Counter[str]:
    """Each event by name and insert id, counted: a multiset to compare files by."""
    return Counter(f"{e['event']}/{e['properties']['$insert_id']}" for e in events)


def kept_by_report(path: Path) -> int:
    funnel = Funnel()
    try:
        return funnel.read_mixpanel_export(path, MetricsSettings())
    finally:
        funnel.close()


def exports(sim: Simulator) -> list[Received]:
    return sim.received("mixpanel", EXPORT)


def chunk_of(item: Received) -> tuple[str | None, str | None]:
    return item.request.param("from_date"), item.request.param("to_date")


def leftovers(folder: Path) -> list[str]:
    return sorted(item.name for item in folder.iterdir())


@pytest.fixture
def export_for(sim: Simulator, mixpanel: MixpanelSim) -> Iterator[ExportFactory]:
    """Build exports against the simulator; settings given replace the defaults.

    Backoff is short here: the waits are the code's, not the test's subject.
    """
    built: list[MixpanelExport] = []

    def build(**settings: Any) -> MixpanelExport:
        options: dict[str, Any] = {
            "export_url": sim.url("mixpanel"),
            "timeout": httpx.Timeout(3.0),
            "backoff_s": 0.05,
            **settings,
        }
        username = options.pop("username", SIM_USERNAME)
        secret = options.pop("secret", SIM_SECRET)
        project_id = options.pop("project_id", SIM_PROJECT_ID)
        export = MixpanelExport(username, secret, project_id, **options)
        built.append(export)
        return export

    yield build
    for export in built:
        export.close()


# --- what is written ------------------------------------------------------------


def test_a_range_comes_in_day_chunks_once_each_and_reads_as_an_export(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    """Ten days in chunks of three: four queries, every event of the range
    once, none from the days around it, and the report reads them."""
    seeded = days_of_events(FIRST - timedelta(days=3), LAST + timedelta(days=3))
    mixpanel.seed_export(seeded)
    path = tmp_path / "export.jsonl"

    result = export_for(chunk_days=3).download(path, FIRST, LAST)

    expected = in_range(seeded, FIRST, LAST)
    asked = [chunk_of(item) for item in exports(sim)]
    projects = {r.request.param("project_id") for r in exports(sim)}
    assert result == ExportResult(events=len(expected), chunks=4, requests=4)
    assert asked == [
        ("2026-11-01", "2026-11-03"),
        ("2026-11-04", "2026-11-06"),
        ("2026-11-07", "2026-11-09"),
        ("2026-11-10", "2026-11-10"),
    ]
    assert keys(lines_of(path)) == keys(expected)
    assert max(keys(lines_of(path)).values()) == 1
    assert kept_by_report(path) == len(LOOP_EVENTS) * 10
    assert projects == {str(SIM_PROJECT_ID)}
    assert leftovers(tmp_path) == ["export.jsonl"]


def test_only_the_events_named_are_asked_for(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    seeded = days_of_events(FIRST, LAST)
    mixpanel.seed_export(seeded)
    names = ["invite_sent", "invite_accepted"]
    path = tmp_path / "invites.jsonl"

    result = export_for().download(path, FIRST, LAST, events=names)

    written = lines_of(path)
    assert {r.request.param("event") for r in exports(sim)} == {json.dumps(names)}
    assert {item["event"] for item in written} == set(names)
    assert result.events == len(written) == 2 * 10
    assert kept_by_report(path) == 20


def test_a_gzipped_answer_is_decoded_as_it_streams(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    seeded = days_of_events(FIRST, LAST)
    mixpanel.seed_export(seeded)
    path = tmp_path / "export.jsonl"

    result = export_for(chunk_days=5).download(path, FIRST, LAST)

    assert [r.request.header("accept-encoding") for r in exports(sim)] == ["gzip"] * 2
    assert mixpanel.gzipped == result.chunks == 2
    assert keys(lines_of(path)) == keys(seeded)


def test_an_export_of_no_events_writes_an_empty_file(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    path = tmp_path / "empty.jsonl"

    result = export_for().download(path, FIRST, FIRST)

    assert result == ExportResult(events=0, chunks=1, requests=1)
    assert path.read_bytes() == b""
    assert kept_by_report(path) == 0


def test_lines_that_are_not_json_events_are_counted_and_left_out(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    seeded = days_of_events(FIRST, FIRST + timedelta(days=1))
    mixpanel.seed_export(seeded)
    mixpanel.export_raw["2026-11-02"] = [
        b'{"event": "invite_sent", "properties": {"time": 17',
        b"<html>busy</html>",
        b'["not", "an", "event"]',
    ]
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, FIRST + timedelta(days=1))

    assert result.skipped == 3
    assert result.events == len(seeded)
    assert keys(lines_of(path)) == keys(seeded)
    assert kept_by_report(path) == 2 * len(LOOP_EVENTS)


def test_a_duplicate_in_the_export_is_written_once(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    """Mixpanel does not dedupe raw exports; an event with the same name,
    distinct id, time and insert id is the same event. Without an insert id,
    Mixpanel never dedupes, and neither does the export."""
    twice = event("invite_sent", "user-1", FIRST)
    bare = event("invite_accepted", "user-2", FIRST)
    del bare["properties"]["$insert_id"]
    mixpanel.seed_export([twice, twice, bare, bare])
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, FIRST)

    assert result.duplicates == 1
    assert result.events == 3
    assert [item["event"] for item in lines_of(path)].count("invite_sent") == 1


def test_lines_are_split_at_newlines_only(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    """A property may hold U+2028 unescaped (valid JSON); a line splitter that
    follows `str.splitlines` would cut the event in two."""
    note = "line one\u2028line two\x85three"
    mixpanel.seed_export([event("invite_sent", "user-1", FIRST, note=note)])
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, FIRST)

    [written] = lines_of(path)
    assert result == ExportResult(events=1, chunks=1, requests=1)
    assert written["properties"]["note"] == note


# --- where it goes --------------------------------------------------------------


class ToSimulator(httpx.BaseTransport):
    """Send each request to the simulator instead of its host, over real HTTP,
    noting the host it was meant for."""

    def __init__(self, base_url: str) -> None:
        self.hosts: list[str] = []
        self._base_url = base_url
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        url = self._base_url + request.url.raw_path.decode("ascii")
        forwarded = httpx.Request(
            request.method, url, headers=request.headers, stream=request.stream
        )
        return self._inner.handle_request(forwarded)

    def close(self) -> None:
        self._inner.close()


def test_the_residency_picks_the_export_host(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    """An EU project exports from data-eu.mixpanel.com; here that host's
    requests are carried to the simulator."""
    mixpanel.seed_export(days_of_events(FIRST, FIRST))
    transport = ToSimulator(sim.url("mixpanel"))
    export = export_for(residency="eu", export_url=None, transport=transport)

    result = export.download(tmp_path / "export.jsonl", FIRST, FIRST)

    assert export.base_url == "https://data-eu.mixpanel.com"
    assert transport.hosts == ["data-eu.mixpanel.com"]
    assert result.events == len(LOOP_EVENTS) + 1
    assert EXPORT_URLS == {
        "us": "https://data.mixpanel.com",
        "eu": "https://data-eu.mixpanel.com",
        "in": "https://data-in.mixpanel.com",
    }


def test_the_export_is_built_from_the_settings_the_worker_uses(
    sim: Simulator, mixpanel: MixpanelSim, tmp_path: Path
) -> None:
    """The environment `referloop doctor` and the worker read, with
    MIXPANEL_EXPORT_URL pointing at the simulator."""
    mixpanel.seed_export(days_of_events(FIRST, FIRST))
    path = tmp_path / "export.jsonl"

    with vendors.mixpanel_export(Workspace(), vendor_env(sim)) as export:
        result = export.download(path, FIRST, FIRST)

    assert result.events == len(LOOP_EVENTS) + 1
    assert exports(sim)[0].request.param("project_id") == str(SIM_PROJECT_ID)


def test_the_settings_give_the_residency_and_name_what_is_missing(
    sim: Simulator,
) -> None:
    workspace = Workspace.model_validate(
        {"vendors": {"mixpanel": {"residency": "in", "project_id": 42}}}
    )
    env = {"MIXPANEL_SERVICE_ACCOUNT": SIM_USERNAME, "MIXPANEL_SERVICE_SECRET": "x"}

    with vendors.mixpanel_export(workspace, env) as export:
        assert export.base_url == "https://data-in.mixpanel.com"
        assert export.project_id == 42
    with pytest.raises(ConfigurationError, match="MIXPANEL_SERVICE_SECRET"):
        vendors.mixpanel_export(workspace, {"MIXPANEL_SERVICE_ACCOUNT": "sa"})
    with pytest.raises(ConfigurationError, match="MIXPANEL_PROJECT_ID"):
        vendors.mixpanel_export(Workspace(), env)


# --- limits and failures ----------------------------------------------------------


def test_chunks_keep_to_three_queries_a_second(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    """Seven one-day chunks against the simulator's 3 a second: none refused,
    and no four queries within a second."""
    mixpanel.seed_export(days_of_events(FIRST, FIRST + timedelta(days=6)))

    result = export_for(chunk_days=1).download(
        tmp_path / "export.jsonl", FIRST, FIRST + timedelta(days=6)
    )

    times = [item.request.at for item in exports(sim)]
    fourth_after = [later - at for at, later in zip(times, times[3:], strict=False)]
    assert result.requests == result.chunks == 7
    assert [item.status for item in exports(sim)] == [200] * 7
    assert min(fourth_after) >= 1.0


def test_a_429_on_one_chunk_is_waited_out_and_nothing_is_written_twice(
    sim: Simulator,
    mixpanel: MixpanelSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    seeded = days_of_events(FIRST, FIRST + timedelta(days=2))
    mixpanel.seed_export(seeded)
    sim.fault("mixpanel", Fault.rate_limited(1), times=1, after=1)
    path = tmp_path / "export.jsonl"

    result = export_for(chunk_days=1).download(path, FIRST, FIRST + timedelta(days=2))

    answered = exports(sim)
    refused_at, retried_at = answered[1].request.at, answered[2].request.at
    assert [item.status for item in answered] == [200, 429, 200, 200]
    assert answered[1].request.param("from_date") == "2026-11-02"
    assert answered[2].request.param("from_date") == "2026-11-02"
    assert retried_at - refused_at >= 0.95
    assert result == ExportResult(events=len(seeded), chunks=3, requests=4)
    assert keys(lines_of(path)) == keys(seeded)
    assert max(keys(lines_of(path)).values()) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.answer(503),
        Fault.answer(500),
        Fault.reset(),
        Fault.garbage(),
        Fault.hang(2),
    ],
    ids=["503", "500", "reset", "garbage", "no answer"],
)
def test_a_chunk_that_fails_for_a_while_is_asked_again(
    sim: Simulator,
    mixpanel: MixpanelSim,
    export_for: ExportFactory,
    tmp_path: Path,
    fault: Fault,
) -> None:
    seeded = days_of_events(FIRST, FIRST + timedelta(days=1))
    mixpanel.seed_export(seeded)
    sim.fault("mixpanel", fault, times=2, after=1)
    path = tmp_path / "export.jsonl"

    export = export_for(chunk_days=1, timeout=httpx.Timeout(0.5))
    result = export.download(path, FIRST, FIRST + timedelta(days=1))

    assert result == ExportResult(events=len(seeded), chunks=2, requests=4)
    assert [r.request.param("from_date") for r in exports(sim)] == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-02",
        "2026-11-02",
    ]
    assert keys(lines_of(path)) == keys(seeded)


def test_a_connection_broken_mid_answer_leaves_no_part_of_the_chunk(
    sim: Simulator,
    mixpanel: MixpanelSim,
    export_for: ExportFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The second chunk's answer stops after its first few kilobytes: the
    lines it had written are cut off, and the chunk is fetched again whole."""
    caplog.set_level(logging.INFO, logger="integrations.mixpanel_export")
    seeded = days_of_events(FIRST, FIRST)
    seeded += [
        event("invite_sent", f"user-{n}", FIRST + timedelta(days=1)) for n in range(800)
    ]
    mixpanel.seed_export(seeded)
    sim.fault("mixpanel", Fault.cut(after_bytes=3_000), times=1, after=1)
    path = tmp_path / "export.jsonl"

    result = export_for(chunk_days=1).download(path, FIRST, FIRST + timedelta(days=1))

    dropped = [
        int(found.group(1))
        for record in caplog.records
        if (found := re.search(r"(\d+) lines of it dropped", record.getMessage()))
    ]
    assert [item.status for item in exports(sim)] == [200, 200, 200]
    assert len(dropped) == 1
    assert 0 < dropped[0] < 800
    assert result == ExportResult(events=len(seeded), chunks=2, requests=3)
    assert keys(lines_of(path)) == keys(seeded)
    assert max(keys(lines_of(path)).values()) == 1


def test_a_chunk_that_keeps_failing_ends_the_export_and_leaves_the_file_alone(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    mixpanel.seed_export(days_of_events(FIRST, LAST))
    path = tmp_path / "export.jsonl"
    path.write_text("the last export\n")
    sim.fault("mixpanel", Fault.answer(503), after=1)

    with pytest.raises(
        TransientError, match="2026-11-04 to 2026-11-06: answered 503, 3 times"
    ):
        export_for(chunk_days=3, attempts=3).download(path, FIRST, LAST)

    assert len(exports(sim)) == 4
    assert path.read_text() == "the last export\n"
    assert leftovers(tmp_path) == ["export.jsonl"]


def test_a_429_asking_for_a_long_wait_ends_the_export_with_that_wait(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    sim.fault("mixpanel", Fault.rate_limited(900), times=1)

    with pytest.raises(TransientError, match="rate limited") as caught:
        export_for().download(tmp_path / "export.jsonl", FIRST, LAST)

    assert caught.value.retry_after_s == 900
    assert len(exports(sim)) == 1
    assert leftovers(tmp_path) == []


def test_a_refused_service_account_names_the_settings_and_not_the_secret(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError) as caught:
        export_for(secret="sk-wrong-secret").download(tmp_path / "e.jsonl", FIRST, LAST)

    message = str(caught.value)
    assert caught.value.status == 401
    assert "MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SERVICE_SECRET" in message
    assert "sk-wrong-secret" not in message
    assert SIM_USERNAME not in message
    assert [item.status for item in exports(sim)] == [401]
    assert leftovers(tmp_path) == []


def test_a_project_the_account_cannot_read_names_the_project_setting(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError) as caught:
        export_for(project_id=271828).download(tmp_path / "e.jsonl", FIRST, LAST)

    assert caught.value.status == 403
    assert "project 271828" in str(caught.value)
    assert "vendors.mixpanel.project_id" in str(caught.value)


def test_a_range_before_the_project_began_is_refused_with_what_to_change(
    sim: Simulator, mixpanel: MixpanelSim, export_for: ExportFactory, tmp_path: Path
) -> None:
    mixpanel.created = date(2026, 11, 5)

    with pytest.raises(PermanentError) as caught:
        export_for().download(tmp_path / "e.jsonl", FIRST, LAST)

    assert caught.value.status == 400
    assert "2026-11-01 to 2026-11-07" in str(caught.value)
    assert "before the project was created" in str(caught.value)
    assert [item.status for item in exports(sim)] == [400]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("first", "last", "says"),
    [
        (LAST, FIRST, "before it starts"),
        (FIRST, datetime.now(UTC).date() + timedelta(days=3), "in the future"),
    ],
    ids=["backwards", "future"],
)
def test_a_range_mixpanel_would_refuse_is_refused_before_any_query(
    sim: Simulator,
    export_for: ExportFactory,
    tmp_path: Path,
    first: date,
    last: date,
    says: str,
) -> None:
    with pytest.raises(UsageError, match=says):
        export_for().download(tmp_path / "e.jsonl", first, last)

    assert exports(sim) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("changed", "error"),
    [
        ({"to_date": "2026-10-31"}, "to_date cannot be before from_date"),
        ({"from_date": "2026/11/01"}, "from_date and to_date are required"),
        ({"where": 'properties["plan"] == "x"'}, "where expressions are not"),
        ({"event": "invite_sent"}, "event must be a JSON array"),
        ({"limit": "100001"}, "limit must be from 1 to 100000"),
        ({"to_date": "tomorrow"}, "to_date cannot be later than today"),
    ],
    ids=["backwards", "not a date", "where", "event", "limit", "future"],
)
def test_the_simulator_answers_400_as_mixpanel_does(
    sim: Simulator, mixpanel: MixpanelSim, changed: dict[str, str], error: str
) -> None:
    """Mixpanel's own refusals, for what the client never sends."""
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    params = {
        "project_id": str(SIM_PROJECT_ID),
        "from_date": FIRST.isoformat(),
        "to_date": LAST.isoformat(),
        **changed,
    }
    if params["to_date"] == "tomorrow":
        params["to_date"] = tomorrow.isoformat()

    answer = httpx.get(sim.url("mixpanel") + EXPORT, params=params, auth=AUTH)

    assert answer.status_code == 400
    assert answer.json()["error"].startswith(error)


def test_the_simulator_answers_from_a_file_up_to_the_limit(
    sim: Simulator, mixpanel: MixpanelSim, tmp_path: Path
) -> None:
    seeded = days_of_events(FIRST, FIRST)
    source = tmp_path / "seed.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in seeded))
    mixpanel.seed_export(source)
    params = {
        "project_id": str(SIM_PROJECT_ID),
        "from_date": FIRST.isoformat(),
        "to_date": FIRST.isoformat(),
        "limit": "2",
    }

    answer = httpx.get(sim.url("mixpanel") + EXPORT, params=params, auth=AUTH)

    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert lines == seeded[:2]


def test_exporting_without_a_project_id_sends_nothing(
    sim: Simulator, export_for: ExportFactory, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="MIXPANEL_PROJECT_ID"):
        export_for(project_id=None).download(tmp_path / "e.jsonl", FIRST, LAST)

    assert exports(sim) == []


def test_no_log_line_or_error_carries_the_secret_or_a_query_string(
    sim: Simulator,
    mixpanel: MixpanelSim,
    export_for: ExportFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    mixpanel.seed_export(days_of_events(FIRST, FIRST + timedelta(days=1)))
    sim.fault("mixpanel", Fault.rate_limited(0), times=1)
    said: list[str] = []

    export_for(chunk_days=1).download(
        tmp_path / "a.jsonl", FIRST, FIRST + timedelta(days=1)
    )
    with pytest.raises(PermanentError) as refused:
        export_for(secret="sk-do-not-log").download(tmp_path / "b.jsonl", FIRST, FIRST)
    said.append(str(refused.value))
    said += [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("integrations", "simulator"))
    ]

    text = "\n".join(said)
    assert "Exported" in text
    for private in ("sk-do-not-log", SIM_SECRET, "project_id=", "from_date=", "user-1"):
        assert private not in text


# --- chunks -----------------------------------------------------------------------


@given(
    first=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 1, 1)),
    span=st.integers(min_value=0, max_value=4_000),
    chunk_days=st.integers(min_value=1, max_value=31),
)
def test_chunks_cover_the_range_in_order_within_the_hourly_limit(
    first: date, span: int, chunk_days: int
) -> None:
    last = first + timedelta(days=span)
    size = max(chunk_days, math.ceil((span + 1) / MAX_CHUNKS))

    chunks = day_ranges(first, last, chunk_days)

    assert chunks[0].first == first
    assert chunks[-1].last == last
    assert all(
        a.last + timedelta(days=1) == b.first for a, b in itertools.pairwise(chunks)
    )
    assert len(chunks) <= MAX_CHUNKS
    assert all(chunk.days <= size for chunk in chunks)
    assert chunks[0].days == min(span + 1, size)

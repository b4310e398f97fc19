"""Amplitude's raw event export, downloaded to a file a day at a time.

Every download goes to the simulated Amplitude dashboard host over real HTTP on
loopback; the file it writes is read as `referloop report --events` reads it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations import vendors
from integrations.amplitude_export import AmplitudeExport, ExportResult
from orchestrator.errors import ConfigurationError, PermanentError, UsageError
from orchestrator.metrics import Funnel
from orchestrator.model import MetricsSettings, Workspace
from simulator import Fault, Received, Simulator
from simulator.amplitude_cohorts import SIM_API_KEY, SIM_SECRET_KEY, AmplitudeCohortsSim
from simulator.env import vendor_env
from simulator.population import as_amplitude

EXPORT = "/api/2/export"
VENDOR = "amplitude-dashboard"
FIRST = date(2026, 11, 1)
LOOP_EVENTS = (
    "referloop nudge sent",
    "invite_sent",
    "invite_accepted",
    "invitee_activated",
)
OTHER_EVENT = "Document Viewed"

ExportFactory = Callable[..., AmplitudeExport]


def event(name: str, user: str, day: date, hour: int = 12) -> dict[str, Any]:
    """One event as Amplitude's export writes it, at `hour` UTC on `day`."""
    moment = datetime(day.year, day.month, day.day, hour, 15, tzinfo=UTC)
    properties = {
        "time": int(moment.timestamp()),
        "distinct_id": user,
        "$insert_id": f"{name}-{user}-{day:%Y%m%d}-{hour}",
        "playbook": "pack-reviewers",
        "referrer_id": "user-0",
    }
    return as_amplitude({"event": name, "properties": properties})


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
    return [e for e in events if first.isoformat() <= e["event_time"][:10] <= str(last)]


def keys(path: Path) -> Counter[str]:
    """Each event of the file by its insert id, counted."""
    lines = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    return Counter(item["$insert_id"] for item in lines)


def ids(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(item["$insert_id"] for item in events)


def kept_by_report(path: Path) -> int:
    funnel = Funnel()
    try:
        return funnel.read_export(path, MetricsSettings())
    finally:
        funnel.close()


def exports(sim: Simulator) -> list[Received]:
    return sim.received(VENDOR, EXPORT)


def statuses(sim: Simulator) -> list[int | None]:
    return [item.status for item in exports(sim)]


def leftovers(folder: Path) -> list[str]:
    return sorted(item.name for item in folder.iterdir())


@pytest.fixture
def export_for(
    sim: Simulator, amplitude: AmplitudeCohortsSim
) -> Iterator[ExportFactory]:
    """Build exports against the simulator; settings given replace the defaults.

    Backoff is short here: the waits are the code's, not the test's subject.
    """
    built: list[AmplitudeExport] = []

    def build(**settings: Any) -> AmplitudeExport:
        options: dict[str, Any] = {
            "base_url": sim.url(VENDOR),
            "timeout": httpx.Timeout(3.0),
            "backoff_s": 0.05,
            **settings,
        }
        api_key = options.pop("api_key", SIM_API_KEY)
        secret_key = options.pop("secret_key", SIM_SECRET_KEY)
        export = AmplitudeExport(api_key, secret_key, **options)
        built.append(export)
        return export

    yield build
    for export in built:
        export.close()


# --- what is written ------------------------------------------------------------


def test_a_range_comes_a_day_at_a_time_once_each_and_the_report_reads_it(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    """Three days, with events on the days around them: three queries of 24
    hours, every event of the range once, and the report counts the loop's."""
    last = FIRST + timedelta(days=2)
    seeded = days_of_events(FIRST - timedelta(days=1), last + timedelta(days=1))
    amplitude.seed_export(seeded)
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, last)

    asked = [(r.request.param("start"), r.request.param("end")) for r in exports(sim)]
    expected = in_range(seeded, FIRST, last)
    assert result == ExportResult(events=len(expected), chunks=3, requests=3)
    assert asked == [
        ("20261101T00", "20261101T23"),
        ("20261102T00", "20261102T23"),
        ("20261103T00", "20261103T23"),
    ]
    assert keys(path) == ids(expected)
    assert kept_by_report(path) == len(LOOP_EVENTS) * 3
    assert leftovers(tmp_path) == ["export.jsonl"]


def test_a_day_without_events_is_an_empty_chunk(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    """Amplitude answers 404 for a range with no data: nothing to write."""
    middle = FIRST + timedelta(days=1)
    seeded = days_of_events(middle, middle)
    amplitude.seed_export(seeded)
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, FIRST + timedelta(days=2))

    assert statuses(sim) == [404, 200, 404]
    assert result == ExportResult(events=len(seeded), chunks=3, requests=3)
    assert keys(path) == ids(seeded)


def test_a_range_with_no_events_writes_an_empty_file(
    sim: Simulator, export_for: ExportFactory, tmp_path: Path
) -> None:
    path = tmp_path / "empty.jsonl"

    result = export_for(chunk_days=7).download(path, FIRST, FIRST + timedelta(days=6))

    assert result == ExportResult(events=0, chunks=1, requests=1)
    assert path.read_bytes() == b""
    assert kept_by_report(path) == 0


def test_a_day_too_large_to_export_is_asked_for_in_halves(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    """Over the limit (4 GB at Amplitude, 3 events here) a day is answered 400;
    its halves, and their halves, are asked for until each fits."""
    seeded = [event("invite_sent", f"user-{hour}", FIRST, hour) for hour in range(8)]
    amplitude.seed_export(seeded)
    amplitude.export_limit = 3
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, FIRST)

    asked = [
        (r.request.param("start")[-2:], r.request.param("end")[-2:], r.status)
        for r in exports(sim)
    ]
    assert asked == [
        ("00", "23", 400),
        ("00", "11", 400),
        ("00", "05", 400),
        ("00", "02", 200),
        ("03", "05", 200),
        ("06", "11", 200),
        ("12", "23", 404),
    ]
    assert result == ExportResult(events=8, chunks=4, requests=7)
    assert keys(path) == ids(seeded)


def test_an_hour_too_large_to_export_is_refused_with_what_it_means(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    amplitude.seed_export(
        [event("invite_sent", f"user-{n}", FIRST, 5) for n in range(4)]
    )
    amplitude.export_limit = 3

    with pytest.raises(PermanentError, match="over the 4 GB") as caught:
        export_for().download(tmp_path / "e.jsonl", FIRST, FIRST)

    assert caught.value.status == 400
    assert "05:00 to 2026-11-01 05:59" in str(caught.value)
    assert "Amazon S3 export" in str(caught.value)
    assert leftovers(tmp_path) == []


# --- failures -----------------------------------------------------------------


def test_a_429_and_a_503_are_waited_out_and_nothing_is_written_twice(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    last = FIRST + timedelta(days=2)
    seeded = days_of_events(FIRST, last)
    amplitude.seed_export(seeded)
    sim.fault(VENDOR, Fault.rate_limited(1), times=1, after=1)
    sim.fault(VENDOR, Fault.answer(503), times=1)
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, last)

    answered = exports(sim)
    assert statuses(sim) == [200, 429, 503, 200, 200]
    assert answered[2].request.at - answered[1].request.at >= 0.95
    assert {r.request.param("start") for r in answered[1:4]} == {"20261102T00"}
    assert result == ExportResult(events=len(seeded), chunks=3, requests=5)
    assert keys(path) == ids(seeded)


@pytest.mark.parametrize(
    "fault",
    [Fault.cut(after_bytes=3_000), Fault.reset(), Fault.broken_json(200)],
    ids=["cut", "reset", "not a zip"],
)
def test_a_broken_answer_is_asked_again_without_a_partial_line(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
    fault: Fault,
) -> None:
    """The second day's answer is cut off, reset or unreadable: the chunk is
    fetched again whole, and every line of the file is a whole event, once."""
    second = FIRST + timedelta(days=1)
    seeded = days_of_events(FIRST, FIRST)
    seeded += [event("invite_sent", f"user-{n}", second, n % 24) for n in range(800)]
    amplitude.seed_export(seeded)
    sim.fault(VENDOR, fault, times=1, after=1)
    path = tmp_path / "export.jsonl"

    result = export_for().download(path, FIRST, second)

    starts = [r.request.param("start") for r in exports(sim)]
    assert starts == ["20261101T00", "20261102T00", "20261102T00"]
    assert result == ExportResult(events=len(seeded), chunks=2, requests=3)
    assert keys(path) == ids(seeded)


def test_refused_keys_name_the_settings_and_the_residency_not_the_secret(
    sim: Simulator, export_for: ExportFactory, tmp_path: Path
) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("the last export\n")

    with pytest.raises(PermanentError) as caught:
        export_for(secret_key="amp-wrong-secret").download(path, FIRST, FIRST)

    message = str(caught.value)
    assert caught.value.status == 401
    assert "AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY" in message
    assert "`vendors.amplitude.residency` (us)" in message
    assert "amp-wrong-secret" not in message
    assert SIM_API_KEY not in message
    assert path.read_text() == "the last export\n"
    assert leftovers(tmp_path) == ["e.jsonl"]


def test_no_log_line_or_error_carries_a_key_a_query_or_an_event(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    amplitude.seed_export(days_of_events(FIRST, FIRST + timedelta(days=1)))
    sim.fault(VENDOR, Fault.rate_limited(0), times=1)

    export_for().download(tmp_path / "a.jsonl", FIRST, FIRST + timedelta(days=1))
    with pytest.raises(PermanentError) as refused:
        export_for(secret_key="amp-do-not-log").download(tmp_path / "b", FIRST, FIRST)

    said = [str(refused.value)] + [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("integrations", "simulator"))
    ]
    text = "\n".join(said)
    assert "Exported" in text
    for private in ("amp-do-not-log", SIM_SECRET_KEY, "start=", "user-1"):
        assert private not in text


# --- where it goes ------------------------------------------------------------


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


def test_an_eu_project_exports_from_the_eu_host(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    amplitude.seed_export(days_of_events(FIRST, FIRST))
    transport = ToSimulator(sim.url(VENDOR))
    export = export_for(residency="eu", base_url=None, transport=transport)

    result = export.download(tmp_path / "export.jsonl", FIRST, FIRST)

    assert export.base_url == "https://analytics.eu.amplitude.com"
    assert transport.hosts == ["analytics.eu.amplitude.com"]
    assert result.events == len(LOOP_EVENTS) + 1


def test_the_export_is_built_from_the_settings_the_worker_uses(
    sim: Simulator, amplitude: AmplitudeCohortsSim, tmp_path: Path
) -> None:
    """AMPLITUDE_DASHBOARD_URL points at the simulator; a missing key is named;
    the residency comes from the workspace."""
    amplitude.seed_export(days_of_events(FIRST, FIRST))
    eu = Workspace.model_validate({"vendors": {"amplitude": {"residency": "eu"}}})
    only_key = {"AMPLITUDE_API_KEY": SIM_API_KEY}

    with vendors.amplitude_export(Workspace(), vendor_env(sim)) as export:
        result = export.download(tmp_path / "export.jsonl", FIRST, FIRST)
    with vendors.amplitude_export(
        eu, {**only_key, "AMPLITUDE_SECRET_KEY": "x"}
    ) as eu_export:
        eu_url = eu_export.base_url
    with pytest.raises(ConfigurationError, match=r"set AMPLITUDE_SECRET_KEY$"):
        vendors.amplitude_export(Workspace(), only_key)

    assert result.events == len(LOOP_EVENTS) + 1
    assert eu_url == "https://analytics.eu.amplitude.com"


# --- ranges -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "says"),
    [
        (FIRST + timedelta(days=1), FIRST, "before it starts"),
        (FIRST, datetime.now(UTC).date(), "has not finished loading"),
    ],
    ids=["backwards", "today"],
)
def test_a_range_amplitude_cannot_answer_whole_is_refused_before_any_query(
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


def test_a_day_can_be_exported_two_hours_after_it_ends(
    sim: Simulator, export_for: ExportFactory, tmp_path: Path
) -> None:
    """Events land in the export about two hours after they are sent."""
    early = export_for(clock=lambda: datetime(2026, 11, 2, 1, 59, tzinfo=UTC))
    ready = export_for(clock=lambda: datetime(2026, 11, 2, 2, 0, tzinfo=UTC))

    with pytest.raises(UsageError, match="complete from 2026-11-02 02:00 UTC"):
        early.download(tmp_path / "e.jsonl", FIRST, FIRST)
    ready.download(tmp_path / "e.jsonl", FIRST, FIRST)

    assert len(exports(sim)) == 1


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        ("20261102T00", "20261101T23", "end must not be before start"),
        ("20251101T00", "20261101T00", "the range must be at most 365 days"),
        ("2026-11-01", "20261101T23", "start and end must be hours"),
    ],
    ids=["backwards", "over a year", "not an hour"],
)
def test_the_simulator_answers_400_as_amplitude_does(
    sim: Simulator, amplitude: AmplitudeCohortsSim, start: str, end: str, error: str
) -> None:
    """Amplitude's own refusals, for what the client never sends."""
    answer = httpx.get(
        sim.url(VENDOR) + EXPORT,
        params={"start": start, "end": end},
        auth=(SIM_API_KEY, SIM_SECRET_KEY),
    )

    assert answer.status_code == 400
    assert answer.json()["error"] == error or answer.json()["error"].startswith(error)


def test_the_simulator_takes_events_from_a_file(
    sim: Simulator,
    amplitude: AmplitudeCohortsSim,
    export_for: ExportFactory,
    tmp_path: Path,
) -> None:
    seeded = days_of_events(FIRST, FIRST)
    source = tmp_path / "seed.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in seeded))
    amplitude.seed_export(source)

    result = export_for().download(tmp_path / "export.jsonl", FIRST, FIRST)

    assert result.events == len(seeded)

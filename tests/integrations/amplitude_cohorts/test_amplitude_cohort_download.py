"""Amplitude cohorts downloaded whole for reconciliation, within their budgets.

Every test reads from the simulated Amplitude over real HTTP on loopback; the
budgets, the monthly count and each cohort's last download live in the test
Redis.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from integrations.amplitude_cohorts import AmplitudeCohorts
from integrations.base import CohortSource, Member, Rejected
from orchestrator.errors import (
    ConfigurationError,
    NotDue,
    PermanentError,
    TransientError,
)
from simulator import Fault, Simulator
from simulator.amplitude_cohorts import (
    SIM_API_KEY,
    SIM_SECRET_KEY,
    AmplitudeCohortsSim,
    SimCohort,
)
from tests.integrations.conftest import SAMPLE_EMAIL

COHORT = "amplitude:abc123"
VENDOR = "amplitude-dashboard"
REQUEST = "/api/5/cohorts/request/abc123"
COMPUTED_MS = 1_777_000_000_000

SourceFactory = Callable[..., AmplitudeCohorts]


def seed(
    amplitude: AmplitudeCohortsSim, count: int, computed_ms: int = COMPUTED_MS
) -> None:
    rows = [
        {
            "user_id": f"user-{number}",
            "amplitude_id": str(9000 + number),
            "email": f"user-{number}@example.com",
            "account_id": f"acct-{number % 3}",
        }
        for number in range(count)
    ]
    amplitude.seed(SimCohort("abc123", "Uploaded, invited nobody", computed_ms, rows))


def members(pages: list[list[Member | Rejected]]) -> list[Member | Rejected]:
    return [item for page in pages for item in page]


def paths(sim: Simulator) -> list[str]:
    return [item.request.path for item in sim.received(VENDOR)]


def test_a_cohort_is_downloaded_and_its_members_read(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """List, request, poll, file, then the link: five calls, one download."""
    seed(amplitude, 3)
    source = source_for()

    read = members(list(source.cohort_pages(COHORT)))

    assert read[0] == Member(
        user_id="user-0",
        account_id="acct-0",
        user={"email": "user-0@example.com", "account_id": "acct-0"},
    )
    assert [item.user_id for item in read if isinstance(item, Member)] == [
        "user-0",
        "user-1",
        "user-2",
    ]
    assert paths(sim)[:4] == [
        "/api/3/cohorts",
        REQUEST,
        "/api/5/cohorts/request-status/sim-request-1",
        "/api/5/cohorts/request/sim-request-1/file",
    ]
    assert paths(sim)[4].startswith("/files/")
    assert amplitude.downloads == 1
    assert source.downloads_this_month() == 1
    assert isinstance(source, CohortSource)


def test_the_same_last_computed_downloads_nothing_a_second_time(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 2)
    source = source_for(min_interval=timedelta(0))
    list(source.cohort_pages(COHORT))

    with pytest.raises(NotDue, match="unchanged") as caught:
        list(source.cohort_pages(COHORT))

    assert caught.value.reason.startswith("unchanged")
    assert amplitude.downloads == 1
    assert paths(sim).count(REQUEST) == 1


def test_a_newer_last_computed_is_downloaded_again(
    amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 2)
    source = source_for(min_interval=timedelta(0))
    list(source.cohort_pages(COHORT))
    seed(amplitude, 1, computed_ms=COMPUTED_MS + 60_000)

    read = members(list(source.cohort_pages(COHORT)))

    assert [item.user_id for item in read if isinstance(item, Member)] == ["user-0"]
    assert amplitude.downloads == 2


def test_the_minimum_interval_holds_back_a_newer_computation(
    amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """Recomputed a minute later, but the last download was asked for within the
    interval: nothing is requested, and the wait is the rest of the interval."""
    seed(amplitude, 2)
    now = [datetime(2026, 5, 10, 12, 0, tzinfo=UTC)]
    source = source_for(min_interval=timedelta(hours=6), clock=lambda: now[0])
    list(source.cohort_pages(COHORT))
    seed(amplitude, 2, computed_ms=COMPUTED_MS + 60_000)
    now[0] += timedelta(hours=1)

    with pytest.raises(NotDue, match="too recently") as caught:
        list(source.cohort_pages(COHORT))
    now[0] += timedelta(hours=5)
    list(source.cohort_pages(COHORT))

    assert caught.value.retry_after_s == 5 * 3600
    assert amplitude.downloads == 2


def test_the_monthly_budget_stops_downloads_with_a_clear_error(
    amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """Two downloads allowed a month: the third waits until 1 June, UTC."""
    seed(amplitude, 1)
    now = [datetime(2026, 5, 31, 22, 0, tzinfo=UTC)]
    source = source_for(
        min_interval=timedelta(0), monthly_downloads=2, clock=lambda: now[0]
    )
    for step in range(3):
        seed(amplitude, 1, computed_ms=COMPUTED_MS + step)
        if step < 2:
            list(source.cohort_pages(COHORT))

    with pytest.raises(TransientError, match="monthly budget of 2") as caught:
        list(source.cohort_pages(COHORT))
    now[0] = datetime(2026, 6, 1, 0, 1, tzinfo=UTC)
    list(source.cohort_pages(COHORT))

    assert "2026-05" in str(caught.value)
    assert caught.value.retry_after_s == 2 * 3600
    assert amplitude.downloads == 3


def test_the_monthly_count_is_shared_by_every_worker(
    amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)
    first, second = (
        source_for(monthly_downloads=1, min_interval=timedelta(0)) for _ in range(2)
    )
    list(first.cohort_pages(COHORT))
    seed(amplitude, 1, computed_ms=COMPUTED_MS + 1)

    with pytest.raises(TransientError, match="monthly budget"):
        list(second.cohort_pages(COHORT))

    assert second.downloads_this_month() == 1


def test_a_slow_job_is_polled_with_growing_gaps_then_read(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 2)
    amplitude.polls_before_done = 3
    source = source_for(first_poll_s=0.05, poll_wait_s=5.0)

    read = members(list(source.cohort_pages(COHORT)))

    polls = [
        item.request.at
        for item in sim.received(VENDOR)
        if "request-status" in item.request.path
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert len(read) == 2
    assert len(polls) == 4
    assert gaps[2] > gaps[0]


def test_a_job_not_done_within_the_wait_is_resumed_without_a_second_download(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 2)
    amplitude.polls_before_done = 1_000
    source = source_for(first_poll_s=0.05, poll_wait_s=0.2)

    with pytest.raises(TransientError, match="still running") as caught:
        list(source.cohort_pages(COHORT))
    amplitude.polls_before_done = 0
    read = members(list(source.cohort_pages(COHORT)))

    assert caught.value.retry_after_s == 60
    assert len(read) == 2
    assert amplitude.downloads == 1
    assert paths(sim).count(REQUEST) == 1


def test_the_redirect_is_followed_without_credentials(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)

    list(source_for().cohort_pages(COHORT))

    [link] = [r for r in sim.received(VENDOR) if r.path.startswith("/files/")]
    others = [r for r in sim.received(VENDOR) if not r.path.startswith("/files/")]
    assert link.status == 200
    assert link.request.header("authorization") is None
    assert all(r.request.header("authorization") for r in others)


def test_a_file_answered_directly_is_read_too(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 2)
    amplitude.redirect = False

    read = members(list(source_for().cohort_pages(COHORT)))

    assert len(read) == 2
    assert not any(path.startswith("/files/") for path in paths(sim))


def test_an_odd_file_is_read_right(
    amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """Quoted commas and line breaks, a property name with a comma and spaces,
    empty properties left out, a blank line skipped, a row without a user id
    rejected without its content, and a byte-order mark."""
    seed(amplitude, 0)
    amplitude.raw_csv["abc123"] = (
        '\ufeffuser_id,amplitude_id," plan, tier ",company,notes\r\n'
        'u-1,11,"enterprise, annual","Acme, Inc.","line one\nline two"\r\n'
        'u-2,12,,"",\r\n'
        "\r\n"
        f',13,pro,Solo,"{SAMPLE_EMAIL}"\r\n'
    ).encode()

    read = members(list(source_for(account_property=None).cohort_pages(COHORT)))

    assert read == [
        Member(
            user_id="u-1",
            user={
                "plan, tier": "enterprise, annual",
                "company": "Acme, Inc.",
                "notes": "line one\nline two",
            },
        ),
        Member(user_id="u-2"),
        Rejected(f"{COHORT} row 4", "no `user_id`"),
    ]
    assert SAMPLE_EMAIL not in repr(read[2])


def test_the_properties_asked_for_go_as_prop_keys(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)

    [[member]] = list(source_for(properties=["email"]).cohort_pages(COHORT))

    [request] = sim.received(VENDOR, REQUEST)
    assert request.request.query == {
        "props": ["1"],
        "propKeys": ["email", "account_id"],
    }
    assert isinstance(member, Member)
    assert member.account_id == "acct-0"


# --- refusals and failures ---------------------------------------------------------


def test_a_429_is_transient_with_its_wait_and_gives_up_the_claim(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """The list goes through, the request is rate limited: the monthly count
    stays spent (Amplitude may have counted it), and nothing is pending."""
    seed(amplitude, 1)
    source = source_for(min_interval=timedelta(0))
    sim.fault(VENDOR, Fault.rate_limited(30), times=1, after=1)

    with pytest.raises(TransientError, match="429") as caught:
        list(source.cohort_pages(COHORT))

    assert caught.value.retry_after_s == 30
    assert source.downloads_this_month() == 1


def test_a_5xx_is_transient_after_quick_retries(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)
    sim.fault(VENDOR, Fault.answer(503))

    with pytest.raises(TransientError, match="503"):
        list(source_for().cohort_pages(COHORT))

    assert sim.count(VENDOR, 503) == 3


def test_a_5xx_from_the_link_is_transient_and_the_download_resumes(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)
    source = source_for()
    sim.fault(VENDOR, Fault.answer(502), times=1, after=4)

    with pytest.raises(TransientError, match="502"):
        list(source.cohort_pages(COHORT))
    read = members(list(source.cohort_pages(COHORT)))

    assert len(read) == 1
    assert amplitude.downloads == 1


def test_refused_credentials_are_permanent_and_name_no_secret(
    source_for: SourceFactory, amplitude: AmplitudeCohortsSim
) -> None:
    seed(amplitude, 1)

    with pytest.raises(PermanentError, match="credentials refused") as caught:
        list(source_for(secret_key="not-the-secret").cohort_pages(COHORT))

    assert caught.value.status == 401
    assert "not-the-secret" not in str(caught.value)


def test_a_403_is_permanent(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)
    sim.fault(VENDOR, Fault.answer(403), times=1)

    with pytest.raises(PermanentError, match="403") as caught:
        list(source_for().cohort_pages(COHORT))

    assert caught.value.status == 403


def test_an_unknown_cohort_is_permanent_and_spends_no_download(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    source = source_for()

    with pytest.raises(PermanentError, match="not among the project's cohorts"):
        list(source.cohort_pages("amplitude:zzz999"))

    assert source.downloads_this_month() == 0
    assert paths(sim) == ["/api/3/cohorts"]


def test_a_cohort_deleted_after_listing_answers_404_clearly(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    seed(amplitude, 1)
    sim.fault(VENDOR, Fault.answer(404), times=1, after=1)

    with pytest.raises(PermanentError, match="no such cohort") as caught:
        list(source_for().cohort_pages(COHORT))

    assert caught.value.status == 404


def test_a_cohort_over_two_million_users_is_refused_before_any_request(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    amplitude.seed(SimCohort("abc123", "Everyone", COMPUTED_MS, size=2_000_001))

    with pytest.raises(PermanentError, match="cohort-sync webhook"):
        list(source_for().cohort_pages(COHORT))

    assert paths(sim) == ["/api/3/cohorts"]


@pytest.mark.parametrize("cohort", ["mixpanel:abc123", "amplitude:a/b", "amplitude:"])
def test_a_cohort_that_is_not_an_amplitude_id_is_refused(
    sim: Simulator, source_for: SourceFactory, cohort: str
) -> None:
    with pytest.raises(ConfigurationError, match="amplitude:<cohort id>"):
        list(source_for().cohort_pages(cohort))

    assert sim.received(VENDOR) == []


def test_the_residency_picks_the_host() -> None:
    from integrations.amplitude_cohorts import URLS

    assert URLS == {
        "us": "https://amplitude.com",
        "eu": "https://analytics.eu.amplitude.com",
    }


# --- budgets -------------------------------------------------------------------------


def test_no_slot_within_the_wait_is_transient_and_sends_nothing(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    from orchestrator.budgets import Slots

    seed(amplitude, 1)
    source = source_for(slot_wait_s=0.1)
    slots = Slots(source._store, "amplitude:dashboard", 5, lease=timedelta(minutes=1))
    holders = [slots.try_take() for _ in range(5)]

    with pytest.raises(TransientError, match="at once"):
        list(source.cohort_pages(COHORT))

    assert all(holders)
    assert sim.received(VENDOR) == []


def test_the_ten_minute_budget_refuses_calls_beyond_it(
    sim: Simulator, amplitude: AmplitudeCohortsSim, source_for: SourceFactory
) -> None:
    """With a budget of 3 calls per 10 minutes, a second download's first call
    is refused before it is sent, with the wait until there is room."""
    from orchestrator.units import Cap

    seed(amplitude, 1)
    source = source_for(
        budgets={"amplitude:cohorts": Cap(3, timedelta(minutes=10))}, burst=3
    )
    source.list_cohorts()
    source.list_cohorts()
    source.list_cohorts()

    with pytest.raises(TransientError, match="budget") as caught:
        source.list_cohorts()

    assert 100 < (caught.value.retry_after_s or 0) <= 600
    assert len(sim.received(VENDOR)) == 3


# --- logs --------------------------------------------------------------------------


def test_no_secret_or_member_data_reaches_the_logs(
    amplitude: AmplitudeCohortsSim,
    source_for: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed(amplitude, 0)
    amplitude.raw_csv["abc123"] = (
        f"user_id,amplitude_id,email\r\nu-1,1,{SAMPLE_EMAIL}\r\n,2,x\r\n"
    ).encode()
    caplog.set_level(logging.DEBUG)

    list(source_for().cohort_pages(COHORT))
    with pytest.raises(PermanentError):
        list(source_for(secret_key="wrong-" + SIM_SECRET_KEY).cohort_pages(COHORT))

    # httpx and httpcore are kept quiet by the worker's logging setup; what
    # referloop writes itself is judged here.
    ours = ("integrations", "orchestrator")
    text = "\n".join(
        record.getMessage() for record in caplog.records if record.name.startswith(ours)
    )
    assert "Read 1 members of cohort amplitude:abc123" in text
    for secret in (SIM_API_KEY, SIM_SECRET_KEY, SAMPLE_EMAIL, "signature"):
        assert secret not in text

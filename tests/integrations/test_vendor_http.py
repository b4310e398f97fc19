"""The shared HTTP layer: every kind of answer a vendor gives, mapped once.

An echo vendor on the simulator answers 200 unless a fault is switched on, so each
test shows one mapping over real HTTP on loopback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from integrations.http import (
    Call,
    VendorHttp,
    json_or_none,
    parse_retry_after,
    reset_epoch_after,
)
from orchestrator.budgets import Budget
from orchestrator.errors import AmbiguousError, PermanentError, TransientError
from orchestrator.logs import QUIET_LIBRARIES, configure
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Limit, SimRequest, SimResponse, Simulator, VendorSim

SECRET = "sk_live_do_not_log_me"


class Echo(VendorSim):
    name = "echo"

    def routes(self):  # type: ignore[no-untyped-def]
        return {("POST", "/things"): self._thing, ("GET", "/things"): self._thing}

    def authorized(self, request: SimRequest) -> bool:
        return request.header("authorization") == f"Bearer {SECRET}"

    def limits(self) -> list[Limit]:
        return [Limit("all", count=1_000_000, window_s=1)]

    def bucket(self, request: SimRequest) -> str | None:
        return "all"

    def _thing(self, request: SimRequest) -> SimResponse:
        return SimResponse(201, {"id": "thing-1"})


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([Echo()]) as running:
        yield running


@pytest.fixture
def http(sim: Simulator) -> Iterator[VendorHttp]:
    sim.reset()
    client = VendorHttp(
        "echo",
        sim.url("echo"),
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=httpx.Timeout(0.5, connect=0.5),
    )
    yield client
    client.close()


def test_a_2xx_is_returned(http: VendorHttp, sim: Simulator) -> None:
    response = http.request("POST", "/things", json={"a": 1})

    assert response.json() == {"id": "thing-1"}
    assert sim.received("echo")[0].json == {"a": 1}


def test_a_429_is_transient_with_the_wait_asked_for(
    http: VendorHttp, sim: Simulator
) -> None:
    sim.fault("echo", Fault.rate_limited(7), times=1)

    with pytest.raises(TransientError) as caught:
        http.request("POST", "/things", json={})

    assert caught.value.retry_after_s == 7
    assert len(sim.received("echo")) == 1  # a 429 is never retried on the spot


def test_a_429_holds_the_shared_budget_off(
    http: VendorHttp, sim: Simulator, store: Store
) -> None:
    budget = Budget(store, "echo", Cap(1000, timedelta(seconds=1)))
    sim.fault("echo", Fault.rate_limited(3), times=1)

    with pytest.raises(TransientError):
        http.request("POST", "/things", json={}, budget=budget)

    assert budget.reserve(0).wait_ms > 2_500


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_a_5xx_to_a_send_is_transient_and_not_repeated(
    http: VendorHttp, sim: Simulator, status: int
) -> None:
    sim.fault("echo", Fault.answer(status), times=1)

    with pytest.raises(TransientError, match=str(status)):
        http.request("POST", "/things", json={})

    assert len(sim.received("echo")) == 1


def test_a_5xx_to_a_safe_call_is_retried_at_once(
    http: VendorHttp, sim: Simulator
) -> None:
    sim.fault("echo", Fault.answer(503), times=2)

    response = http.request("GET", "/things", call=Call(safe_to_repeat=True))

    assert response.status_code == 201
    assert len(sim.received("echo")) == 3


def test_a_vendor_that_keeps_failing_is_paused_for_every_worker(
    http: VendorHttp, sim: Simulator, store: Store
) -> None:
    """Five 503s in a row trip the breaker: the sixth request does not reach the
    vendor; it is told to wait, which uses up no retry."""
    budget = Budget(store, "echo-down", Cap(1000, timedelta(seconds=1)))
    sim.fault("echo", Fault.answer(503))
    for _ in range(5):
        with pytest.raises(TransientError) as failed:
            http.request("POST", "/things", json={}, budget=budget)
        assert failed.value.retry_after_s is None

    with pytest.raises(TransientError, match="budget") as paused:
        http.request("POST", "/things", json={}, budget=budget)

    assert len(sim.received("echo")) == 5
    assert 9 <= (paused.value.retry_after_s or 0) <= 10


def test_a_reset_header_on_a_5xx_asks_for_no_wait(sim: Simulator) -> None:
    """Vendors send their reset time on every answer; it is a wait only on a 429,
    so a 503 with an hour to the reset stays a failure to retry, not a wait."""
    client = VendorHttp(
        "echo",
        sim.url("echo"),
        headers={"Authorization": f"Bearer {SECRET}"},
        reset_after=reset_epoch_after("X-RateLimit-Reset"),
    )
    in_an_hour = {"X-RateLimit-Reset": str(int(time.time()) + 3600)}
    sim.reset()
    sim.fault("echo", Fault.answer(503, headers=in_an_hour), times=1)
    sim.fault("echo", Fault.answer(429, headers=in_an_hour), times=1)

    with pytest.raises(TransientError) as failed:
        client.request("POST", "/things", json={})
    with pytest.raises(TransientError) as limited:
        client.request("POST", "/things", json={})

    assert failed.value.retry_after_s is None
    assert 3590 <= (limited.value.retry_after_s or 0) <= 3600


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_are_permanent_with_their_status(
    http: VendorHttp, sim: Simulator, status: int
) -> None:
    sim.fault("echo", Fault.answer(status), times=1)

    with pytest.raises(PermanentError) as caught:
        http.request("POST", "/things", json={})

    assert caught.value.status == status


def test_refused_credentials_are_permanent_and_say_what_to_check(
    sim: Simulator,
) -> None:
    client = VendorHttp("echo", sim.url("echo"), headers={"Authorization": "Bearer x"})

    with pytest.raises(PermanentError, match="credentials refused") as caught:
        client.request("POST", "/things", json={})

    assert caught.value.status == 401


def test_a_hang_after_sending_is_ambiguous(http: VendorHttp, sim: Simulator) -> None:
    sim.fault("echo", Fault.hang(2), times=1)

    with pytest.raises(AmbiguousError, match="no answer"):
        http.request("POST", "/things", json={})

    assert len(sim.received("echo")) == 1


def test_a_hang_on_a_safe_call_is_retried(http: VendorHttp, sim: Simulator) -> None:
    sim.fault("echo", Fault.hang(2), times=1)

    response = http.request("GET", "/things", call=Call(safe_to_repeat=True))

    assert response.status_code == 201


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.garbage()])
def test_a_dropped_or_garbled_answer_to_a_send_is_ambiguous(
    http: VendorHttp, sim: Simulator, fault: Fault
) -> None:
    sim.fault("echo", fault, times=1)

    with pytest.raises(AmbiguousError):
        http.request("POST", "/things", json={})


def test_nobody_listening_is_transient_after_quick_retries() -> None:
    with Simulator([Echo()]) as gone:
        url = gone.url("echo")
    client = VendorHttp("echo", url, timeout=httpx.Timeout(0.5))

    started = time.monotonic()
    with pytest.raises(TransientError, match="could not reach"):
        client.request("POST", "/things", json={})

    assert time.monotonic() - started < 5


def test_a_broken_body_on_a_2xx_still_counts_as_taken(
    http: VendorHttp, sim: Simulator
) -> None:
    sim.fault("echo", Fault.broken_json(), times=1)

    response = http.request("POST", "/things", json={})

    assert response.status_code == 200
    assert json_or_none(response) is None


def test_a_used_up_budget_is_transient_with_the_wait(
    http: VendorHttp, store: Store
) -> None:
    budget = Budget(store, "echo-slow", Cap(1, timedelta(hours=1)))
    http.request("POST", "/things", json={}, budget=budget)

    with pytest.raises(TransientError, match="budget") as caught:
        http.request("POST", "/things", json={}, budget=budget)

    assert 3_500 < (caught.value.retry_after_s or 0) <= 3_600


def test_a_budget_wait_within_reach_is_slept(http: VendorHttp, store: Store) -> None:
    budget = Budget(store, "echo-paced", Cap(10, timedelta(seconds=1)))

    started = time.monotonic()
    for _ in range(4):
        http.request("POST", "/things", json={}, budget=budget)

    assert time.monotonic() - started >= 0.29


def test_no_error_or_log_line_carries_the_body_or_the_key(
    http: VendorHttp, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_body = {"email": "dana.reviewer@example.com"}
    messages = []
    for fault in (Fault.answer(400), Fault.rate_limited(1), Fault.hang(2)):
        sim.fault("echo", fault, times=1)
        with pytest.raises((PermanentError, TransientError, AmbiguousError)) as caught:
            http.request("POST", "/things?token=abc", json=secret_body)
        messages.append(str(caught.value))

    ours = [r.getMessage() for r in caplog.records if r.name.startswith("integrations")]
    said = "\n".join(messages + ours)
    for private in ("dana.reviewer", SECRET, "token=abc"):
        assert private not in said


def test_the_http_libraries_stay_quiet_in_a_configured_process() -> None:
    """httpx logs whole URLs at INFO; a referloop process never lets it."""
    before = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure(logging.DEBUG)
        levels = [logging.getLogger(name).level for name in QUIET_LIBRARIES]
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
        root.handlers[:] = handlers
        root.setLevel(level)

    assert levels == [logging.WARNING] * len(QUIET_LIBRARIES)


def test_retry_after_reads_seconds_and_dates() -> None:
    later = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()

    assert parse_retry_after("12") == 12
    assert parse_retry_after(format_datetime(later, usegmt=True), now=now) == 30
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None

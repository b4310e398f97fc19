"""What every sending adapter must do, shown over real HTTP against the simulator.

Each adapter offers its kinds of send through `conformance_cases` (see
`integrations.base.ConformanceCase`); this suite runs every case of every built-in
adapter, and of every adapter installed through the `referloop.adapters` entry
points, through the same promises:

- a send the vendor takes returns `Sent`;
- a 429 is a `TransientError` carrying the wait the vendor asked for;
- a 5xx is a `TransientError`; any other 4xx a `PermanentError` with its status;
- a send that went out and got no answer (a hang, a reset, garbage) is an
  `AmbiguousError`, unless the vendor dedupes it, when it is retried or transient;
- a 2xx with a broken body still counts as sent;
- a vendor nobody answers for is a `TransientError`;
- the shared budget paces sends;
- no credential, email or message body reaches a log line, an error or a preview.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import integrations.http
from integrations import registry
from integrations.base import ConformanceCase, Sent
from orchestrator.errors import (
    AmbiguousError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Simulator, all_vendors
from simulator.generic import GenericSim

BUDGET = Cap(1_000, timedelta(seconds=1))
PACED = Cap(5, timedelta(seconds=1))
SHORT = httpx.Timeout(0.5, connect=0.5)
HANG_S = 1.5


# A package laid out as pip installs it, declaring an adapter through the entry
# point group: the suite must find it and hold it to the same promises.
INSTALLED = Path(__file__).parent / "installed"


def _adapters() -> dict[str, type[Any]]:
    """Every adapter class that sends, by channel name: built in or installed.

    The example package is on the import path only while adapters are found,
    so that the other test modules see the channels of this project alone.
    """
    found: dict[str, type[Any]] = {}
    sys.path.insert(0, str(INSTALLED))
    try:
        for name in registry.channel_names():
            adapter = registry.sender_class(name)
            if adapter is not None:
                found[name] = adapter
    finally:
        sys.path.remove(str(INSTALLED))
    return found


ADAPTERS = _adapters()


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([*all_vendors(), GenericSim()]) as running:
        yield running


@pytest.fixture(params=sorted(ADAPTERS))
def cases(
    request: pytest.FixtureRequest,
    sim: Simulator,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, list[ConformanceCase]]]:
    """The adapter's cases, built against its simulated vendor with short timeouts,
    each warmed up by one good send (so lookups an adapter caches are done)."""
    name = request.param
    vendor = name if name in sim.vendors else GenericSim.name
    monkeypatch.setattr(integrations.http, "DEFAULT_TIMEOUT", SHORT)
    sim.reset()
    built = _cases_of(ADAPTERS[name], sim.url(vendor), store, BUDGET)
    for case in built:
        case.sender.send(case.nudge)
    sim.reset()
    yield vendor, built
    for case in built:
        _close(case)


def _cases_of(
    adapter: type[Any], base_url: str, store: Store, budget: Cap
) -> list[ConformanceCase]:
    made = adapter.conformance_cases(base_url, store, budget)
    assert made, f"{adapter.__name__} offers no conformance cases"
    return list(made)


def _close(case: ConformanceCase) -> None:
    close = getattr(case.sender, "close", None)
    if close is not None:
        close()


def _attempt(case: ConformanceCase) -> Sent | VendorError:
    try:
        return case.sender.send(case.nudge)
    except VendorError as exc:
        return exc


def test_every_sending_channel_is_in_this_suite() -> None:
    """Every channel but the local outbox sends to a vendor and offers cases, and
    an adapter installed from another package is found through its entry point."""
    assert set(ADAPTERS) >= {"customerio", "braze", "intercom", "webhook", "pager"}
    assert ADAPTERS["pager"].__module__ == "referloop_pager"


def test_a_send_the_vendor_takes_returns_sent(cases, sim, subtests) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            before = len(sim.received(vendor))
            result = case.sender.send(case.nudge)
            assert isinstance(result, Sent)
            assert len(sim.received(vendor)) > before


def test_a_429_is_a_wait_of_the_length_the_vendor_asked(cases, sim, subtests) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            sim.fault(vendor, Fault.rate_limited(7), times=1)
            result = _attempt(case)
            sim.clear_faults()
            assert isinstance(result, TransientError), result
            assert result.retry_after_s is not None
            assert 6 <= result.retry_after_s <= 7


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_is_transient(cases, sim, subtests, status: int) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            sim.fault(vendor, Fault.answer(status))
            result = _attempt(case)
            sim.clear_faults()
            assert isinstance(result, TransientError), result


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_another_4xx_is_permanent_with_its_status(
    cases, sim, subtests, status: int
) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            sim.fault(vendor, Fault.answer(status))
            result = _attempt(case)
            sim.clear_faults()
            assert isinstance(result, PermanentError), result
            assert result.status == status


@pytest.mark.parametrize(
    "fault",
    [Fault.hang(HANG_S), Fault.reset(), Fault.garbage()],
    ids=["hang", "reset", "garbage"],
)
def test_a_send_left_unanswered_is_ambiguous_unless_the_vendor_dedupes(
    cases, sim, subtests, fault: Fault
) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            sim.fault(vendor, fault, times=1)
            result = _attempt(case)
            sim.clear_faults()
            if case.dedupes:
                assert isinstance(result, Sent | TransientError), result
            else:
                assert isinstance(result, AmbiguousError), result


def test_a_2xx_with_a_broken_body_counts_as_sent(cases, sim, subtests) -> None:
    vendor, built = cases
    for case in built:
        with subtests.test(case.label):
            sim.fault(vendor, Fault.broken_json(), times=1)
            result = _attempt(case)
            sim.clear_faults()
            assert isinstance(result, Sent), result


def test_a_vendor_nobody_answers_for_is_transient(
    store: Store, monkeypatch: pytest.MonkeyPatch, subtests
) -> None:
    monkeypatch.setattr(integrations.http, "DEFAULT_TIMEOUT", SHORT)
    with Simulator([*all_vendors(), GenericSim()]) as gone:
        urls = {
            name: gone.url(name if name in gone.vendors else GenericSim.name)
            for name in ADAPTERS
        }
    for name, adapter in sorted(ADAPTERS.items()):
        for case in _cases_of(adapter, urls[name], store, BUDGET):
            with subtests.test(f"{name}: {case.label}"):
                result = _attempt(case)
                _close(case)
                assert isinstance(result, TransientError), result


def test_the_shared_budget_paces_sends(
    sim: Simulator, store: Store, monkeypatch: pytest.MonkeyPatch, subtests
) -> None:
    """With a budget of 5 a second, 6 sends take at least a second at the vendor."""
    monkeypatch.setattr(integrations.http, "DEFAULT_TIMEOUT", SHORT)
    for name, adapter in sorted(ADAPTERS.items()):
        vendor = name if name in sim.vendors else GenericSim.name
        for case in _cases_of(adapter, sim.url(vendor), store, PACED):
            with subtests.test(f"{name}: {case.label}"):
                # Our budget is under test, not the vendor's: the simulator lets
                # everything through, so only the budget can slow the sends.
                sim.set_limits(vendor, [])
                store.redis.flushdb()
                case.sender.send(case.nudge)  # warm up, then count
                store.redis.flushdb()
                sim.reset()
                started = time.monotonic()
                for _ in range(6):
                    case.sender.send(case.nudge)
                elapsed = time.monotonic() - started
                _close(case)
                sim.set_limits(vendor, sim.vendor(vendor).limits())
                assert elapsed >= 0.95


def test_no_secret_or_personal_data_is_logged_or_raised(
    cases, sim, subtests, caplog: pytest.LogCaptureFixture
) -> None:
    vendor, built = cases
    caplog.set_level(logging.DEBUG)
    for case in built:
        with subtests.test(case.label):
            said: list[str] = []
            for fault in (
                None,
                Fault.answer(400),
                Fault.answer(401),
                Fault.rate_limited(1),
                Fault.answer(503),
                Fault.reset(),
            ):
                if fault is not None:
                    sim.fault(vendor, fault, times=1)
                result = _attempt(case)
                sim.clear_faults()
                said.append(str(result))
            said += [
                record.getMessage()
                for record in caplog.records
                if not record.name.startswith(("httpx", "httpcore"))
            ]
            text = "\n".join(said)
            for private in _private(case):
                assert private not in text


def test_a_preview_carries_no_credential(cases, subtests) -> None:
    _, built = cases
    for case in built:
        with subtests.test(case.label):
            build = getattr(case.sender, "build_request", None)
            if build is None:
                continue
            request = build(case.nudge)
            shown = json.dumps(
                {
                    "url": request.url,
                    "json": request.json,
                    "headers": dict(request.headers),
                },
                default=str,
            )
            for secret in case.secrets:
                assert secret not in shown


def _private(case: ConformanceCase) -> list[str]:
    private = [*case.secrets, case.nudge.body]
    if case.nudge.recipient.email:
        private.append(case.nudge.recipient.email)
    return [value for value in private if value]


def test_an_adapter_signature_is_the_documented_one() -> None:
    for name, adapter in ADAPTERS.items():
        parameters = list(inspect.signature(adapter.conformance_cases).parameters)
        assert parameters == ["base_url", "store", "budget"], name

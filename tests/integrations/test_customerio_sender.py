"""The Customer.io sender over real HTTP, against the simulated workspace.

Each test sends through `CustomerIOChannel` to `CustomerIOSim` on loopback and
asserts what went over the wire, what came back, and what was logged.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi import body_validator, load_spec

from integrations.base import Sent
from integrations.customerio import (
    APP_URLS,
    BROADCAST_BUDGET,
    DEFAULT_BUDGETS,
    MAX_BATCH_BYTES,
    MAX_OPERATION_BYTES,
    TRACK_BUDGET,
    TRACK_URLS,
    CustomerIOChannel,
    CustomerIOReference,
    Identify,
    TrackEvent,
    ulid_from_key,
)
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Limit, Simulator
from simulator.customerio import CustomerIOSim

VENDOR = "customerio"
APP_KEY = CustomerIOSim.APP_API_KEY
SITE_ID = CustomerIOSim.SITE_ID
TRACK_KEY = CustomerIOSim.TRACK_API_KEY
SECRETS = (APP_KEY, SITE_ID, TRACK_KEY)
TRANSACTIONAL = CustomerIOReference(transactional_message=3)
BROADCAST = CustomerIOReference(broadcast=12)
EVENT = CustomerIOReference(event="invite_nudge")
IDENTIFY_PATH = "/api/v1/customers/{identifier}"
EVENTS_PATH = "/api/v1/customers/{identifier}/events"
BATCH_PATH = "/api/v2/batch"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([CustomerIOSim()]) as running:
        yield running


@pytest.fixture
def workspace(sim: Simulator) -> Iterator[CustomerIOSim]:
    """The simulated workspace, fresh for each test, with its documented limits."""
    vendor = sim.vendor(VENDOR)
    assert isinstance(vendor, CustomerIOSim)
    sim.reset()
    vendor.forget()
    yield vendor
    sim.set_limits(VENDOR, vendor.limits())
    vendor.forget()


def connect(sim: Simulator, **settings: Any) -> CustomerIOChannel:
    """A sender pointed at the simulator, with its credentials unless told."""
    url = sim.url(VENDOR)
    credentials = {
        "app_api_key": APP_KEY,
        "site_id": SITE_ID,
        "track_api_key": TRACK_KEY,
    }
    return CustomerIOChannel(app_url=url, track_url=url, **{**credentials, **settings})


@pytest.fixture
def sender(sim: Simulator, workspace: CustomerIOSim) -> Iterator[CustomerIOChannel]:
    built = connect(sim)
    yield built
    built.close()


@pytest.fixture(scope="module")
def spec(specs_dir: Path) -> dict[str, Any]:
    """Customer.io's OpenAPI document for the Track API."""
    return load_spec(specs_dir / "customerio" / "journeys-track.openapi.json")


def basic(site_id: str, key: str) -> str:
    token = base64.b64encode(f"{site_id}:{key}".encode()).decode()
    return f"Basic {token}"


def big_identify(user_id: str, size: int) -> Identify:
    """An identify operation of about `size` bytes once written as JSON."""
    return Identify(user_id, {"notes": "x" * size})


# --- each kind of send --------------------------------------------------------


def test_a_transactional_email_goes_to_the_app_api_with_the_bearer_key(
    sender, sim, workspace, nudge
) -> None:
    """`POST /v1/send/email`, the App API key as a Bearer token, the built body."""
    sample = nudge(TRANSACTIONAL)

    sent = sender.send(sample)

    [received] = sim.received(VENDOR)
    assert received.path == "/v1/send/email"
    assert received.request.method == "POST"
    assert received.request.header("authorization") == f"Bearer {APP_KEY}"
    assert received.json == sender.build_request(sample).json
    assert received.json["to"] == sample.recipient.email
    assert sent == Sent(vendor_id=workspace.deliveries[0])


@pytest.mark.parametrize("message_type", ["push", "in_app"])
def test_a_transactional_push_or_in_app_message_needs_no_email(
    sender, sim, workspace, nudge, message_type
) -> None:
    """Push and in-app messages go to the person's id; an address is not needed."""
    reference = CustomerIOReference(transactional_message=3, message_type=message_type)

    sent = sender.send(nudge(reference, email=None))

    [received] = sim.received(VENDOR)
    assert received.path == f"/v1/send/{message_type}"
    assert received.request.header("authorization") == f"Bearer {APP_KEY}"
    assert received.json["identifiers"] == {"id": "user-42"}
    assert "to" not in received.json
    assert sent.vendor_id == workspace.deliveries[0]


def test_a_broadcast_is_triggered_with_the_bearer_key(
    sender, sim, workspace, nudge
) -> None:
    """`POST /v1/campaigns/{id}/triggers`; the trigger id comes back as the id."""
    sample = nudge(BROADCAST)

    sent = sender.send(sample)

    [received] = sim.received(VENDOR)
    assert received.path == "/v1/campaigns/12/triggers"
    assert received.request.header("authorization") == f"Bearer {APP_KEY}"
    assert received.json == {"ids": ["user-42"], "data": sample.message_data()}
    assert sent == Sent(vendor_id=str(workspace.triggers[0]))


def test_an_event_goes_to_the_track_api_with_basic_auth(
    sender, sim, workspace, nudge
) -> None:
    """`POST /api/v1/customers/{id}/events` as `site_id:track_api_key`."""
    sample = nudge(EVENT)

    sent = sender.send(sample)

    [received] = sim.received(VENDOR)
    assert received.path == "/api/v1/customers/user-42/events"
    assert received.request.header("authorization") == basic(SITE_ID, TRACK_KEY)
    assert received.json == {
        "name": "invite_nudge",
        "data": sample.message_data(),
        "id": ulid_from_key(sample.delivery_key),
    }
    assert sent == Sent(vendor_id=None)


def test_a_resent_event_carries_the_same_id_and_is_kept_once(
    sender, sim, workspace, nudge
) -> None:
    """Customer.io drops an event whose ULID it has seen: a resend is harmless."""
    sample = nudge(EVENT, delivery_key="pack-reviewers:ask:user-42:2026-05-02")

    sender.send(sample)
    sender.send(sample)

    ids = [item.json["id"] for item in sim.received(VENDOR)]
    assert ids == [ulid_from_key(sample.delivery_key)] * 2
    assert len(workspace.kept_events()) == 1


def test_identify_sets_attributes_with_basic_auth(sender, sim, workspace) -> None:
    """`PUT /api/v1/customers/{id}` with the attributes as the body."""
    sender.identify("org/7", {"plan": "team", "seats": 12, "trial": False})

    [received] = sim.received(VENDOR)
    assert received.request.method == "PUT"
    assert received.path == "/api/v1/customers/org%2F7"
    assert received.request.header("authorization") == basic(SITE_ID, TRACK_KEY)
    assert received.json == {"plan": "team", "seats": 12, "trial": False}


def test_a_transactional_email_without_an_address_is_not_sent(
    sender, sim, workspace, nudge
) -> None:
    """Retrying will not find an address: permanent, and nothing goes out."""
    with pytest.raises(PermanentError, match="needs an email"):
        sender.send(nudge(TRANSACTIONAL, email=None))

    assert sim.received(VENDOR) == []


def test_a_2xx_with_a_broken_body_still_counts_as_sent(
    sender, sim, workspace, nudge
) -> None:
    """Customer.io took the message; only its delivery id is lost."""
    sim.fault(VENDOR, Fault.broken_json(), times=1)

    sent = sender.send(nudge(TRANSACTIONAL))

    assert sent == Sent(vendor_id=None)
    assert len(sim.received(VENDOR)) == 1


def test_the_eu_region_uses_the_eu_servers() -> None:
    """Both APIs move to their `-eu` hosts together."""
    built = CustomerIOChannel(
        region="eu", app_api_key=APP_KEY, site_id=SITE_ID, track_api_key=TRACK_KEY
    )
    try:
        assert built.app_url == APP_URLS["eu"] == "https://api-eu.customer.io"
        assert built.track_url == TRACK_URLS["eu"] == "https://track-eu.customer.io"
    finally:
        built.close()


def test_a_missing_credential_is_named_and_nothing_is_sent(
    sim, workspace, nudge
) -> None:
    """The error names the setting to set, never a value."""
    built = connect(sim, app_api_key=None)

    with pytest.raises(ConfigurationError, match="CUSTOMERIO_APP_API_KEY"):
        built.send(nudge(TRANSACTIONAL))
    built.send(nudge(EVENT))

    assert [item.path for item in sim.received(VENDOR)] == [
        "/api/v1/customers/user-42/events"
    ]
    built.close()


# --- batches ------------------------------------------------------------------


def test_a_batch_is_split_into_requests_under_500_kb(sender, sim, workspace) -> None:
    """Every operation is sent once, in order, in as few requests as fit."""
    operations = [big_identify(f"user-{index}", 20_000) for index in range(60)]

    result = sender.batch(operations)

    bodies = [item.request.body for item in sim.received(VENDOR, path=BATCH_PATH)]
    sent_ids = [
        operation["identifiers"]["id"]
        for item in sim.received(VENDOR, path=BATCH_PATH)
        for operation in item.json["batch"]
    ]
    assert len(bodies) == result.requests == 3
    assert all(len(body) < MAX_BATCH_BYTES for body in bodies)
    assert sent_ids == [f"user-{index}" for index in range(60)]
    assert result.done == tuple(range(60))
    assert result.failed == ()


def test_an_operation_over_32_kb_is_refused_alone(sender, sim, workspace) -> None:
    """The oversized operation is reported by its index and never sent."""
    operations = [
        Identify("user-0", {"plan": "team"}),
        big_identify("user-huge", MAX_OPERATION_BYTES),
        TrackEvent("user-2", "invite_nudge", "key-2", {"share": "the pack"}),
    ]

    result = sender.batch(operations)

    [received] = sim.received(VENDOR, path=BATCH_PATH)
    assert [op["identifiers"]["id"] for op in received.json["batch"]] == [
        "user-0",
        "user-2",
    ]
    assert result.done == (0, 2)
    assert result.failed_indexes == (1,)
    assert not result.failed[0].retryable
    assert "32000" in result.failed[0].reason


def test_a_207_is_read_row_by_row_and_nothing_is_resent(sender, sim, workspace) -> None:
    """Refused rows come back by their index with the reason; the rest are done."""
    workspace.fail_batch_rows(["user-3", "user-7"], reason="invalid_attribute")
    operations = [
        TrackEvent(f"user-{index}", "invite_nudge", f"key-{index}")
        for index in range(10)
    ]

    result = sender.batch(operations)

    assert len(sim.received(VENDOR, path=BATCH_PATH)) == 1
    assert sim.received(VENDOR)[0].status == 207
    assert result.failed_indexes == (3, 7)
    assert result.failed[0].reason == "attributes: invalid_attribute"
    assert result.done == (0, 1, 2, 4, 5, 6, 8, 9)
    assert len(workspace.kept_events()) == 8


def test_row_failures_in_a_later_request_keep_their_own_index(
    sender, sim, workspace
) -> None:
    """`batch_index` counts within one request; the result counts in the caller's
    list."""
    workspace.fail_batch_rows(["user-40"])
    operations = [big_identify(f"user-{index}", 20_000) for index in range(45)]

    result = sender.batch(operations)

    assert result.requests == 2
    assert result.failed_indexes == (40,)
    assert len(result.done) == 44


def test_a_failed_request_fails_its_rows_and_stops_the_batch(
    sender, sim, workspace
) -> None:
    """A 503 marks that request's rows and the unsent ones as worth retrying."""
    sim.fault(VENDOR, Fault.answer(503))
    operations = [big_identify(f"user-{index}", 20_000) for index in range(45)]

    result = sender.batch(operations)

    # A batch is safe to repeat, so the 503 was retried at once, then given up.
    assert {item.status for item in sim.received(VENDOR)} == {503}
    assert result.done == ()
    assert result.failed_indexes == tuple(range(45))
    assert all(failure.retryable for failure in result.failed)
    assert result.failed[-1].reason.startswith("not sent after")


def test_an_empty_batch_sends_nothing(sender, sim, workspace) -> None:
    result = sender.batch([])

    assert (result.done, result.failed, result.requests) == ((), (), 0)
    assert sim.received(VENDOR) == []


# --- the contract: Track bodies against Customer.io's spec --------------------


def test_every_track_body_sent_matches_the_spec(
    sender, sim, workspace, nudge, spec
) -> None:
    """Identify, event and batch bodies are valid for their documented operation."""
    validators = {
        "PUT": body_validator(spec, IDENTIFY_PATH, "put"),
        "POST events": body_validator(spec, EVENTS_PATH, "post"),
        "POST batch": body_validator(spec, BATCH_PATH, "post"),
    }
    sender.identify("user-42", {"plan": "team", "seats": 12, "trial": False})
    sender.send(nudge(EVENT))
    sender.batch(
        [
            Identify("user-42", {"plan": "team", "invites_sent": 3}),
            TrackEvent("user-42", "invite_nudge", "key-1", nudge(EVENT).data),
        ]
    )

    track = [item for item in sim.received(VENDOR) if item.path.startswith("/api/")]
    for item in track:
        method = item.request.method
        which = method if method == "PUT" else f"POST {item.path.rsplit('/', 1)[1]}"
        validators[which].validate(item.json)
    assert sorted(item.request.method for item in track) == ["POST", "POST", "PUT"]


# --- answers mapped to errors, for this vendor --------------------------------


def test_a_429_is_transient_with_the_wait_customer_io_asked_for(
    sender, sim, workspace, nudge
) -> None:
    """The simulated workspace allows one broadcast trigger per 10 seconds."""
    sender.send(nudge(BROADCAST))

    with pytest.raises(TransientError, match="429") as caught:
        sender.send(nudge(BROADCAST))

    assert 5 <= (caught.value.retry_after_s or 0) <= 10
    assert [item.status for item in sim.received(VENDOR)] == [200, 429]


def test_a_5xx_to_a_transactional_send_is_transient_and_not_repeated(
    sender, sim, workspace, nudge
) -> None:
    """Customer.io does not dedupe transactional sends, so nothing is retried."""
    sim.fault(VENDOR, Fault.answer(503), times=1)

    with pytest.raises(TransientError, match="503"):
        sender.send(nudge(TRANSACTIONAL))

    assert len(sim.received(VENDOR)) == 1


def test_a_5xx_to_an_event_is_retried_at_once(sender, sim, workspace, nudge) -> None:
    """An event is deduped by its id, so repeating it is safe."""
    sim.fault(VENDOR, Fault.answer(503), times=1)

    sender.send(nudge(EVENT))

    assert [item.status for item in sim.received(VENDOR)] == [503, 200]


def test_a_dropped_answer_is_ambiguous_for_a_send_but_retried_for_an_event(
    sender, sim, workspace, nudge
) -> None:
    """A reset after the request went out: a transactional send may have gone."""
    sim.fault(VENDOR, Fault.reset(), times=2)

    with pytest.raises(AmbiguousError):
        sender.send(nudge(TRANSACTIONAL))
    sender.send(nudge(EVENT))

    assert [item.status for item in sim.received(VENDOR)] == [None, None, 200]


@pytest.mark.parametrize(
    ("settings", "reference"),
    [({"app_api_key": "wrong"}, TRANSACTIONAL), ({"track_api_key": "wrong"}, EVENT)],
)
def test_refused_credentials_are_permanent(
    sim, workspace, nudge, settings, reference
) -> None:
    """A 401 from either API will not change by retrying."""
    built = connect(sim, **settings)

    with pytest.raises(PermanentError, match="credentials refused") as caught:
        built.send(nudge(reference))

    assert caught.value.status == 401
    built.close()


# --- budgets ------------------------------------------------------------------


def test_the_default_budgets_are_the_documented_limits() -> None:
    """Track and transactional share 3,000 per 3 s; broadcasts 1 per 10 s; the
    rest of the App API 10 per second."""
    assert {name: str(cap) for name, cap in DEFAULT_BUDGETS.items()} == {
        "customerio:track": "3000 per 3s",
        "customerio:broadcast": "1 per 10s",
        "customerio:app": "10 per 1s",
    }


def test_a_broadcast_budget_paces_the_triggers(
    sim, workspace, nudge, store: Store
) -> None:
    """`2 per 1s`: the third trigger goes a second after the first."""
    sim.set_limits(VENDOR, [])
    budgets = {BROADCAST_BUDGET: Cap(2, timedelta(seconds=1))}
    built = connect(sim, store=store, budgets=budgets)

    started = time.monotonic()
    for _ in range(3):
        built.send(nudge(BROADCAST))
    elapsed = time.monotonic() - started

    times = [item.request.at for item in sim.received(VENDOR)]
    assert elapsed >= 0.95
    assert times[2] - times[0] >= 0.95
    built.close()


def test_the_default_broadcast_budget_holds_the_next_trigger_back(
    sim, workspace, nudge, store: Store
) -> None:
    """One per 10 s: the second trigger waits for the engine, not in the worker."""
    built = connect(sim, store=store)
    built.send(nudge(BROADCAST))

    with pytest.raises(TransientError, match="budget") as caught:
        built.send(nudge(BROADCAST))

    assert 9 <= (caught.value.retry_after_s or 0) <= 10
    assert len(sim.received(VENDOR)) == 1
    built.close()


def test_transactional_sends_and_track_calls_share_one_budget(
    sim, workspace, nudge, store: Store
) -> None:
    """A transactional send uses up the budget an event would have used."""
    budgets = {TRACK_BUDGET: Cap(1, timedelta(hours=1))}
    built = connect(sim, store=store, budgets=budgets)
    built.send(nudge(TRANSACTIONAL))

    with pytest.raises(TransientError, match="budget"):
        built.send(nudge(EVENT))

    assert [item.path for item in sim.received(VENDOR)] == ["/v1/send/email"]
    built.close()


def test_an_unknown_budget_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="customerio:sends"):
        CustomerIOChannel(budgets={"customerio:sends": Cap(1, timedelta(seconds=1))})


# --- doctor -------------------------------------------------------------------


def test_check_is_ok_with_good_credentials(sender, sim, workspace) -> None:
    """Both read-only calls answer, with the credentials each API takes."""
    checks = sender.check()

    assert [(check.what, check.ok) for check in checks] == [
        ("Track API credentials", True),
        ("App API key", True),
    ]
    paths = {item.path: item.request for item in sim.received(VENDOR)}
    region = paths["/api/v1/accounts/region"]
    assert region.method == "GET"
    assert region.header("authorization") == basic(SITE_ID, TRACK_KEY)
    assert paths["/v1/transactional"].header("authorization") == f"Bearer {APP_KEY}"


def test_check_names_the_settings_to_fix_and_never_prints_them(sim, workspace) -> None:
    """Refused credentials are not ok, with the setting to check by its name."""
    wrong = ("wrong-app-key-3f1", "wrong-site-9c2", "wrong-track-key-77d")
    built = connect(sim, app_api_key=wrong[0], site_id=wrong[1], track_api_key=wrong[2])

    checks = built.check()

    assert [check.ok for check in checks] == [False, False]
    assert "CUSTOMERIO_TRACK_API_KEY" in checks[0].detail
    assert "CUSTOMERIO_APP_API_KEY" in checks[1].detail
    printed = repr(checks)
    assert "401" in printed
    assert not [secret for secret in (*wrong, *SECRETS) if secret in printed]
    built.close()


def test_check_reports_missing_settings_without_calling(sim, workspace) -> None:
    built = CustomerIOChannel(app_url=sim.url(VENDOR), track_url=sim.url(VENDOR))

    checks = built.check()

    assert [(check.ok, check.detail.startswith("not set")) for check in checks] == [
        (False, True),
        (False, True),
    ]
    assert sim.received(VENDOR) == []


def test_check_says_when_the_region_is_wrong(sim, workspace) -> None:
    """Track credentials of an EU workspace, with the channel set to the US."""
    built = connect(sim)
    workspace.region = "eu"
    try:
        checks = built.check()
    finally:
        workspace.region = "us"
        built.close()

    assert not checks[0].ok
    assert "`eu`" in checks[0].detail


def test_check_says_when_customer_io_cannot_be_reached() -> None:
    with Simulator([CustomerIOSim()]) as gone:
        url = gone.url(VENDOR)
    built = CustomerIOChannel(
        app_url=url,
        track_url=url,
        app_api_key=APP_KEY,
        site_id=SITE_ID,
        track_api_key=TRACK_KEY,
    )

    checks = built.check()

    assert [check.ok for check in checks] == [False, False]
    assert all("not reachable" in check.detail for check in checks)
    built.close()


# --- conformance cases --------------------------------------------------------


def test_every_conformance_case_sends_to_the_simulator(
    sim, workspace, store: Store
) -> None:
    """One case per kind of send; only the Track event is deduped."""
    sim.set_limits(VENDOR, [])
    cases = CustomerIOChannel.conformance_cases(
        sim.url(VENDOR), store, Cap(100, timedelta(seconds=1))
    )

    for case in cases:
        case.sender.send(case.nudge)
        assert isinstance(case.sender, CustomerIOChannel)
        case.sender.close()

    assert [item.status for item in sim.received(VENDOR)] == [200] * 5
    assert [case.dedupes for case in cases] == [False, False, False, False, True]
    assert set(cases[0].secrets) == set(SECRETS)


# --- nothing sensitive out ----------------------------------------------------


def test_no_log_line_or_error_carries_an_email_a_key_or_a_body(
    sim, workspace, nudge, caplog: pytest.LogCaptureFixture
) -> None:
    """Sends, refusals, batches and checks, with everything logged at DEBUG."""
    caplog.set_level(logging.DEBUG)
    sample = nudge(TRANSACTIONAL)
    good = connect(sim)
    bad = connect(sim, app_api_key="wrong-app-key-3f1")
    workspace.fail_batch_rows(["user-1"])
    said: list[str] = []

    good.send(sample)
    for fault in (Fault.answer(400), Fault.rate_limited(2), Fault.reset()):
        sim.fault(VENDOR, fault, times=1)
        with pytest.raises(VendorError) as caught:
            good.send(sample)
        said.append(str(caught.value))
    with pytest.raises(VendorError) as caught:
        bad.send(sample)
    said.append(str(caught.value))
    result = good.batch(
        [
            Identify("user-1", {"email": sample.recipient.email}),
            big_identify("user-2", MAX_OPERATION_BYTES),
        ]
    )
    said += [failure.reason for failure in result.failed]
    said += [repr(bad.check())]

    said += [record.getMessage() for record in caplog.records]
    text = "\n".join(said)
    private = [sample.recipient.email, sample.body, "wrong-app-key-3f1", *SECRETS]
    assert [value for value in private if value and value in text] == []
    assert sample.delivery_key in text
    good.close()
    bad.close()


def test_the_simulator_refuses_a_batch_over_500_kb(sim, workspace) -> None:
    """What the sender never sends, the simulated workspace refuses as Customer.io
    documents."""
    operations = ",".join(['{"type":"person"}'] * 40_000)
    response = httpx.post(
        f"{sim.url(VENDOR)}{BATCH_PATH}",
        content=f'{{"batch":[{operations}]}}',
        auth=(SITE_ID, TRACK_KEY),
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["reason"] == "too_large"


def test_the_simulator_limits_follow_the_default_budgets() -> None:
    """The workspace enforces the limits the sender paces itself by."""
    limits = CustomerIOSim().limits()

    assert {(limit.bucket, limit.count, limit.window_s) for limit in limits} == {
        ("customerio:track", 3000, 3.0),
        ("customerio:broadcast", 1, 10.0),
        ("customerio:app", 10, 1.0),
    }
    assert all(isinstance(limit, Limit) for limit in limits)

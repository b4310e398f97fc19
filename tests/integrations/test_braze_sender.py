"""The Braze sender against the simulated Braze, over real HTTP on loopback.

Each test reads what went over the wire (`sim.received`), the outcome the sender
reported, and, where budgets are involved, the shared budget in Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from integrations.base import Sent
from integrations.braze import (
    CONFORMANCE_API_KEY,
    MESSAGING_BUDGET,
    USERS_TRACK_BUDGET,
    BrazeEmail,
    BrazeReference,
    BrazeSender,
)
from orchestrator.budgets import Budget
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
)
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Limit, Received, Simulator
from simulator.braze import API_KEY, DEFAULT_LIMITS, PERMISSIONS, BrazeSim
from tests.integrations.conftest import SAMPLE_EMAIL, NudgeFactory

SEND_ONLY_KEY = "braze-sim-send-only-key"
CAMPAIGN = BrazeReference(campaign="cmp-1")
CANVAS = BrazeReference(canvas="cnv-1")
EMAIL = BrazeReference(
    email=BrazeEmail(app_id="app-1", sender="Acme <team@acme.example>")
)
QUICK = httpx.Timeout(0.5, connect=0.5)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    keys = {API_KEY: PERMISSIONS, SEND_ONLY_KEY: PERMISSIONS - {"campaigns.list"}}
    with Simulator([BrazeSim(keys=keys)]) as running:
        yield running


@pytest.fixture
def braze(sim: Simulator) -> BrazeSim:
    """The simulated workspace, as the sim's vendor, with its own limits back."""
    sim.reset()
    simulated = sim.vendor("braze")
    assert isinstance(simulated, BrazeSim)
    sim.set_limits("braze", simulated.limits())
    simulated.paused_canvases.clear()
    simulated.dispatched.clear()
    return simulated


@pytest.fixture
def sender(sim: Simulator, braze: BrazeSim) -> Iterator[BrazeSender]:
    built = BrazeSender(API_KEY, sim.url("braze"), timeout=QUICK)
    yield built
    built.close()


def _users(received: Received) -> list[str]:
    body = received.json
    if "external_user_ids" in body:
        return list(body["external_user_ids"])
    return [recipient["external_user_id"] for recipient in body["recipients"]]


# --- each kind of send ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "path"),
    [
        (CAMPAIGN, "/campaigns/trigger/send"),
        (CANVAS, "/canvas/trigger/send"),
        (EMAIL, "/messages/send"),
    ],
    ids=["campaign", "canvas", "email"],
)
def test_a_send_goes_out_with_the_key_and_answers_the_dispatch_id(
    sender: BrazeSender,
    sim: Simulator,
    braze: BrazeSim,
    nudge: NudgeFactory,
    reference: BrazeReference,
    path: str,
) -> None:
    """The request is the one `build_request` shows, with the real key added."""
    sample = nudge(reference)

    sent = sender.send(sample)

    [received] = sim.received("braze")
    assert (received.request.method, received.path) == ("POST", path)
    assert received.request.header("authorization") == f"Bearer {API_KEY}"
    assert received.json == sender.build_request(sample).json
    assert received.status == 201
    assert sent == Sent(vendor_id=braze.dispatched[-1])


def test_a_paused_canvas_is_refused_for_good(
    sender: BrazeSender, braze: BrazeSim, nudge: NudgeFactory
) -> None:
    """Braze takes a trigger of a paused Canvas with a 201 and a notice, and sends
    nothing: that is no delivery."""
    braze.paused_canvases.add("cnv-1")

    with pytest.raises(PermanentError, match=r"cnv-1.*paused"):
        sender.send(nudge(CANVAS))


# --- batches ----------------------------------------------------------------------


def test_send_many_groups_by_campaign_and_splits_at_50(
    sender: BrazeSender, sim: Simulator, braze: BrazeSim, nudge: NudgeFactory
) -> None:
    """Given 60 nudges of one campaign, 45 of another, 3 of a Canvas and 2 emails,
    mixed; then 6 requests go out, each answer standing for its recipients."""
    other = BrazeReference(campaign="cmp-2")
    plan = [CAMPAIGN] * 60 + [other] * 45 + [CANVAS] * 3 + [EMAIL] * 2
    mixed = plan[::2] + plan[1::2]
    nudges = [nudge(ref, user_id=f"user-{i}") for i, ref in enumerate(mixed)]

    outcomes = sender.send_many(nudges)

    received = sim.received("braze")
    sizes = sorted(len(_users(item)) for item in received)
    assert sizes == [1, 1, 3, 10, 45, 50]
    dispatch_of = {
        user: dispatch
        for item, dispatch in zip(received, braze.dispatched, strict=True)
        for user in _users(item)
    }
    assert outcomes == [Sent(dispatch_of[n.recipient.user_id]) for n in nudges]
    reference_of = {n.recipient.user_id: n.reference for n in nudges}
    for item in received:
        assert len({reference_of[user] for user in _users(item)}) == 1


def test_an_error_stands_for_every_nudge_of_its_request(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    """The first request is refused: its 50 nudges fail, the next 5 are sent."""
    nudges = [nudge(CAMPAIGN, user_id=f"user-{i}") for i in range(55)]
    sim.fault("braze", Fault.answer(400), times=1)

    outcomes = sender.send_many(nudges)

    assert all(isinstance(item, PermanentError) for item in outcomes[:50])
    assert all(isinstance(item, Sent) for item in outcomes[50:])
    assert len(sim.received("braze")) == 2


def test_a_wait_asked_for_holds_back_the_rest_of_the_batch(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    """After a 429, the other requests are not made; every nudge gets the wait."""
    nudges = [nudge(CAMPAIGN, user_id=f"user-{i}") for i in range(120)]
    sim.fault("braze", Fault.rate_limited(9), times=1)

    outcomes = sender.send_many(nudges)

    assert len(sim.received("braze")) == 1
    assert {type(item) for item in outcomes} == {TransientError}
    assert {item.retry_after_s for item in outcomes} == {9}


def test_the_simulator_refuses_over_50_recipients_as_braze_does(
    sim: Simulator, braze: BrazeSim
) -> None:
    """51 recipients are a fatal 400 with Braze's message, and nothing is sent."""
    recipients = [{"external_user_id": f"user-{i}"} for i in range(51)]
    body = {"campaign_id": "cmp-1", "recipients": recipients}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    answer = httpx.post(
        f"{sim.url('braze')}/campaigns/trigger/send", json=body, headers=headers
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "message": "The max number of external_ids and aliases per request was exceeded"
    }
    assert braze.dispatched == []


def test_a_nudge_without_a_reference_stops_the_batch_before_sending(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    with pytest.raises(ConfigurationError, match=r"nudge\.braze"):
        sender.send_many([nudge(CAMPAIGN), nudge(None)])

    assert sim.received("braze") == []


# --- /users/track -----------------------------------------------------------------


def test_users_track_chunks_at_75_of_each_kind(
    sender: BrazeSender, sim: Simulator
) -> None:
    """160 attributes and 80 events go in three requests, in order."""
    attributes = [{"external_id": f"user-{i}", "guest_seats": 2} for i in range(160)]
    events = [{"external_id": f"user-{i}", "name": "reward_granted"} for i in range(80)]

    made = sender.track(attributes=attributes, events=events)

    received = sim.received("braze", "/users/track")
    assert made == 3
    assert [item.status for item in received] == [201, 201, 201]
    assert [item.json for item in received] == [
        {"attributes": attributes[:75], "events": events[:75]},
        {"attributes": attributes[75:150], "events": events[75:]},
        {"attributes": attributes[150:]},
    ]


def test_users_track_with_nothing_makes_no_request(
    sender: BrazeSender, sim: Simulator
) -> None:
    assert sender.track() == 0
    assert sim.received("braze") == []


def test_the_simulator_refuses_76_objects_of_a_kind(sim: Simulator) -> None:
    purchases = [{"external_id": "user-1", "product_id": "seat"}] * 76
    headers = {"Authorization": f"Bearer {API_KEY}"}

    answer = httpx.post(
        f"{sim.url('braze')}/users/track",
        json={"purchases": purchases},
        headers=headers,
    )

    assert answer.status_code == 400
    assert answer.json() == {"message": "Max Input Length Exceeded"}


# --- rate headers and budgets -----------------------------------------------------


@pytest.fixture
def tight_sim() -> Iterator[Simulator]:
    """A Braze that allows 2 sends per 30 s, and says so in its headers."""
    limits = [Limit("messaging", count=2, window_s=30), *DEFAULT_LIMITS[1:]]
    with Simulator([BrazeSim(limits=limits)]) as running:
        yield running


def test_every_answer_carries_the_rate_headers_429_included(
    tight_sim: Simulator,
) -> None:
    """Remaining counts down; the 429 says when the window frees a request."""
    url = f"{tight_sim.url('braze')}/campaigns/trigger/send"
    body = {"campaign_id": "cmp-1", "recipients": [{"external_user_id": "u-1"}]}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    started = time.time()
    answers = [httpx.post(url, json=body, headers=headers) for _ in range(3)]

    assert [a.status_code for a in answers] == [201, 201, 429]
    assert [a.headers["X-RateLimit-Limit"] for a in answers] == ["2"] * 3
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
    for answer in answers:
        assert started + 28 <= int(answer.headers["X-RateLimit-Reset"]) <= started + 32
    assert "Retry-After" not in answers[2].headers


def test_no_requests_remaining_holds_the_budget_off_until_the_reset(
    tight_sim: Simulator, store: Store, nudge: NudgeFactory
) -> None:
    """Given Braze answers `X-RateLimit-Remaining: 0`; then no worker sends again
    before `X-RateLimit-Reset`, and Braze never sees a request it would refuse."""
    braze = BrazeSender(API_KEY, tight_sim.url("braze"), store=store, timeout=QUICK)
    budget = Budget(store, MESSAGING_BUDGET, Cap(250_000, timedelta(hours=1)))

    braze.send(nudge(CAMPAIGN))
    braze.send(nudge(CAMPAIGN))
    with pytest.raises(TransientError, match="budget") as caught:
        braze.send(nudge(CAMPAIGN))
    braze.close()

    assert len(tight_sim.received("braze")) == 2
    assert tight_sim.count("braze", 429) == 0
    assert 25 <= (caught.value.retry_after_s or 0) <= 32
    assert budget.reserve(0).wait_ms > 25_000


def test_users_track_headers_steer_only_their_own_budget(
    sender: BrazeSender, sim: Simulator, store: Store
) -> None:
    """`/users/track` has its own limit; its Remaining 0 leaves sends alone."""
    braze = BrazeSender(API_KEY, sim.url("braze"), store=store, timeout=QUICK)
    reset = str(int(time.time()) + 3)
    used_up = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    sim.fault("braze", Fault.answer(201, {"message": "success"}, used_up), times=1)

    braze.track(attributes=[{"external_id": "user-1", "guest_seats": 2}])
    braze.close()

    track = Budget(store, USERS_TRACK_BUDGET, Cap(3_000, timedelta(seconds=3)))
    messaging = Budget(store, MESSAGING_BUDGET, Cap(250_000, timedelta(hours=1)))
    assert track.reserve(0).wait_ms > 1_500
    assert messaging.reserve(0).wait_ms == 0


def test_a_429_waits_for_the_reset_braze_names(
    sim: Simulator, braze: BrazeSim, store: Store, nudge: NudgeFactory
) -> None:
    """A 429 carries no Retry-After; the wait is read from X-RateLimit-Reset, and
    every worker's budget holds off for it."""
    sim.set_limits("braze", [Limit("messaging", count=1, window_s=20)])
    sender = BrazeSender(API_KEY, sim.url("braze"), store=store, timeout=QUICK)
    sender.send(nudge(CAMPAIGN))

    with pytest.raises(TransientError, match="429") as caught:
        sender.send(nudge(CAMPAIGN))
    sender.close()

    assert 15 <= (caught.value.retry_after_s or 0) <= 21
    budget = Budget(store, MESSAGING_BUDGET, Cap(250_000, timedelta(hours=1)))
    assert budget.reserve(0).wait_ms > 14_000


def test_a_budget_of_5_per_second_paces_sends(
    sim: Simulator, braze: BrazeSim, store: Store, nudge: NudgeFactory
) -> None:
    """Six sends one after another take a second, and no 0.95 s holds more than 5."""
    budgets = {MESSAGING_BUDGET: Cap(5, timedelta(seconds=1))}
    sender = BrazeSender(API_KEY, sim.url("braze"), store=store, budgets=budgets)

    started = time.monotonic()
    for index in range(6):
        sender.send(nudge(CAMPAIGN, user_id=f"user-{index}"))
    elapsed = time.monotonic() - started
    sender.close()

    arrivals = [item.request.at for item in sim.received("braze")]
    busiest = max(
        sum(1 for other in arrivals if first <= other < first + 0.95)
        for first in arrivals
    )
    assert elapsed >= 0.95
    assert busiest <= 5


# --- answers mapped to the engine's errors ----------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_transient_and_the_send_is_not_repeated(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory, status: int
) -> None:
    sim.fault("braze", Fault.answer(status), times=1)

    with pytest.raises(TransientError, match=str(status)):
        sender.send(nudge(CAMPAIGN))

    assert len(sim.received("braze")) == 1


def test_a_400_is_permanent_with_its_status(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    sim.fault("braze", Fault.answer(400), times=1)

    with pytest.raises(PermanentError) as caught:
        sender.send(nudge(CAMPAIGN))

    assert caught.value.status == 400


def test_an_unknown_key_is_permanent_and_says_to_check_the_settings(
    sim: Simulator, braze: BrazeSim, nudge: NudgeFactory
) -> None:
    sender = BrazeSender("not-a-braze-key", sim.url("braze"), timeout=QUICK)

    with pytest.raises(PermanentError, match="credentials refused") as caught:
        sender.send(nudge(CAMPAIGN))
    sender.close()

    assert caught.value.status == 401
    assert sim.received("braze")[0].status == 401


def test_an_unanswered_send_is_ambiguous_and_not_repeated(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Braze takes no idempotency key: a repeat could send the nudge twice."""
    sim.fault("braze", Fault.hang(2), times=1)

    with pytest.raises(AmbiguousError):
        sender.send(nudge(CAMPAIGN))

    assert len(sim.received("braze")) == 1


def test_a_2xx_with_a_broken_body_still_counts_as_sent(
    sender: BrazeSender, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Braze took the nudge; only its dispatch id is unknown."""
    sim.fault("braze", Fault.broken_json(201), times=1)

    assert sender.send(nudge(CAMPAIGN)) == Sent(vendor_id=None)


def test_settings_braze_cannot_use_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="BRAZE_API_KEY"):
        BrazeSender("")
    with pytest.raises(ConfigurationError, match="braze:mesaging"):
        BrazeSender("key", budgets={"braze:mesaging": Cap(1, timedelta(seconds=1))})


# --- doctor -----------------------------------------------------------------------


def test_check_says_a_working_key_works(sender: BrazeSender, sim: Simulator) -> None:
    [check] = sender.check()

    assert (check.vendor, check.ok) == ("braze", True)
    assert sim.received("braze")[0].path == "/campaigns/list"
    assert sim.received("braze")[0].request.method == "GET"


def test_check_says_which_setting_to_fix_for_a_refused_key(
    sim: Simulator, braze: BrazeSim
) -> None:
    sender = BrazeSender("not-a-braze-key", sim.url("braze"), timeout=QUICK)

    [check] = sender.check()
    sender.close()

    assert not check.ok
    assert "401" in check.detail
    assert "BRAZE_API_KEY" in check.detail
    assert "not-a-braze-key" not in check.detail


def test_check_names_the_permission_a_key_lacks(
    sim: Simulator, braze: BrazeSim
) -> None:
    sender = BrazeSender(SEND_ONLY_KEY, sim.url("braze"), timeout=QUICK)

    [check] = sender.check()
    sender.close()

    assert not check.ok
    assert "403" in check.detail
    assert "`campaigns.list`" in check.detail
    assert SEND_ONLY_KEY not in check.detail


def test_check_says_braze_is_unreachable() -> None:
    with Simulator([BrazeSim()]) as gone:
        url = gone.url("braze")
    sender = BrazeSender(API_KEY, url, timeout=QUICK)

    [check] = sender.check()
    sender.close()

    assert not check.ok
    assert "could not reach" in check.detail
    assert "BRAZE_REST_URL" in check.detail


# --- conformance and privacy ------------------------------------------------------


def test_each_conformance_case_sends_to_the_simulator(
    sim: Simulator, braze: BrazeSim, store: Store
) -> None:
    """One case per kind of send, built against the simulator with the budget."""
    cases = BrazeSender.conformance_cases(
        sim.url("braze"), store, Cap(100, timedelta(seconds=1))
    )

    outcomes = [case.sender.send(case.nudge) for case in cases]
    for case in cases:
        case.sender.close()

    assert [case.label for case in cases] == [
        "braze-campaign",
        "braze-canvas",
        "braze-email",
    ]
    assert all(case.secrets == (CONFORMANCE_API_KEY,) for case in cases)
    assert not any(case.dedupes for case in cases)
    assert outcomes == [Sent(dispatch) for dispatch in braze.dispatched]
    assert [item.path for item in sim.received("braze")] == [
        "/campaigns/trigger/send",
        "/canvas/trigger/send",
        "/messages/send",
    ]


def test_no_log_line_or_error_carries_personal_data_or_the_key(
    sim: Simulator,
    braze: BrazeSim,
    nudge: NudgeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refusals, waits, silences and a bad key, at DEBUG: only ids and statuses."""
    caplog.set_level(logging.DEBUG)
    sender = BrazeSender(API_KEY, sim.url("braze"), timeout=QUICK)
    refused = BrazeSender("sk-wrong-4c1d", sim.url("braze"), timeout=QUICK)
    samples = [nudge(reference) for reference in (CAMPAIGN, CANVAS, EMAIL)]
    said = []
    for fault in (Fault.answer(400), Fault.rate_limited(1), Fault.hang(2)):
        for sample in samples:
            sim.fault("braze", fault, times=1)
            with pytest.raises((PermanentError, TransientError, AmbiguousError)) as e:
                sender.send(sample)
            said.append(str(e.value))
    with pytest.raises(PermanentError) as caught:
        refused.send(samples[0])
    said += [str(caught.value), *(check.detail for check in refused.check())]
    sender.send(samples[2])
    sender.track(attributes=[{"external_id": "user-42", "email": SAMPLE_EMAIL}])
    sender.close()
    refused.close()

    said += [record.getMessage() for record in caplog.records]
    text = "\n".join(said)
    private = [SAMPLE_EMAIL, API_KEY, "sk-wrong-4c1d", samples[0].body]
    private += [samples[0].data["invite_link"], "team@acme.example"]
    assert [item for item in private if item in text] == []

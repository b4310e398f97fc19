"""The product's own API: signed grants and nudges, each applied once by its key.

The signing functions are tested on their own, then the adapters over real HTTP
against the simulated product, which verifies every request as a product would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import cast

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.base import (
    SECURE,
    Channel,
    GrantRequest,
    RewardTarget,
    Sender,
)
from integrations.http import QUICK_ATTEMPTS
from integrations.webhook import (
    CONFORMANCE_SECRET,
    IDEMPOTENCY_HEADER,
    NUDGES_BUDGET,
    SIGNATURE_HEADER,
    SignatureError,
    WebhookChannel,
    WebhookReference,
    WebhookRewards,
    secret_list,
    sign,
    verify,
)
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
)
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Simulator
from simulator.product import ProductSim
from tests.integrations.conftest import SAMPLE_EMAIL, NudgeFactory

SECRET = "test-secret-7d2e9b41c6a8f3057e1d4b9a2c6f8e30"
OLD_SECRET = "old-secret-0a9c4e7b2d6f1835c9e0b7a4d2f6c1e8"
NOW = 1_777_000_000.0
BODY = b'{"grant":"guest_seats","user_id":"user-42"}'
FAST = httpx.Timeout(0.3, connect=0.5)
REFERENCE = WebhookReference(topic="invite-reviewers")
GRANT = GrantRequest(
    idempotency_key="gr_5f0c2a9d71e84b36",
    playbook_id="pack-reviewers",
    user_id="user-42",
    account_id="acct-7",
    grant="guest_seats",
    amount=3,
)
SECRET_CHARS = string.ascii_letters + string.digits + "-_"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([ProductSim(SECRET)]) as running:
        yield running


@pytest.fixture
def product(sim: Simulator) -> ProductSim:
    sim.reset()
    simulated = cast(ProductSim, sim.vendor("webhook"))
    simulated.clear()
    simulated.signing_secrets = (SECRET,)
    return simulated


@pytest.fixture
def channel(sim: Simulator, product: ProductSim) -> Iterator[WebhookChannel]:
    built = WebhookChannel(sim.url("webhook"), SECRET, timeout=FAST)
    yield built
    built.close()


@pytest.fixture
def rewards(sim: Simulator, product: ProductSim) -> Iterator[WebhookRewards]:
    built = WebhookRewards(sim.url("webhook"), SECRET, timeout=FAST)
    yield built
    built.close()


def _wait_for(sim: Simulator, count: int, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while len(sim.received("webhook")) < count and time.monotonic() < deadline:
        time.sleep(0.02)


# --- signing and verifying ---------------------------------------------------


def test_a_signed_body_verifies_and_gives_its_time() -> None:
    header = sign([SECRET], BODY, NOW)

    assert header.startswith(f"t={int(NOW)},v1=")
    assert verify([SECRET], header, BODY, NOW + 10) == int(NOW)


def test_a_tampered_body_matches_no_signature() -> None:
    header = sign([SECRET], BODY, NOW)
    tampered = BODY.replace(b"42", b"43")

    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, tampered, NOW)

    assert caught.value.reason == "no_match"


def test_another_secret_matches_no_signature() -> None:
    header = sign([OLD_SECRET], BODY, NOW)

    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, BODY, NOW)

    assert caught.value.reason == "no_match"


@pytest.mark.parametrize(
    ("signed_at", "reason"),
    [(NOW - 301, "too_old"), (NOW + 301, "too_new")],
)
def test_a_signature_outside_the_tolerance_is_refused(
    signed_at: float, reason: str
) -> None:
    """A replay is refused after five minutes; so is a clock far ahead."""
    header = sign([SECRET], BODY, signed_at)

    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, BODY, NOW)

    assert caught.value.reason == reason
    assert "300 s" in str(caught.value)


@pytest.mark.parametrize("signed_at", [NOW - 300, NOW + 300])
def test_a_signature_at_the_edge_of_the_tolerance_verifies(signed_at: float) -> None:
    header = sign([SECRET], BODY, signed_at)

    assert verify([SECRET], header, BODY, NOW) == int(signed_at)


def test_during_a_rotation_either_side_may_switch_first() -> None:
    """referloop signs with the new and the old secret; a product holding either
    verifies, and a product holding both verifies a request signed with one."""
    both = sign([SECRET, OLD_SECRET], BODY, NOW)
    new_only = sign([SECRET], BODY, NOW)

    assert both.count("v1=") == 2
    assert verify([OLD_SECRET], both, BODY, NOW) == int(NOW)
    assert verify([SECRET], both, BODY, NOW) == int(NOW)
    assert verify([SECRET, OLD_SECRET], new_only, BODY, NOW) == int(NOW)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_says_so(header: str | None) -> None:
    with pytest.raises(SignatureError, match=SIGNATURE_HEADER) as caught:
        verify([SECRET], header, BODY, NOW)

    assert caught.value.reason == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=" + "a" * 64,
        "t=soon,v1=" + "a" * 64,
        "t=-5,v1=" + "a" * 64,
        f"t={int(NOW)},t={int(NOW)},v1=" + "a" * 64,
        f"t={int(NOW)}",
        f"t={int(NOW)},v1=nothex",
        f"t={int(NOW)},v1=" + "a" * 63,
        f"t={int(NOW)}," + ",".join(["v1=" + "a" * 64] * 20),
    ],
)
def test_a_malformed_header_is_refused_before_any_comparison(header: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, BODY, NOW)

    assert caught.value.reason == "malformed"


def test_other_schemes_in_the_header_are_skipped() -> None:
    """A later scheme (`v2=`) beside `v1=` does not break today's verifier."""
    header = sign([SECRET], BODY, NOW) + ",v2=something-else"

    assert verify([SECRET], header, BODY, NOW) == int(NOW)


def test_a_string_of_secrets_is_split_on_commas_never_into_characters() -> None:
    assert secret_list(f" {SECRET} , {OLD_SECRET} ,") == (SECRET, OLD_SECRET)
    assert secret_list(SECRET) == (SECRET,)
    assert verify(SECRET, sign(f"{SECRET},{OLD_SECRET}", BODY, NOW), BODY, NOW)


def test_no_secret_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRETS"):
        sign([], BODY, NOW)
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRETS"):
        verify(" , ", sign([SECRET], BODY, NOW), BODY, NOW)


def test_a_refusal_never_carries_a_secret_or_a_signature() -> None:
    header = sign([OLD_SECRET], BODY, NOW)

    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, BODY, NOW)

    said = str(caught.value)
    assert SECRET not in said
    assert OLD_SECRET not in said
    assert header.split("v1=")[1] not in said


@given(
    body=st.binary(max_size=512),
    secret=st.text(SECRET_CHARS, min_size=1, max_size=64),
    when=st.integers(min_value=0, max_value=2**34),
)
def test_any_body_signed_with_any_secret_verifies(
    body: bytes, secret: str, when: int
) -> None:
    header = sign([secret], body, when)

    assert verify([secret], header, body, when) == when


@given(
    body=st.binary(min_size=1, max_size=256),
    at=st.integers(min_value=0),
    change=st.integers(min_value=1, max_value=255),
)
def test_any_changed_byte_of_the_body_is_refused(
    body: bytes, at: int, change: int
) -> None:
    header = sign([SECRET], body, NOW)
    index = at % len(body)
    changed = bytearray(body)
    changed[index] = (changed[index] + change) % 256

    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, bytes(changed), NOW)

    assert caught.value.reason == "no_match"


@given(header=st.text(max_size=300))
def test_any_header_a_stranger_writes_is_refused_with_a_reason(header: str) -> None:
    """Outside input never gets past `verify`, nor breaks it with another error."""
    with pytest.raises(SignatureError) as caught:
        verify([SECRET], header, BODY, NOW)

    assert caught.value.reason in {"missing", "malformed", "no_match"}


# --- grants over the wire ------------------------------------------------------


def test_a_grant_goes_over_the_wire_signed_with_its_key(
    rewards: WebhookRewards, sim: Simulator, product: ProductSim
) -> None:
    sent = rewards.grant(GRANT)

    [received] = sim.received("webhook", "/grants")
    request = received.request
    assert request.method == "POST"
    assert request.header(IDEMPOTENCY_HEADER) == GRANT.idempotency_key
    assert request.header("content-type") == "application/json"
    signature = request.header(SIGNATURE_HEADER)
    assert verify([SECRET], signature, request.body, time.time())
    assert request.json == dataclasses.asdict(GRANT)
    assert product.grants == [dataclasses.asdict(GRANT)]
    assert sent.vendor_id == "grant-1"


def test_a_repeated_grant_is_applied_once(
    rewards: WebhookRewards, sim: Simulator, product: ProductSim
) -> None:
    first = rewards.grant(GRANT)
    second = rewards.grant(GRANT)

    assert len(sim.received("webhook", "/grants")) == 2
    assert len(product.grants) == 1
    assert first == second


def test_a_grant_whose_answer_was_lost_is_sent_again_and_applied_once(
    rewards: WebhookRewards, sim: Simulator, product: ProductSim
) -> None:
    """The product applies the first request after the client gave up on it; the
    retry carries the same key, so the grant is given once and the send succeeds."""
    sim.fault("webhook", Fault.slow(0.8), times=1)

    sent = rewards.grant(GRANT)
    _wait_for(sim, 2)

    keys = {item.request.header(IDEMPOTENCY_HEADER) for item in sim.received()}
    assert keys == {GRANT.idempotency_key}
    assert [item.status for item in sim.received()] == [201, 201]
    assert len(product.grants) == 1
    assert sent.vendor_id == "grant-1"


def test_a_grant_to_a_product_holding_another_secret_names_the_setting(
    sim: Simulator, product: ProductSim
) -> None:
    rewards = WebhookRewards(sim.url("webhook"), OLD_SECRET, timeout=FAST)

    with pytest.raises(PermanentError, match="WEBHOOK_SECRETS") as caught:
        rewards.grant(GRANT)
    rewards.close()

    assert caught.value.status == 401
    assert sim.received()[0].status == 401
    assert product.grants == []


# --- nudges over the wire ------------------------------------------------------


def test_a_nudge_goes_over_the_wire_as_it_was_built(
    channel: WebhookChannel, sim: Simulator, product: ProductSim, nudge: NudgeFactory
) -> None:
    sample = nudge(REFERENCE)
    built = channel.build_request(sample)

    sent = channel.send(sample)

    [received] = sim.received("webhook", "/nudges")
    request = received.request
    assert built.url == sim.url("webhook") + "/nudges"
    assert request.json == built.json
    assert request.header(IDEMPOTENCY_HEADER) == sample.delivery_key
    assert verify([SECRET], request.header(SIGNATURE_HEADER), request.body, time.time())
    assert product.nudges[0]["topic"] == "invite-reviewers"
    assert product.nudges[0]["body"] == sample.body
    assert sent.vendor_id == "nudge-1"


def test_a_nudge_sent_twice_is_shown_once(
    channel: WebhookChannel, sim: Simulator, product: ProductSim, nudge: NudgeFactory
) -> None:
    channel.send(nudge(REFERENCE))
    channel.send(nudge(REFERENCE))

    assert len(sim.received("webhook", "/nudges")) == 2
    assert sim.received()[1].status == 202
    assert len(product.nudges) == 1


def test_a_nudge_carries_ids_never_the_email(
    channel: WebhookChannel, nudge: NudgeFactory
) -> None:
    """The product knows its users; an email would only widen where it travels."""
    request = channel.build_request(nudge(REFERENCE))

    assert SAMPLE_EMAIL not in json.dumps(request.json)
    assert request.json["user_id"] == "user-42"
    assert request.json["account_id"] == "acct-7"


def test_a_preview_needs_no_settings_and_holds_no_signature(
    nudge: NudgeFactory,
) -> None:
    sample = nudge(REFERENCE)

    request = WebhookChannel().build_request(sample)

    assert request.url == "https://product.invalid/nudges"
    assert request.headers[SIGNATURE_HEADER] == SECURE
    assert request.headers[IDEMPOTENCY_HEADER] == sample.delivery_key


def test_a_nudge_without_a_reference_names_the_playbook_key(
    channel: WebhookChannel, nudge: NudgeFactory
) -> None:
    with pytest.raises(ConfigurationError, match=r"nudge\.webhook"):
        channel.build_request(nudge(None))


def test_sending_without_a_base_url_names_the_setting(nudge: NudgeFactory) -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_BASE_URL"):
        WebhookChannel(signing_secrets=SECRET).send(nudge(REFERENCE))


def test_a_topic_is_a_short_token() -> None:
    with pytest.raises(ValueError, match="topic"):
        WebhookReference(topic="invite reviewers now")


def test_both_adapters_meet_the_engine_protocols() -> None:
    channel, rewards = WebhookChannel(), WebhookRewards()

    assert isinstance(channel, Channel)
    assert isinstance(channel, Sender)
    assert isinstance(rewards, RewardTarget)


# --- answers mapped to errors ----------------------------------------------------


def test_a_5xx_is_transient_after_the_quick_retries(
    rewards: WebhookRewards, sim: Simulator
) -> None:
    """The key makes a repeat harmless, so a 5xx is retried on the spot first."""
    sim.fault("webhook", Fault.answer(503))

    with pytest.raises(TransientError, match="503"):
        rewards.grant(GRANT)

    assert len(sim.received("webhook")) == QUICK_ATTEMPTS


def test_a_5xx_once_is_absorbed_by_a_quick_retry(
    rewards: WebhookRewards, sim: Simulator, product: ProductSim
) -> None:
    sim.fault("webhook", Fault.answer(502), times=1)

    sent = rewards.grant(GRANT)

    assert sent.vendor_id == "grant-1"
    assert len(product.grants) == 1


def test_a_429_is_transient_with_the_wait_asked_for(
    channel: WebhookChannel, sim: Simulator, nudge: NudgeFactory
) -> None:
    sim.fault("webhook", Fault.rate_limited(7), times=1)

    with pytest.raises(TransientError) as caught:
        channel.send(nudge(REFERENCE))

    assert caught.value.retry_after_s == 7
    assert len(sim.received("webhook")) == 1


@pytest.mark.parametrize("fault", [Fault.hang(1), Fault.reset()])
def test_no_answer_is_transient_not_ambiguous(
    rewards: WebhookRewards, sim: Simulator, fault: Fault
) -> None:
    """A grant that may have been applied is sent again safely: the key dedupes."""
    sim.fault("webhook", fault)

    with pytest.raises(TransientError, match="no answer") as caught:
        rewards.grant(GRANT)

    assert not isinstance(caught.value, AmbiguousError)
    assert len(sim.received("webhook")) == QUICK_ATTEMPTS


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_are_permanent_with_their_status(
    channel: WebhookChannel, sim: Simulator, nudge: NudgeFactory, status: int
) -> None:
    sim.fault("webhook", Fault.answer(status), times=1)

    with pytest.raises(PermanentError) as caught:
        channel.send(nudge(REFERENCE))

    assert caught.value.status == status
    assert caught.value.__cause__ is None


def test_a_budget_paces_sends_and_is_shared_in_redis(
    sim: Simulator, product: ProductSim, store: Store, nudge: NudgeFactory
) -> None:
    budget = Cap(10, timedelta(seconds=1))
    channel = WebhookChannel(
        sim.url("webhook"), SECRET, store=store, budgets={NUDGES_BUDGET: budget}
    )

    started = time.monotonic()
    for index in range(5):
        channel.send(nudge(REFERENCE, delivery_key=f"dk_paced_{index}"))
    elapsed_s = time.monotonic() - started
    channel.close()

    assert elapsed_s >= 0.39
    assert len(product.nudges) == 5
    assert store.redis.exists(store.key("budget", NUDGES_BUDGET))


def test_an_unknown_budget_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no budget webhook:nudge;"):
        WebhookChannel(budgets={"webhook:nudge": Cap(1, timedelta(seconds=1))})


def test_no_secret_or_body_reaches_a_log_an_error_or_a_preview(
    sim: Simulator,
    product: ProductSim,
    nudge: NudgeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sample = nudge(REFERENCE)
    channel = WebhookChannel(sim.url("webhook"), [SECRET, OLD_SECRET], timeout=FAST)
    preview = json.dumps(dataclasses.asdict(channel.build_request(sample)))
    messages = []
    channel.send(sample)
    for fault in (Fault.answer(400), Fault.rate_limited(1), Fault.hang(1)):
        sim.fault("webhook", fault)
        with pytest.raises((PermanentError, TransientError)) as caught:
            channel.send(nudge(REFERENCE, delivery_key="dk_failing"))
        messages.append(str(caught.value))
        sim.clear_faults()
    product.signing_secrets = ("a-secret-the-product-holds-and-we-do-not",)
    with pytest.raises(PermanentError) as refused:
        channel.send(nudge(REFERENCE, delivery_key="dk_refused"))
    messages.append(str(refused.value))
    channel.close()

    said = "\n".join(messages + [record.getMessage() for record in caplog.records])
    wire = json.dumps([dict(item.request.headers) for item in sim.received()])
    for private in (SECRET, OLD_SECRET, SAMPLE_EMAIL, sample.body):
        assert private not in said
    for secret in (SECRET, OLD_SECRET):
        assert secret not in preview
        assert secret not in wire


# --- the simulated product -----------------------------------------------------


def _post(
    sim: Simulator, headers: dict[str, str], body: bytes = BODY
) -> httpx.Response:
    url = sim.url("webhook") + "/grants"
    return httpx.post(url, content=body, headers=headers, timeout=2)


def test_the_product_refuses_a_bad_signature_with_the_reason(
    sim: Simulator, product: ProductSim
) -> None:
    stale = sign([SECRET], BODY, time.time() - 900)
    forged = sign([OLD_SECRET], BODY, time.time())

    answers = [
        _post(sim, {IDEMPOTENCY_HEADER: "k1"}),
        _post(sim, {IDEMPOTENCY_HEADER: "k2", SIGNATURE_HEADER: stale}),
        _post(sim, {IDEMPOTENCY_HEADER: "k3", SIGNATURE_HEADER: forged}),
    ]

    assert [answer.status_code for answer in answers] == [401, 401, 401]
    reasons = [answer.json()["reason"] for answer in answers]
    assert reasons == ["missing", "too_old", "no_match"]
    assert product.grants == []


def test_the_product_refuses_a_reused_key_with_another_body(
    sim: Simulator, product: ProductSim
) -> None:
    grant = json.dumps(dataclasses.asdict(GRANT)).encode()
    other = json.dumps({**dataclasses.asdict(GRANT), "amount": 30}).encode()

    def post(body: bytes) -> httpx.Response:
        signature = sign([SECRET], body, time.time())
        headers = {IDEMPOTENCY_HEADER: "k1", SIGNATURE_HEADER: signature}
        return _post(sim, headers, body)

    first, again, changed = post(grant), post(grant), post(other)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert changed.status_code == 422
    assert len(product.grants) == 1


def test_the_product_wants_an_idempotency_key(
    sim: Simulator, product: ProductSim
) -> None:
    body = json.dumps(dataclasses.asdict(GRANT)).encode()
    headers = {SIGNATURE_HEADER: sign([SECRET], body, time.time())}

    answer = _post(sim, headers, body)

    assert answer.status_code == 400
    assert product.grants == []


# --- doctor ----------------------------------------------------------------------


def test_check_signs_a_request_to_the_health_path_with_each_secret(
    channel: WebhookChannel, sim: Simulator
) -> None:
    checks = channel.check()

    assert [check.ok for check in checks] == [True]
    [probe] = sim.received("webhook", "/health")
    assert probe.request.method == "GET"
    assert verify([SECRET], probe.request.header(SIGNATURE_HEADER), b"", time.time())


def test_check_during_a_rotation_passes_when_one_secret_is_accepted(
    sim: Simulator, product: ProductSim
) -> None:
    product.signing_secrets = (OLD_SECRET,)
    channel = WebhookChannel(sim.url("webhook"), [SECRET, OLD_SECRET])

    checks = channel.check()
    channel.close()

    assert [check.ok for check in checks] == [True, True]
    assert "rotation" in checks[0].detail
    assert len(sim.received("webhook", "/health")) == 2


def test_check_names_the_setting_when_the_product_refuses_the_secret(
    sim: Simulator, product: ProductSim
) -> None:
    channel = WebhookChannel(sim.url("webhook"), OLD_SECRET)

    [check] = channel.check()
    channel.close()

    assert not check.ok
    assert "WEBHOOK_SECRETS" in check.what
    assert "401" in check.detail
    assert OLD_SECRET not in check.detail


def test_check_reports_missing_settings_without_calling(sim: Simulator) -> None:
    sim.reset()

    checks = WebhookRewards().check()

    assert {check.what for check in checks} == {"WEBHOOK_BASE_URL", "WEBHOOK_SECRETS"}
    assert not any(check.ok for check in checks)
    assert sim.received() == []


@pytest.mark.parametrize(
    ("base_url", "secret", "says"),
    [
        ("http://product.example.com/referloop", SECRET, "https"),
        ("product.example.com", SECRET, "not a URL"),
        ("https://product.example.com/referloop?key=1", SECRET, "query"),
        ("https://product.example.com/referloop", "s3kr1t", "shorter than 32"),
    ],
)
def test_check_refuses_unsafe_settings_without_calling(
    base_url: str, secret: str, says: str
) -> None:
    [check] = WebhookChannel(base_url, secret).check()

    assert not check.ok
    assert says in check.detail
    assert secret not in check.detail


def test_check_says_when_the_health_path_is_not_answered(
    sim: Simulator, product: ProductSim
) -> None:
    channel = WebhookChannel(sim.url("webhook"), SECRET, health_path="/status")

    [check] = channel.check()
    channel.close()

    assert not check.ok
    assert "404" in check.detail
    assert "WEBHOOK_HEALTH_PATH" in check.detail


def test_check_says_when_the_product_is_unreachable() -> None:
    with Simulator([ProductSim(SECRET)]) as gone:
        url = gone.url("webhook")
    channel = WebhookChannel(url, SECRET, timeout=FAST)

    [check] = channel.check()
    channel.close()

    assert not check.ok
    assert "unreachable" in check.detail


# --- conformance -----------------------------------------------------------------


def test_the_conformance_case_sends_to_the_simulated_product(
    sim: Simulator, product: ProductSim, store: Store
) -> None:
    """The product simulator verifies with the conformance secret by default."""
    product.signing_secrets = ProductSim().signing_secrets
    budget = Cap(50, timedelta(seconds=1))

    [case] = WebhookChannel.conformance_cases(sim.url("webhook"), store, budget)
    assert isinstance(case.sender, WebhookChannel)
    sent = case.sender.send(case.nudge)
    case.sender.close()

    assert case.dedupes
    assert case.secrets == (CONFORMANCE_SECRET,)
    [received] = sim.received("webhook", "/nudges")
    signature = received.request.header(SIGNATURE_HEADER)
    assert verify([CONFORMANCE_SECRET], signature, received.request.body, time.time())
    assert sent.vendor_id == "nudge-1"
    assert store.redis.exists(store.key("budget", NUDGES_BUDGET))

"""The Intercom sender over real HTTP, against the simulated Intercom (API 2.14).

What went over the wire is checked against Intercom's own OpenAPI document: the
contact search, the admin-initiated message and the data event.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.base import LoopEvent, Sent
from integrations.intercom import (
    API_BUDGET,
    API_VERSION,
    CONTACT_TTL_S,
    DEFAULT_BUDGETS,
    IntercomReference,
    IntercomSender,
)
from orchestrator.budgets import Budget
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap
from simulator import Fault, Limit, Simulator
from simulator.intercom import IntercomSim, derived_contact_id
from tests.integrations.conftest import SAMPLE_EMAIL, NudgeFactory
from tests.integrations.openapi import (
    body_validator,
    load_spec,
    parameter_names,
    schema_validator,
)

TOKEN = "dG9rOmludGVyY29tLXRlc3QtZG8tbm90LWxvZw=="
CONTACT_ID = "6762f2341bb69f9f2193bc17"
ADMIN_ID = 394051
SHORT = httpx.Timeout(0.5, connect=0.5)
IN_APP = IntercomReference(from_admin=ADMIN_ID)
EMAIL = IntercomReference(message_type="email", from_admin=ADMIN_ID)

SenderFactory = Callable[..., IntercomSender]


@pytest.fixture(scope="module")
def spec(specs_dir: Path) -> dict[str, Any]:
    """Intercom's OpenAPI document for the version the sender names."""
    return load_spec(specs_dir / "intercom" / f"api.intercom.io.{API_VERSION}.yaml")


@pytest.fixture(scope="module")
def running() -> Iterator[Simulator]:
    with Simulator([IntercomSim(token=TOKEN)]) as started:
        yield started


@pytest.fixture
def sim(running: Simulator) -> Simulator:
    """The simulator, with nothing received, no faults and Intercom's own limits."""
    vendor = intercom_of(running)
    running.reset()
    running.set_limits("intercom", vendor.limits())
    vendor.clear()
    vendor.add_contact("user-42", CONTACT_ID)
    return running


@pytest.fixture
def sender(sim: Simulator) -> Iterator[SenderFactory]:
    """Build senders against the simulator (short timeouts); closed afterwards."""
    built: list[IntercomSender] = []

    def build(**settings: Any) -> IntercomSender:
        settings.setdefault("timeout", SHORT)
        made = IntercomSender(
            settings.pop("token", TOKEN), base_url=sim.url("intercom"), **settings
        )
        built.append(made)
        return made

    yield build
    for made in built:
        made.close()


def intercom_of(sim: Simulator) -> IntercomSim:
    vendor = sim.vendor("intercom")
    assert isinstance(vendor, IntercomSim)
    return vendor


def paths(sim: Simulator) -> list[str]:
    return [item.path for item in sim.received("intercom")]


def loop_event(user_id: str = "user-42", **properties: Any) -> LoopEvent:
    return LoopEvent(
        insert_id=f"pack-reviewers:ask:{user_id}:sent",
        name="referloop nudge sent",
        user_id=user_id,
        time=datetime(2026, 5, 1, 9, 30, 15, 250_000, tzinfo=UTC),
        properties={"playbook": "pack-reviewers", "step": "ask", **properties},
    )


# --- sending --------------------------------------------------------------------------


def test_a_send_finds_the_contact_then_messages_it(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, spec: dict[str, Any]
) -> None:
    """The contact is searched by external_id, then the message goes to its id;
    both bodies are what Intercom 2.14 documents."""
    sent = sender().send(nudge(IN_APP))

    search, message = sim.received("intercom")
    assert [search.path, message.path] == ["/contacts/search", "/messages"]
    body_validator(spec, "/contacts/search", "post").validate(search.json)
    assert search.json["query"] == {
        "field": "external_id",
        "operator": "=",
        "value": "user-42",
    }
    schema_validator(spec, "create_message_request").validate(message.json)
    assert message.json["to"] == {"type": "user", "id": CONTACT_ID}
    assert message.json["message_type"] == "in_app"
    assert sent.vendor_id in intercom_of(sim).messages


def test_an_email_carries_its_subject_and_template(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, spec: dict[str, Any]
) -> None:
    """An email is a valid `create_message_request` with the rendered subject."""
    sample = nudge(EMAIL, subject="Invite your reviewers")

    sender().send(sample)

    message = sim.received("intercom", "/messages")[0].json
    schema_validator(spec, "create_message_request").validate(message)
    assert message["subject"] == "Invite your reviewers"
    assert message["template"] == "personal"
    assert message["body"] == sample.body
    assert message["from"] == {"type": "admin", "id": ADMIN_ID}


def test_the_sent_id_is_the_id_intercom_gave_the_message(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """`Sent.vendor_id` is the id of the message Intercom took."""
    sent = sender().send(nudge(IN_APP))

    taken = intercom_of(sim).messages
    assert sent.vendor_id is not None
    assert list(taken) == [sent.vendor_id]
    assert taken[sent.vendor_id]["to"]["id"] == CONTACT_ID


def test_every_request_names_the_api_version_and_the_token(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, spec: dict[str, Any]
) -> None:
    """The search, the message, the event and the check all say `2.14`."""
    built = sender()

    built.send(nudge(IN_APP))
    built.record([loop_event()])
    built.check()

    received = sim.received("intercom")
    assert paths(sim) == ["/contacts/search", "/messages", "/events", "/me"]
    assert {item.request.header("intercom-version") for item in received} == {
        API_VERSION
    }
    assert {item.request.header("authorization") for item in received} == {
        f"Bearer {TOKEN}"
    }
    for path, method in [
        ("/contacts/search", "post"),
        ("/messages", "post"),
        ("/events", "post"),
        ("/me", "get"),
    ]:
        assert "Intercom-Version" in parameter_names(spec, path, method)


def test_the_simulator_refuses_a_request_without_the_version(sim: Simulator) -> None:
    """Intercom would fall back to the app's version; the simulator says so."""
    answer = httpx.get(
        f"{sim.url('intercom')}/me", headers={"Authorization": f"Bearer {TOKEN}"}
    )

    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "intercom_version_invalid"


def test_the_preview_still_carries_no_token(
    sender: SenderFactory, nudge: NudgeFactory
) -> None:
    """`build_request` stays pure: the placeholder contact, `[secure]` auth."""
    request = sender().build_request(nudge(IN_APP))

    shown = json.dumps(dataclasses.asdict(request), default=str)
    assert TOKEN not in shown
    assert request.headers["Authorization"] == "[secure]"
    assert request.json["to"]["id"] == "contact:external_id=user-42"


# --- the contact cache ----------------------------------------------------------------


def test_a_second_send_to_the_same_user_makes_no_search(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Without a store, the process remembers the contact."""
    built = sender()

    built.send(nudge(IN_APP))
    built.send(nudge(IN_APP, delivery_key="pack-reviewers:ask:user-42:2026-05-02"))

    assert paths(sim) == ["/contacts/search", "/messages", "/messages"]


def test_another_process_with_the_same_redis_makes_no_search(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, store: Store
) -> None:
    """A worker that never met the user reads the contact another worker found."""
    sender(store=store).send(nudge(IN_APP))
    sim.reset()

    sender(store=store).send(nudge(IN_APP))

    assert paths(sim) == ["/messages"]
    key = store.key("intercom", "contact", "user-42")
    assert store.redis.get(key) == CONTACT_ID
    assert CONTACT_TTL_S - 60 < store.redis.ttl(key) <= CONTACT_TTL_S


def test_a_user_with_no_contact_is_permanent_and_named_by_id(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Intercom cannot message a user it does not know; nothing is sent."""
    intercom_of(sim).remove_contact("user-9")

    with pytest.raises(PermanentError, match="user user-9 has no Intercom contact"):
        sender().send(nudge(IN_APP, user_id="user-9"))

    assert paths(sim) == ["/contacts/search"]


def test_the_error_for_a_missing_contact_never_names_the_email(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """The user is named by id only."""
    intercom_of(sim).remove_contact("user-9")

    with pytest.raises(PermanentError) as raised:
        sender().send(nudge(IN_APP, user_id="user-9"))

    assert SAMPLE_EMAIL not in str(raised.value)


def test_a_contact_gone_since_the_lookup_is_forgotten(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, store: Store
) -> None:
    """A 404 to the message drops the cached id, so the next try searches again."""
    built = sender(store=store)
    built.send(nudge(IN_APP))
    intercom_of(sim).remove_contact("user-42")

    with pytest.raises(PermanentError) as raised:
        built.send(nudge(IN_APP))
    intercom_of(sim).add_contact("user-42", "5ba682d23d7cf92bef87bfd4")
    sim.reset()
    built.send(nudge(IN_APP))

    assert raised.value.status == 404
    assert paths(sim) == ["/contacts/search", "/messages"]
    last = list(intercom_of(sim).messages.values())[-1]
    assert last["to"]["id"] == "5ba682d23d7cf92bef87bfd4"


def test_a_known_contact_id_can_be_given_ahead(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """A contact id known from elsewhere spares the search."""
    built = sender()

    built.remember_contact("user-42", CONTACT_ID)
    built.send(nudge(IN_APP))

    assert paths(sim) == ["/messages"]


def test_a_user_without_a_cached_contact_gets_its_own(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Every user of the product has a contact in the simulator unless taken away."""
    sent = sender().send(nudge(IN_APP, user_id="user-77"))

    taken = intercom_of(sim).messages[str(sent.vendor_id)]
    assert taken["to"]["id"] == derived_contact_id("user-77")


# --- how answers map to errors --------------------------------------------------------


def test_the_sdk_does_not_retry_a_503_to_a_send(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """The SDK would repeat a 5xx on its own; ours decide, and a send is not
    repeated on the spot."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.answer(503))

    with pytest.raises(TransientError, match="503"):
        built.send(nudge(IN_APP))

    assert paths(sim) == ["/messages"]


def test_the_sdk_does_not_retry_a_429(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """A 429 goes back to the engine with the wait; the SDK does not repeat it."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.answer(429))

    with pytest.raises(TransientError, match="429"):
        built.send(nudge(IN_APP))

    assert paths(sim) == ["/messages"]


def test_a_5xx_to_the_search_is_tried_again_at_once(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """A search is a read: our quick retries repeat it, a bounded few times."""
    sim.fault("intercom", Fault.answer(502), times=1)

    sender().send(nudge(IN_APP))

    assert paths(sim) == ["/contacts/search", "/contacts/search", "/messages"]


def test_a_search_that_keeps_failing_is_transient_after_three_tries(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Quick retries are few; the engine's retries take over."""
    sim.fault("intercom", Fault.answer(503))

    with pytest.raises(TransientError, match="POST /contacts/search: answered 503"):
        sender().send(nudge(IN_APP))

    assert paths(sim) == ["/contacts/search"] * 3


def test_a_429_waits_until_the_reset_and_holds_the_budget_off(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, store: Store
) -> None:
    """`X-RateLimit-Reset` is Unix seconds; every worker waits that long."""
    built = sender(store=store)
    built.remember_contact("user-42", CONTACT_ID)
    reset = int(time.time()) + 6
    headers = {"X-RateLimit-Reset": str(reset), "X-RateLimit-Remaining": "0"}
    sim.fault("intercom", Fault.answer(429, headers=headers), times=1)

    with pytest.raises(TransientError, match="rate limited") as raised:
        built.send(nudge(IN_APP))

    assert 4 < (raised.value.retry_after_s or 0) <= 6
    budget = Budget(store, API_BUDGET, DEFAULT_BUDGETS[API_BUDGET])
    assert budget.reserve(0).wait_ms > 3_500


def test_the_app_limit_of_the_simulator_answers_429_with_a_reset(
    sender: SenderFactory, sim: Simulator
) -> None:
    """Past the window's count, Intercom's 429 says when the window resets."""
    sim.set_limits("intercom", [Limit("app", count=2, window_s=10)])
    built = sender()

    built.record([loop_event(), loop_event()])
    with pytest.raises(TransientError) as raised:
        built.record([loop_event()])

    assert [item.status for item in sim.received("intercom")] == [202, 202, 429]
    assert 8 < (raised.value.retry_after_s or 0) <= 11


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_a_5xx_to_a_send_is_transient(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, status: int
) -> None:
    """A 5xx or 408 to a send is transient and never repeated on the spot."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.answer(status), times=1)

    with pytest.raises(TransientError, match=str(status)) as raised:
        built.send(nudge(IN_APP))

    assert len(sim.received("intercom", "/messages")) == 1
    # The answer carries the window's X-RateLimit-Reset: not a wait asked for.
    assert raised.value.retry_after_s is None


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_another_4xx_to_a_send_is_permanent_with_its_status(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, status: int
) -> None:
    """Intercom refused the message: it will refuse it again."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.answer(status), times=1)

    with pytest.raises(PermanentError) as raised:
        built.send(nudge(IN_APP))

    assert raised.value.status == status


def test_a_refused_token_is_permanent_and_says_what_to_check(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """A 401 to the first call (the search) stops the send."""
    with pytest.raises(PermanentError, match="credentials refused") as raised:
        sender(token="not-the-token").send(nudge(IN_APP))

    assert raised.value.status == 401
    assert paths(sim) == ["/contacts/search"]


def test_the_simulator_refuses_an_email_without_a_subject_as_intercom_does(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Intercom answers 422 `parameter_not_found` to an email with no subject."""
    body = dict(sender().build_request(nudge(EMAIL)).json)
    del body["subject"]

    answer = httpx.post(
        f"{sim.url('intercom')}/messages",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Intercom-Version": "2.14"},
    )

    assert answer.status_code == 422
    assert answer.json()["errors"][0]["code"] == "parameter_not_found"


def test_a_send_left_unanswered_is_ambiguous(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Intercom takes no idempotency key: a lost answer may hide a sent message."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.hang(1.5), times=1)

    with pytest.raises(AmbiguousError, match="POST /messages: no answer"):
        built.send(nudge(IN_APP))

    assert paths(sim) == ["/messages"]


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.garbage()])
def test_a_dropped_or_garbled_answer_to_a_send_is_ambiguous(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, fault: Fault
) -> None:
    """A reset or garbage after the send went out is ambiguous too."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", fault, times=1)

    with pytest.raises(AmbiguousError):
        built.send(nudge(IN_APP))


def test_a_broken_body_on_a_2xx_still_counts_as_sent(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory
) -> None:
    """Intercom took the message even if its answer cannot be read."""
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    sim.fault("intercom", Fault.broken_json(), times=1)

    assert built.send(nudge(IN_APP)) == Sent(vendor_id=None)


def test_nobody_listening_is_transient_after_quick_retries(
    nudge: NudgeFactory,
) -> None:
    """Nothing reached Intercom, so trying again later is safe."""
    with Simulator([IntercomSim()]) as gone:
        url = gone.url("intercom")
    built = IntercomSender(TOKEN, base_url=url, timeout=SHORT)

    started = time.monotonic()
    with pytest.raises(TransientError, match="could not reach"):
        built.send(nudge(IN_APP))
    built.close()

    assert time.monotonic() - started < 5


# --- the budget -----------------------------------------------------------------------


def test_a_budget_of_5_a_second_paces_the_calls(
    sender: SenderFactory, sim: Simulator, store: Store
) -> None:
    """Six calls under `5 per 1s` take a second, and Intercom, held to about the
    same limit, never answers 429."""
    # A little under a second at the vendor: the first call also opens the
    # connection, so it may arrive later after its slot than the others.
    sim.set_limits("intercom", [Limit("app", count=5, window_s=0.9)])
    built = sender(store=store, budgets={API_BUDGET: parse_cap("5 per 1s")})

    started = time.monotonic()
    built.record([loop_event(step=str(n)) for n in range(6)])
    elapsed = time.monotonic() - started

    assert elapsed >= 0.95
    assert [item.status for item in sim.received("intercom")] == [202] * 6


def test_the_budget_covers_the_search_too(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, store: Store
) -> None:
    """A send that needs a search takes two slots."""
    built = sender(store=store, budgets={API_BUDGET: parse_cap("1 per 1h")})

    with pytest.raises(TransientError, match="budget") as raised:
        built.send(nudge(IN_APP))

    assert paths(sim) == ["/contacts/search"]
    assert 3_500 < (raised.value.retry_after_s or 0) <= 3_600


def test_an_unknown_budget_name_is_a_configuration_error() -> None:
    """A misspelt budget name is reported, not ignored."""
    with pytest.raises(ConfigurationError, match="intercom:messages"):
        IntercomSender(TOKEN, budgets={"intercom:messages": Cap(1, timedelta(1))})


def test_an_empty_token_is_a_configuration_error() -> None:
    """The error names the setting, never a value."""
    with pytest.raises(ConfigurationError, match="INTERCOM_ACCESS_TOKEN"):
        IntercomSender("")


# --- data events ----------------------------------------------------------------------


def test_loop_events_are_data_events_as_intercom_documents(
    sender: SenderFactory, sim: Simulator, spec: dict[str, Any]
) -> None:
    """User id, event name, whole seconds and metadata of strings."""
    event = loop_event(attempt=2, holdout=False)

    sender().record([event])

    sent = sim.received("intercom", "/events")[0]
    body_validator(spec, "/events", "post").validate(sent.json)
    assert sent.status == 202
    assert sent.json == {
        "user_id": "user-42",
        "event_name": "referloop nudge sent",
        "created_at": int(event.time.timestamp()),
        "metadata": {
            "playbook": "pack-reviewers",
            "step": "ask",
            "attempt": "2",
            "holdout": "false",
        },
    }


def test_an_event_resent_counts_once_at_intercom(
    sender: SenderFactory, sim: Simulator
) -> None:
    """Intercom dedupes by user, name and second, so a batch may go again whole."""
    built = sender()

    built.record([loop_event()])
    built.record([loop_event()])

    assert len(sim.received("intercom", "/events")) == 2
    assert len(intercom_of(sim).events) == 1


def test_an_event_about_an_unknown_user_is_left_out_and_the_rest_go(
    sender: SenderFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Intercom answers 404 for a user it does not know; one such event does
    not hold back the batch."""
    intercom_of(sim).remove_contact("user-9")

    sender().record([loop_event("user-9"), loop_event("user-42")])

    assert [item.status for item in sim.received("intercom", "/events")] == [404, 202]
    assert [event["user_id"] for event in intercom_of(sim).events] == ["user-42"]
    assert "user-9" in caplog.text


def test_intercom_keeps_ten_metadata_keys_so_ten_are_sent(
    sender: SenderFactory, sim: Simulator
) -> None:
    """Intercom ignores metadata keys past the tenth; they are not sent."""
    many = {f"key_{n}": n for n in range(12)}

    sender().record([loop_event(**many)])

    metadata = sim.received("intercom", "/events")[0].json["metadata"]
    assert list(metadata) == ["playbook", "step", *[f"key_{n}" for n in range(8)]]


def test_a_refused_token_stops_the_batch(sender: SenderFactory, sim: Simulator) -> None:
    """A refusal that every event would meet ends the batch at once."""
    with pytest.raises(PermanentError) as raised:
        sender(token="not-the-token").record([loop_event(), loop_event("user-7")])

    assert raised.value.status == 401
    assert len(sim.received("intercom", "/events")) == 1


# --- doctor ---------------------------------------------------------------------------


def test_check_says_the_token_works_and_names_the_workspace(
    sender: SenderFactory, sim: Simulator
) -> None:
    """`doctor` reads `GET /me` and shows the workspace, not the admin."""
    (check,) = sender().check()

    assert check.ok
    assert check.vendor == "intercom"
    assert "simapp01" in check.detail
    assert "sam.teammate@example.com" not in check.detail
    assert [(item.request.method, item.path) for item in sim.received()] == [
        ("GET", "/me")
    ]


def test_check_with_a_refused_token_says_which_setting_to_fix(
    sender: SenderFactory,
) -> None:
    """A refused token names the setting to fix and never the token."""
    (check,) = sender(token="not-the-token").check()

    assert not check.ok
    assert "INTERCOM_ACCESS_TOKEN" in check.detail
    assert "not-the-token" not in check.detail


def test_check_with_a_forbidden_token_says_what_is_missing(
    sender: SenderFactory, sim: Simulator
) -> None:
    """A 403 is a token that works but may not do this: a permission or the plan."""
    sim.fault("intercom", Fault.answer(403), times=1)

    (check,) = sender().check()

    assert not check.ok
    assert "not permitted (403)" in check.detail
    assert len(sim.received("intercom")) == 1


def test_check_of_an_unreachable_intercom_is_not_ok() -> None:
    """An Intercom nobody answers for is reported, not raised."""
    with Simulator([IntercomSim()]) as gone:
        url = gone.url("intercom")
    built = IntercomSender(TOKEN, base_url=url, timeout=SHORT)

    (check,) = built.check()
    built.close()

    assert not check.ok
    assert "could not reach" in check.detail


# --- what the simulator answers -------------------------------------------------------


def test_error_answers_are_intercoms_error_list(
    sim: Simulator, spec: dict[str, Any]
) -> None:
    """Errors are `error.list` bodies; unauthenticated answers carry no rate
    headers."""
    errors = schema_validator(spec, "error")
    headers = {"Intercom-Version": API_VERSION}

    refused = httpx.get(f"{sim.url('intercom')}/me", headers=headers)
    sim.fault("intercom", Fault.answer(503), times=1)
    failed = httpx.get(
        f"{sim.url('intercom')}/me",
        headers={**headers, "Authorization": f"Bearer {TOKEN}"},
    )

    for answer in (refused, failed):
        errors.validate(answer.json())
    assert refused.json()["errors"][0] == {
        "code": "unauthorized",
        "message": "Access Token Invalid",
    }
    assert "X-RateLimit-Limit" not in refused.headers


def test_answers_carry_the_rate_headers_of_the_window(sim: Simulator) -> None:
    """Each answer says the window's limit, what is left and when it resets."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Intercom-Version": API_VERSION}

    first = httpx.get(f"{sim.url('intercom')}/me", headers=headers)
    second = httpx.get(f"{sim.url('intercom')}/me", headers=headers)

    assert first.headers["X-RateLimit-Limit"] == "1667"
    assert first.headers["X-RateLimit-Remaining"] == "1666"
    # 1666 again when a new 10-second window began between the two
    assert second.headers["X-RateLimit-Remaining"] in ("1665", "1666")
    reset = int(second.headers["X-RateLimit-Reset"])
    assert 0 < reset - time.time() <= 10


def test_me_answers_an_admin_with_its_app(sim: Simulator, spec: dict[str, Any]) -> None:
    """`GET /me` answers an `admin_with_app`, as the 2.14 document gives it."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Intercom-Version": API_VERSION}

    answer = httpx.get(f"{sim.url('intercom')}/me", headers=headers)

    schema_validator(spec, "admin_with_app").validate(answer.json())
    assert answer.json()["app"]["id_code"] == "simapp01"


def test_a_message_answer_is_intercoms_message(
    sender: SenderFactory, sim: Simulator, nudge: NudgeFactory, spec: dict[str, Any]
) -> None:
    """The answer to a message is a `message`, its in-app type spelt `inapp`."""
    sender().send(nudge(IN_APP))
    headers = {"Authorization": f"Bearer {TOKEN}", "Intercom-Version": API_VERSION}
    body = next(iter(intercom_of(sim).messages.values()))

    answer = httpx.post(f"{sim.url('intercom')}/messages", json=body, headers=headers)

    schema_validator(spec, "message").validate(answer.json())
    assert answer.json()["message_type"] == "inapp"


# --- nothing private leaves -----------------------------------------------------------


def test_no_error_or_log_line_carries_the_token_the_email_or_the_body(
    sender: SenderFactory,
    sim: Simulator,
    nudge: NudgeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SDK's own error text holds Intercom's body; none of it gets through."""
    caplog.set_level(logging.DEBUG)
    sample = nudge(EMAIL)
    echoed = {
        "type": "error.list",
        "errors": [{"code": "parameter_invalid", "message": sample.body}],
    }
    built = sender()
    built.remember_contact("user-42", CONTACT_ID)
    raised: list[VendorError] = []
    for fault in (
        Fault.answer(400, body=echoed),
        Fault.answer(422, body={"email": SAMPLE_EMAIL}),
        Fault.answer(429, body=echoed),
        Fault.answer(503, body=echoed),
        Fault.hang(1.5),
        Fault.garbage(),
    ):
        sim.fault("intercom", fault, times=3)
        with pytest.raises(VendorError) as caught:
            built.send(sample)
        sim.clear_faults()
        raised.append(caught.value)
    built.send(sample)
    built.check()

    said = [str(error) for error in raised] + [
        record.getMessage() for record in caplog.records
    ]
    text = "\n".join(said)
    for private in (TOKEN, SAMPLE_EMAIL, sample.body, "Invite your reviewers"):
        assert private not in text
    for error in raised:
        assert error.__cause__ is None
        assert error.__suppress_context__


def test_the_conformance_cases_send_through_the_simulator(store: Store) -> None:
    """Each case's sender, with the case's fake token, sends its nudge."""
    open_sim = Simulator([IntercomSim()])
    with open_sim:
        cases = IntercomSender.conformance_cases(
            open_sim.url("intercom"), store, Cap(1_000, timedelta(seconds=1))
        )
        results = [case.sender.send(case.nudge) for case in cases]
        received = [item.path for item in open_sim.received("intercom")]
        for case in cases:
            close = getattr(case.sender, "close", None)
            if close is not None:
                close()

    assert [case.label for case in cases] == [
        "intercom in-app message",
        "intercom email",
    ]
    assert all(result.vendor_id for result in results)
    assert received == ["/messages", "/messages"]
    assert not any(case.dedupes for case in cases)
    assert all(case.secrets for case in cases)

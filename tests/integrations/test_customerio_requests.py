"""Customer.io requests, the Track event checked against Customer.io's Track spec."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from integrations.customerio import (
    CustomerIOChannel,
    CustomerIOReference,
    ulid_from_key,
)
from orchestrator.errors import PermanentError

SPEC_URI = "urn:referloop:customerio-track"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


@pytest.fixture(scope="module")
def spec(specs_dir: Path) -> dict[str, Any]:
    """Customer.io's OpenAPI document for the Track API."""
    path = specs_dir / "customerio" / "journeys-track.openapi.json"
    if not path.is_file():
        pytest.fail(f"Customer.io Track spec not found at {path}")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def events_request(spec: dict[str, Any]) -> Draft202012Validator:
    """A validator for `eventsRequest`, its `$ref`s resolved in the spec."""
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    ref = f"{SPEC_URI}#/components/schemas/eventsRequest"
    return Draft202012Validator({"$ref": ref}, registry=registry)


def _decode(ulid: str) -> int:
    value = 0
    for character in ulid:
        value = value * 32 + CROCKFORD.index(character)
    return value


def test_an_event_matches_the_track_spec(events_request, nudge) -> None:
    """The event body is a valid standard event with the message data."""
    sample = nudge(CustomerIOReference(event="invite_nudge"))

    request = CustomerIOChannel().build_request(sample)

    events_request.validate(request.json)
    assert request.json["name"] == "invite_nudge"
    assert request.json["data"]["invite_link"] == sample.data["invite_link"]
    assert request.json["data"]["subject"] == sample.subject


def test_an_event_goes_to_the_track_api(spec, nudge) -> None:
    """`POST /api/v1/customers/{identifier}/events` on the region's Track server."""
    reference = CustomerIOReference(event="invite_nudge")
    servers = {server["url"] for server in spec["servers"]}

    us = CustomerIOChannel().build_request(nudge(reference))
    eu = CustomerIOChannel(region="eu").build_request(nudge(reference))

    assert "post" in spec["paths"]["/api/v1/customers/{identifier}/events"]
    assert us.method == "POST"
    assert us.url == "https://track.customer.io/api/v1/customers/user-42/events"
    assert eu.url == "https://track-eu.customer.io/api/v1/customers/user-42/events"
    assert {us.url.split("/api/")[0], eu.url.split("/api/")[0]} == servers


def test_the_identifier_in_the_path_is_escaped(nudge) -> None:
    """A user id with a slash stays one path segment."""
    reference = CustomerIOReference(event="invite_nudge")

    request = CustomerIOChannel().build_request(nudge(reference, user_id="org/7"))

    assert request.url.endswith("/customers/org%2F7/events")


def test_the_event_id_is_a_ulid_from_the_delivery_key(nudge) -> None:
    """A resend of one delivery carries the same id, so Customer.io drops it."""
    reference = CustomerIOReference(event="invite_nudge")
    built = CustomerIOChannel()

    first = built.build_request(nudge(reference, delivery_key="k-1"))
    again = built.build_request(nudge(reference, delivery_key="k-1"))
    other = built.build_request(nudge(reference, delivery_key="k-2"))

    assert first.json["id"] == again.json["id"] == ulid_from_key("k-1")
    assert other.json["id"] != first.json["id"]


def test_a_ulid_is_26_characters_of_crockford_base32() -> None:
    """The shape the ULID spec gives, for a spread of keys."""
    ulids = [ulid_from_key(f"delivery-{index}") for index in range(200)]

    assert all(ULID_PATTERN.fullmatch(ulid) for ulid in ulids)
    assert len(set(ulids)) == len(ulids)


def test_a_ulid_holds_the_time_then_the_key_hash() -> None:
    """48 bits of milliseconds, then the first 80 bits of SHA-256 of the key."""
    timestamp_ms = 1_777_000_000_000
    digest = hashlib.sha256(b"k-1").digest()

    value = _decode(ulid_from_key("k-1", timestamp_ms=timestamp_ms))

    assert value >> 80 == timestamp_ms
    assert value & (2**80 - 1) == int.from_bytes(digest[:10], "big")
    assert ulid_from_key("k-1").startswith("0" * 10)


def test_a_time_beyond_48_bits_is_refused() -> None:
    """A ULID cannot hold a time past the year 10889."""
    with pytest.raises(ValueError, match="timestamp_ms"):
        ulid_from_key("k-1", timestamp_ms=2**48)


def test_a_transactional_message_goes_to_the_user_email(nudge) -> None:
    """App API `POST /v1/send/email` with the id, address, identifier and data."""
    sample = nudge(CustomerIOReference(transactional_message=3))

    request = CustomerIOChannel().build_request(sample)

    assert request.url == "https://api.customer.io/v1/send/email"
    assert request.json == {
        "transactional_message_id": 3,
        "to": sample.recipient.email,
        "identifiers": {"id": "user-42"},
        "message_data": {
            **sample.data,
            "subject": sample.subject,
            "body": sample.body,
        },
    }


def test_a_transactional_message_may_be_named(nudge) -> None:
    """Customer.io also takes a transactional message's trigger name as its id."""
    sample = nudge(CustomerIOReference(transactional_message="invite_reviewers"))

    request = CustomerIOChannel(region="eu").build_request(sample)

    assert request.url == "https://api-eu.customer.io/v1/send/email"
    assert request.json["transactional_message_id"] == "invite_reviewers"


def test_a_transactional_message_needs_an_email(nudge) -> None:
    """Without an address there is nothing to send to; retrying will not help."""
    sample = nudge(CustomerIOReference(transactional_message=3), email=None)

    with pytest.raises(PermanentError, match="needs an email") as raised:
        CustomerIOChannel().build_request(sample)

    assert raised.value.vendor == "customerio"
    assert "user-42" in str(raised.value)


def test_a_broadcast_is_triggered_for_the_user(nudge) -> None:
    """App API `POST /v1/campaigns/{id}/triggers` with the user's id and the data."""
    sample = nudge(CustomerIOReference(broadcast=12))

    request = CustomerIOChannel().build_request(sample)

    assert request.url == "https://api.customer.io/v1/campaigns/12/triggers"
    assert request.json["ids"] == ["user-42"]
    assert request.json["data"]["invite_link"] == sample.data["invite_link"]


def test_base_urls_can_point_at_a_simulated_vendor(nudge) -> None:
    """Tests send to loopback; the settings replace the region's URLs."""
    built = CustomerIOChannel(
        app_url="http://127.0.0.1:8001/", track_url="http://127.0.0.1:8002"
    )

    event = built.build_request(nudge(CustomerIOReference(event="e")))
    broadcast = built.build_request(nudge(CustomerIOReference(broadcast=1)))

    assert event.url.startswith("http://127.0.0.1:8002/api/v1/customers/")
    assert broadcast.url == "http://127.0.0.1:8001/v1/campaigns/1/triggers"


@pytest.mark.parametrize(
    "keys",
    [{}, {"event": "e", "broadcast": 1}, {"transactional_message": 3, "event": "e"}],
)
def test_a_reference_gives_exactly_one_kind_of_send(keys) -> None:
    """None or two of the keys is refused, with the three keys named."""
    with pytest.raises(pydantic.ValidationError) as raised:
        CustomerIOReference.model_validate(keys)

    message = str(raised.value)
    for key in ("transactional_message", "broadcast", "event"):
        assert f"`{key}`" in message


@pytest.mark.parametrize("message_type", ["push", "in_app"])
def test_a_transactional_push_or_in_app_message_goes_to_the_person(
    message_type, nudge
) -> None:
    """`POST /v1/send/push` and `/v1/send/in_app` address the person by id only."""
    reference = CustomerIOReference(transactional_message=3, message_type=message_type)
    sample = nudge(reference, email=None)

    request = CustomerIOChannel().build_request(sample)

    assert request.url == f"https://api.customer.io/v1/send/{message_type}"
    assert request.json == {
        "transactional_message_id": 3,
        "identifiers": {"id": "user-42"},
        "message_data": {
            **sample.data,
            "subject": sample.subject,
            "body": sample.body,
        },
    }


def test_a_transactional_message_is_an_email_unless_told_otherwise() -> None:
    """Playbooks written before `message_type` keep sending emails."""
    reference = CustomerIOReference(transactional_message=3)

    assert reference.message_type == "email"


@pytest.mark.parametrize("keys", [{"event": "e"}, {"broadcast": 1}])
def test_a_message_type_belongs_to_a_transactional_message(keys) -> None:
    """`message_type` beside a broadcast or an event is a mistake, and says so."""
    with pytest.raises(pydantic.ValidationError, match="`message_type` applies only"):
        CustomerIOReference.model_validate({**keys, "message_type": "push"})

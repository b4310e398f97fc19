"""What every channel must do; a new adapter passes this suite or is not done."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import urlsplit

import pydantic
import pytest

from integrations import Channel, Reference, VendorRequest, channel, channel_names
from integrations.base import SECURE
from integrations.braze import BrazeReference
from integrations.customerio import CustomerIOReference
from integrations.intercom import IntercomReference
from integrations.webhook import WebhookReference
from orchestrator.errors import ConfigurationError

FAKE_SECRET = "fake-secret-7f3a9c-do-not-send"
SECRET_VARIABLES = [
    "BRAZE_API_KEY",
    "CUSTOMERIO_APP_API_KEY",
    "CUSTOMERIO_SITE_ID",
    "CUSTOMERIO_TRACK_API_KEY",
    "INTERCOM_ACCESS_TOKEN",
    "INTERCOM_TOKEN",
]
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "APPEND"}

# Every kind of send each channel offers, as a playbook would reference it.
SAMPLES: dict[str, list[Reference | None]] = {
    "outbox": [None],
    "customerio": [
        CustomerIOReference(transactional_message=3),
        CustomerIOReference(broadcast=12),
        CustomerIOReference(event="invite_nudge"),
        CustomerIOReference(transactional_message=4, message_type="push"),
        CustomerIOReference(transactional_message=5, message_type="in_app"),
    ],
    "braze": [
        BrazeReference(campaign="0b7e2c34-campaign"),
        BrazeReference(canvas="5d1f9a70-canvas"),
    ],
    "intercom": [
        IntercomReference(from_admin=394051),
        IntercomReference(message_type="email", from_admin=394051),
    ],
    "webhook": [WebhookReference(topic="invite-reviewers")],
}
REFERENCED = sorted(
    name for name, references in SAMPLES.items() if None not in references
)
CASES = [
    pytest.param(name, reference, id=f"{name}-{index}")
    for name, references in SAMPLES.items()
    for index, reference in enumerate(references)
]


def _everything_in(request: VendorRequest) -> str:
    return json.dumps(dataclasses.asdict(request), default=str)


def test_every_channel_is_in_this_suite() -> None:
    """A channel in the registry without samples here would go unchecked."""
    assert sorted(SAMPLES) == channel_names()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_channel_needs_a_reference_exactly_when_it_has_a_model(name) -> None:
    """The samples above agree with what each channel declares."""
    has_model = channel(name).reference_model is not None

    assert has_model == (name in REFERENCED)


@pytest.mark.parametrize(("name", "reference"), CASES)
def test_a_channel_builds_a_well_formed_request(name, reference, nudge) -> None:
    """The request has a known method, an absolute URL and a JSON body."""
    built = channel(name)

    request = built.build_request(nudge(reference))

    assert isinstance(built, Channel)
    assert built.name == name
    assert request.method in METHODS
    parts = urlsplit(request.url)
    assert parts.scheme in {"https", "file"}
    assert parts.scheme == "file" or parts.netloc
    assert (parts.query, parts.fragment) == ("", "")
    assert " " not in request.url
    json.dumps(request.json)
    assert all(isinstance(value, str) for value in request.headers.values())


@pytest.mark.parametrize(("name", "reference"), CASES)
def test_a_request_never_holds_a_secret(name, reference, nudge, monkeypatch) -> None:
    """Credentials in the environment stay out of the request; auth is `[secure]`."""
    for variable in SECRET_VARIABLES:
        monkeypatch.setenv(variable, FAKE_SECRET)

    request = channel(name).build_request(nudge(reference))

    assert FAKE_SECRET not in _everything_in(request)
    auth = {
        key: value for key, value in request.headers.items() if "auth" in key.lower()
    }
    assert set(auth.values()) <= {SECURE}


@pytest.mark.parametrize(("name", "reference"), CASES)
def test_the_logged_description_has_no_personal_data(name, reference, nudge) -> None:
    """`describe()` goes into logs, so it carries ids, never the email or body."""
    sample = nudge(reference)

    description = channel(name).build_request(sample).describe()

    assert sample.recipient.email is not None
    assert sample.recipient.email not in description
    assert sample.body not in description


@pytest.mark.parametrize(("name", "reference"), CASES)
def test_building_is_deterministic(name, reference, nudge) -> None:
    """The same nudge gives the same request, so a preview shows what is sent."""
    built = channel(name)

    first = built.build_request(nudge(reference))
    second = built.build_request(nudge(reference))

    assert first == second


@pytest.mark.parametrize(("name", "reference"), CASES)
def test_the_rendered_body_reaches_the_vendor(name, reference, nudge) -> None:
    """Whatever the vendor does with templates, the rendered body is in the request."""
    sample = nudge(reference)

    request = channel(name).build_request(sample)

    assert sample.body in json.dumps(request.json)


@pytest.mark.parametrize("name", REFERENCED)
def test_a_missing_reference_names_the_playbook_key(name, nudge) -> None:
    """A channel that needs a reference says which `nudge.<channel>` key is missing."""
    built = channel(name)

    with pytest.raises(ConfigurationError) as raised:
        built.build_request(nudge(None))

    assert f"nudge.{name}" in str(raised.value)


@pytest.mark.parametrize("name", REFERENCED)
def test_a_reference_model_documents_every_key(name) -> None:
    """The editor's JSON Schema has a description for every key a marketer writes."""
    model = channel(name).reference_model
    assert model is not None

    properties = model.model_json_schema()["properties"]

    assert properties
    assert all(spec.get("description") for spec in properties.values())


@pytest.mark.parametrize("name", REFERENCED)
def test_a_reference_refuses_an_unknown_key(name) -> None:
    """A typo in the playbook is reported, not ignored."""
    model = channel(name).reference_model
    assert model is not None

    with pytest.raises(pydantic.ValidationError, match="capmaign"):
        model.model_validate({"capmaign": "x"})

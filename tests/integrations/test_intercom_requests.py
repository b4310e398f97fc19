"""Intercom requests, checked against Intercom's own OpenAPI document for API 2.14."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from integrations.intercom import (
    API_VERSION,
    IntercomChannel,
    IntercomReference,
    is_placeholder,
)
from orchestrator.errors import PermanentError

SPEC_URI = "urn:referloop:intercom-2.14"


@pytest.fixture(scope="module")
def spec(specs_dir: Path) -> dict[str, Any]:
    """Intercom's OpenAPI document for the API version the channel sends."""
    path = specs_dir / "intercom" / f"api.intercom.io.{API_VERSION}.yaml"
    if not path.is_file():
        pytest.fail(f"Intercom spec not found at {path}")
    # The document is large: the C loader, when PyYAML has it, reads it in a second.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaded: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), loader)
    return loaded


@pytest.fixture(scope="module")
def create_message(spec: dict[str, Any]) -> Draft202012Validator:
    """A validator for `create_message_request`, its `$ref`s resolved in the spec."""
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    ref = f"{SPEC_URI}#/components/schemas/create_message_request"
    return Draft202012Validator({"$ref": ref}, registry=registry)


def test_an_in_app_message_matches_the_spec(create_message, nudge) -> None:
    """An in-app nudge is a valid `create_message_request` without a subject."""
    reference = IntercomReference(from_admin=394051)

    request = IntercomChannel().build_request(nudge(reference))

    create_message.validate(request.json)
    assert request.json["message_type"] == "in_app"
    assert "subject" not in request.json
    assert "template" not in request.json


def test_an_email_matches_the_spec(create_message, nudge) -> None:
    """An email nudge carries the subject and template Intercom requires."""
    reference = IntercomReference(message_type="email", from_admin=394051)

    request = IntercomChannel().build_request(nudge(reference, subject="Invite"))

    create_message.validate(request.json)
    assert request.json["subject"] == "Invite"
    assert request.json["template"] == "personal"
    assert request.json["from"] == {"type": "admin", "id": 394051}


def test_the_request_goes_to_the_messages_endpoint(spec, nudge) -> None:
    """`POST /messages` on the region's server, with the version header."""
    reference = IntercomReference(from_admin=394051)
    servers = {server["url"] for server in spec["servers"]}

    requests = {
        region: IntercomChannel(region=region).build_request(nudge(reference))
        for region in ("us", "eu", "au")
    }

    assert "post" in spec["paths"]["/messages"]
    assert {request.url.removesuffix("/messages") for request in requests.values()} == (
        servers
    )
    assert requests["eu"].url == "https://api.eu.intercom.io/messages"
    assert all(request.method == "POST" for request in requests.values())
    assert requests["us"].headers["Intercom-Version"] == API_VERSION


def test_the_version_header_is_one_the_spec_knows(spec) -> None:
    """The `Intercom-Version` we send is the version of the document we check."""
    versions = spec["components"]["schemas"]["intercom_version"]["enum"]

    assert API_VERSION in versions
    assert spec["info"]["version"] == API_VERSION


def test_without_a_resolver_the_contact_is_a_marked_placeholder(nudge) -> None:
    """The sending half sees at once that the contact id still has to be found."""
    reference = IntercomReference(from_admin=394051)

    request = IntercomChannel().build_request(nudge(reference, user_id="u-9"))

    recipient = request.json["to"]
    assert recipient == {"type": "user", "id": "contact:external_id=u-9"}
    assert is_placeholder(recipient["id"])


def test_a_resolver_gives_the_intercom_contact_id(create_message, nudge) -> None:
    """With a resolver, the request addresses the contact Intercom knows."""
    contacts = {"user-42": "6762f2341bb69f9f2193bc17"}
    built = IntercomChannel(contact_id=contacts.__getitem__)

    request = built.build_request(nudge(IntercomReference(from_admin=394051)))

    create_message.validate(request.json)
    assert request.json["to"]["id"] == "6762f2341bb69f9f2193bc17"
    assert not is_placeholder(request.json["to"]["id"])


def test_an_email_without_a_subject_is_refused(nudge) -> None:
    """Intercom rejects an email with no subject, so it is not sent at all."""
    reference = IntercomReference(message_type="email", from_admin=394051)

    with pytest.raises(PermanentError, match="subject") as raised:
        IntercomChannel().build_request(nudge(reference, subject=None))

    assert raised.value.vendor == "intercom"


def test_a_template_for_an_in_app_message_is_refused() -> None:
    """`template` styles emails only; on an in-app message it is a mistake."""
    with pytest.raises(pydantic.ValidationError, match="only to `message_type"):
        IntercomReference.model_validate({"from_admin": 1, "template": "plain"})


def test_an_admin_id_written_as_text_is_read_as_a_number() -> None:
    """YAML may quote the admin id; Intercom's `from.id` is an integer."""
    reference = IntercomReference.model_validate({"from_admin": "394051"})

    assert reference.from_admin == 394051


def test_the_admin_id_is_required() -> None:
    """Intercom needs an admin to send from; the playbook must name one."""
    with pytest.raises(pydantic.ValidationError, match="from_admin"):
        IntercomReference.model_validate({"message_type": "email"})

"""Intercom: an in-app message or an email from an admin, through `POST /messages`.

The body follows `create_message_request` of Intercom's API 2.14. Intercom addresses
the recipient by its own contact id, not by our user id, so the channel takes a
`contact_id` resolver (our user id in, Intercom contact id out). Without one, the
request carries a placeholder, `contact:external_id=<user id>`, which the sending half
must replace with the contact id it looks up; Intercom would refuse it as it stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from integrations.base import (
    SECURE,
    Reference,
    RenderedNudge,
    VendorRequest,
    expect_reference,
)
from orchestrator.errors import PermanentError

BASE_URLS = {
    "us": "https://api.intercom.io",
    "eu": "https://api.eu.intercom.io",
    "au": "https://api.au.intercom.io",
}
API_VERSION = "2.14"
HEADERS = {"Authorization": SECURE, "Intercom-Version": API_VERSION}
CONTACT_PLACEHOLDER_PREFIX = "contact:external_id="

Region = Literal["us", "eu", "au"]
ContactResolver = Callable[[str], str]


class IntercomReference(Reference):
    """What a playbook writes under `nudge.intercom`."""

    message_type: Literal["in_app", "email"] = Field(
        default="in_app",
        description="`in_app` shows the nudge in the product; `email` mails it.",
    )
    from_admin: int = Field(
        gt=0,
        description="The Intercom admin id the message is sent from.",
    )
    template: Literal["plain", "personal"] = Field(
        default="personal",
        description=(
            "The style of an email: `personal` looks written by the admin, `plain` "
            "has no styling. Only for `message_type: email`."
        ),
    )

    @model_validator(mode="after")
    def _template_only_for_email(self) -> IntercomReference:
        if "template" in self.model_fields_set and self.message_type != "email":
            raise ValueError("`template` applies only to `message_type: email`")
        return self


class IntercomChannel:
    """Build Intercom admin-initiated message requests for nudges.

    `base_url` replaces the region's base URL, for a simulated vendor.
    """

    name: ClassVar[str] = "intercom"
    reference_model: ClassVar[type[Reference] | None] = IntercomReference

    def __init__(
        self,
        region: Region = "us",
        base_url: str | None = None,
        contact_id: ContactResolver | None = None,
    ) -> None:
        self.base_url = (base_url or BASE_URLS[region]).rstrip("/")
        self.contact_id = contact_id or placeholder_contact_id

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the `POST /messages` request for `nudge`.

        Raises:
            ConfigurationError: the nudge has no `nudge.intercom` reference.
            PermanentError: an email, but the nudge rendered no subject.
        """
        reference = expect_reference(nudge, IntercomReference, self.name)
        contact = self.contact_id(nudge.recipient.user_id)

        body: dict[str, Any] = {
            "message_type": reference.message_type,
            "body": nudge.body,
            "from": {"type": "admin", "id": reference.from_admin},
            "to": {"type": "user", "id": contact},
        }
        if reference.message_type == "email":
            body |= self._email_fields(nudge, reference)

        url = f"{self.base_url}/messages"
        return VendorRequest(method="POST", url=url, json=body, headers=dict(HEADERS))

    def _email_fields(
        self, nudge: RenderedNudge, reference: IntercomReference
    ) -> dict[str, str]:
        if nudge.subject is None:
            raise PermanentError(
                self.name,
                f"playbook `{nudge.playbook_id}` step `{nudge.step}` sends an email "
                "but rendered no subject; Intercom requires one",
            )
        return {"subject": nudge.subject, "template": reference.template}


def placeholder_contact_id(user_id: str) -> str:
    """Return the marked stand-in for a contact id not looked up yet."""
    return f"{CONTACT_PLACEHOLDER_PREFIX}{user_id}"


def is_placeholder(contact_id: str) -> bool:
    """Tell whether a request's `to.id` still waits for the real contact id."""
    return contact_id.startswith(CONTACT_PLACEHOLDER_PREFIX)

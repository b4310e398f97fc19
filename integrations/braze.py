"""Braze: an API-triggered campaign or Canvas, sent to one user by external id.

`POST /campaigns/trigger/send` passes the message data as `trigger_properties`;
`POST /canvas/trigger/send` passes it as the Canvas `context` (which replaced
`canvas_entry_properties`). Templates read the rendered subject and body there too.
Braze takes no idempotency key, so the ledger alone keeps a resend out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from integrations.base import (
    SECURE,
    Reference,
    RenderedNudge,
    VendorRequest,
    expect_reference,
)

DEFAULT_REST_URL = "https://rest.iad-01.braze.com"
HEADERS = {"Authorization": SECURE}


class BrazeReference(Reference):
    """What a playbook writes under `nudge.braze`: a campaign or a Canvas."""

    campaign: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The id of an API-triggered campaign; the message data arrives as "
            "trigger properties (`{{api_trigger_properties.${invite_link}}}`)."
        ),
    )
    canvas: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The id of an API-triggered Canvas; the message data arrives as Canvas "
            "context (`{{context.${invite_link}}}`)."
        ),
    )

    @model_validator(mode="after")
    def _has_exactly_one_kind(self) -> BrazeReference:
        if (self.campaign is None) == (self.canvas is None):
            raise ValueError("give exactly one of `campaign` or `canvas`")
        return self


class BrazeChannel:
    """Build Braze messaging requests for nudges.

    `rest_url` is the workspace's REST endpoint (its instance, such as `iad-01`).
    """

    name: ClassVar[str] = "braze"
    reference_model: ClassVar[type[Reference] | None] = BrazeReference

    def __init__(self, rest_url: str = DEFAULT_REST_URL) -> None:
        self.rest_url = rest_url.rstrip("/")

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the trigger request for the campaign or Canvas of the playbook.

        Raises:
            ConfigurationError: the nudge has no `nudge.braze` reference.
        """
        reference = expect_reference(nudge, BrazeReference, self.name)
        user_id = nudge.recipient.user_id
        data = nudge.message_data()

        if reference.campaign is not None:
            recipient = {"external_user_id": user_id, "trigger_properties": data}
            body = {"campaign_id": reference.campaign, "recipients": [recipient]}
            return self._post("/campaigns/trigger/send", body)

        assert reference.canvas is not None  # the validator allows no other case
        recipient = {"external_user_id": user_id, "context": data}
        body = {"canvas_id": reference.canvas, "recipients": [recipient]}
        return self._post("/canvas/trigger/send", body)

    def _post(self, path: str, body: dict[str, Any]) -> VendorRequest:
        url = f"{self.rest_url}{path}"
        return VendorRequest(method="POST", url=url, json=body, headers=dict(HEADERS))

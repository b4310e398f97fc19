"""Customer.io: a transactional send, an API-triggered broadcast or a Track event.

A playbook chooses one per nudge (see DESIGN.md, "Customer.io: transactional send or
Track event"):

- `transactional_message`: App API `POST /v1/send/email`, immediate, not deduped;
- `broadcast`: App API `POST /v1/campaigns/{id}/triggers`, one per 10 seconds;
- `event`: Track API `POST /api/v1/customers/{identifier}/events`, deduped by its
  `id`, a ULID derived from the delivery key, so a resend is ignored.

The region (US or EU) is a workspace setting, so it is a channel setting, not a key of
the playbook.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, PositiveInt, StringConstraints, model_validator

from integrations.base import (
    SECURE,
    Reference,
    RenderedNudge,
    VendorRequest,
    expect_reference,
)
from orchestrator.errors import PermanentError

APP_URLS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
TRACK_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
HEADERS = {"Authorization": SECURE}

# https://github.com/ulid/spec: 48 bits of milliseconds, then 80 random bits,
# written as 26 characters of Crockford's base32.
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26
ULID_MAX_TIME_MS = 2**48 - 1

Region = Literal["us", "eu"]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]


class CustomerIOReference(Reference):
    """What a playbook writes under `nudge.customerio`: exactly one of three keys."""

    transactional_message: PositiveInt | NonEmptyStr | None = Field(
        default=None,
        description=(
            "Send this transactional message (its numeric id or its trigger name) "
            "to the user's email, at once. Not deduped by Customer.io."
        ),
    )
    broadcast: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Trigger this API-triggered broadcast (numeric id) for the user. "
            "Customer.io allows one broadcast trigger per 10 seconds."
        ),
    )
    event: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Report this event name for the user through the Track API, for a "
            "Customer.io campaign to act on. Deduped, so a resend is ignored."
        ),
    )

    @model_validator(mode="after")
    def _has_exactly_one_kind(self) -> CustomerIOReference:
        given = [self.transactional_message, self.broadcast, self.event]
        if sum(value is not None for value in given) != 1:
            raise ValueError(
                "give exactly one of `transactional_message`, `broadcast` or `event`"
            )
        return self


class CustomerIOChannel:
    """Build Customer.io App API and Track API requests for nudges.

    `app_url` and `track_url` replace the region's base URLs, for a simulated vendor.
    """

    name: ClassVar[str] = "customerio"
    reference_model: ClassVar[type[Reference] | None] = CustomerIOReference

    def __init__(
        self,
        region: Region = "us",
        app_url: str | None = None,
        track_url: str | None = None,
    ) -> None:
        self.app_url = (app_url or APP_URLS[region]).rstrip("/")
        self.track_url = (track_url or TRACK_URLS[region]).rstrip("/")

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the request for the kind of send the playbook chose.

        Raises:
            ConfigurationError: the nudge has no `nudge.customerio` reference.
            PermanentError: a transactional message, but the user has no email.
        """
        reference = expect_reference(nudge, CustomerIOReference, self.name)

        if reference.transactional_message is not None:
            return self._transactional(nudge, reference.transactional_message)
        if reference.broadcast is not None:
            return self._broadcast(nudge, reference.broadcast)
        assert reference.event is not None  # the validator allows no other case
        return self._event(nudge, reference.event)

    def _transactional(self, nudge: RenderedNudge, message: int | str) -> VendorRequest:
        recipient = nudge.recipient
        if recipient.email is None:
            raise PermanentError(
                self.name,
                f"transactional message `{message}` needs an email for user "
                f"{recipient.user_id}, and none is known",
            )

        body = {
            "transactional_message_id": message,
            "to": recipient.email,
            "identifiers": {"id": recipient.user_id},
            "message_data": nudge.message_data(),
        }
        return _post(f"{self.app_url}/v1/send/email", body)

    def _broadcast(self, nudge: RenderedNudge, broadcast: int) -> VendorRequest:
        body = {"ids": [nudge.recipient.user_id], "data": nudge.message_data()}
        return _post(f"{self.app_url}/v1/campaigns/{broadcast}/triggers", body)

    def _event(self, nudge: RenderedNudge, event: str) -> VendorRequest:
        identifier = quote(nudge.recipient.user_id, safe="")
        body = {
            "name": event,
            "data": nudge.message_data(),
            "id": ulid_from_key(nudge.delivery_key),
        }
        url = f"{self.track_url}/api/v1/customers/{identifier}/events"
        return _post(url, body)


def ulid_from_key(key: str, timestamp_ms: int = 0) -> str:
    """Return a ULID that is always the same for `key` (and `timestamp_ms`).

    Customer.io dedupes Track events by a ULID `id`; deriving it from the delivery key
    makes a resend of the same delivery a duplicate it ignores. The 80 random bits
    come from SHA-256 of the key. The time part defaults to 0 because a nudge carries
    no time of its own; pass the trigger's time to get a ULID that sorts by it.

    Raises:
        ValueError: `timestamp_ms` does not fit the 48 bits of a ULID.
    """
    if not 0 <= timestamp_ms <= ULID_MAX_TIME_MS:
        raise ValueError(f"timestamp_ms must be within 0..{ULID_MAX_TIME_MS}")

    digest = hashlib.sha256(key.encode("utf-8")).digest()
    value = timestamp_ms << 80 | int.from_bytes(digest[:10], "big")

    characters = []
    for _ in range(ULID_LENGTH):
        value, index = divmod(value, 32)
        characters.append(ULID_ALPHABET[index])
    return "".join(reversed(characters))


def _post(url: str, body: dict[str, Any]) -> VendorRequest:
    return VendorRequest(method="POST", url=url, json=body, headers=dict(HEADERS))

"""What the engine asks of a channel adapter, and the values that cross that line.

A channel turns a rendered nudge into the request its vendor documents. Building the
request is pure (no I/O), so `referloop preview` shows exactly what would be sent; the
sending half arrives with the engine and maps vendor answers to the errors of
`orchestrator.errors` at this boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import ConfigurationError

SECURE = "[secure]"


class Reference(BaseModel):
    """The vendor-side reference a playbook gives for one channel.

    Subclasses list the keys a marketer writes under `nudge.<channel>`. Unknown keys
    are refused so that a typo is reported, not ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Recipient:
    """Who a nudge goes to, by id; the email is only present when a vendor needs it."""

    user_id: str
    account_id: str
    email: str | None = None
    time_zone: str | None = None


@dataclass(frozen=True)
class RenderedNudge:
    """A nudge after Liquid rendering, ready to be turned into a vendor request.

    `data` holds the message data the vendor template reads: at least `invite_link`,
    `share` and `trust`, then the playbook's own fields.
    """

    delivery_key: str
    playbook_id: str
    step: str
    variant: str
    recipient: Recipient
    subject: str | None
    body: str
    data: Mapping[str, Any]
    reference: Reference | None = None

    def message_data(self) -> dict[str, Any]:
        """Return `data` with the rendered `subject` (when there is one) and `body`.

        Vendor templates read these; the rendered values win over same-named keys.
        """
        content = {"subject": self.subject, "body": self.body}
        kept = {key: value for key, value in content.items() if value is not None}
        return {**self.data, **kept}


@dataclass(frozen=True)
class VendorRequest:
    """One HTTP request as the vendor documents it; credentials never appear here."""

    method: str
    url: str
    json: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.method} {self.url}"


@runtime_checkable
class Channel(Protocol):
    """A vendor that delivers nudges (or the local outbox)."""

    name: ClassVar[str]
    reference_model: ClassVar[type[Reference] | None]

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the request that would deliver `nudge`, without sending it."""
        ...


ReferenceT = TypeVar("ReferenceT", bound=Reference)


def expect_reference(
    nudge: RenderedNudge, model: type[ReferenceT], channel: str
) -> ReferenceT:
    """Return the nudge's reference as `model`, or say which playbook key is missing.

    Raises:
        ConfigurationError: the nudge has no `nudge.<channel>` reference of that kind.
    """
    if isinstance(nudge.reference, model):
        return nudge.reference

    raise ConfigurationError(
        f"playbook `{nudge.playbook_id}` sends through `{channel}` but gives no "
        f"`nudge.{channel}` reference"
    )

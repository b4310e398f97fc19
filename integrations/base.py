"""What the engine asks of adapters, and the values that cross that line.

- A channel turns a rendered nudge into the request its vendor documents. Building
  the request is pure (no I/O), so `referloop preview` shows exactly what would be
  sent. A channel that can send (`Sender`) also delivers it and maps the vendor's
  answer to the errors of `orchestrator.errors`, once, at this boundary.
- A source lists a cohort's members page by page, or yields product events.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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


@dataclass(frozen=True)
class Sent:
    """What a vendor said when it took a nudge: its own id for it, if it gives one."""

    vendor_id: str | None = None


@runtime_checkable
class Sender(Protocol):
    """A channel that can deliver what it builds.

    `send` raises `TransientError` (try later, maybe after `retry_after_s`),
    `PermanentError` (never) or `AmbiguousError` (the request went out and no
    answer came back); messages carry ids, never personal data.
    """

    name: ClassVar[str]

    def send(self, nudge: RenderedNudge) -> Sent: ...


@dataclass(frozen=True)
class Member:
    """One user in a cohort, with the profile fields the source knows."""

    user_id: str
    account_id: str | None = None
    user: Mapping[str, Any] = field(default_factory=dict)
    account: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProductEvent:
    """One event the product reported, with the user and account it is about."""

    event_id: str
    name: str
    user_id: str
    time: datetime
    account_id: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    user: Mapping[str, Any] = field(default_factory=dict)
    account: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A record a source could not read: where it was and why, never its content."""

    where: str
    reason: str


@runtime_checkable
class CohortSource(Protocol):
    """Lists a cohort's current members, a page at a time."""

    name: ClassVar[str]

    def cohort_pages(self, cohort: str) -> Iterator[Sequence[Member | Rejected]]: ...


@runtime_checkable
class EventSource(Protocol):
    """Yields product events in the order they happened."""

    name: ClassVar[str]

    def events(self) -> Iterator[ProductEvent | Rejected]: ...


@dataclass(frozen=True)
class LoopEvent:
    """An event referloop reports about its own work, for the analytics vendor.

    `insert_id` derives from the delivery key, so a vendor that dedupes (Mixpanel
    `$insert_id`, Amplitude `insert_id`) ignores a resend. Properties hold ids and
    reasons only.
    """

    insert_id: str
    name: str
    user_id: str
    time: datetime
    properties: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@runtime_checkable
class EventSink(Protocol):
    """Takes referloop's events (nudge sent, nudge held back, reward granted)."""

    name: ClassVar[str]

    def record(self, events: Sequence[LoopEvent]) -> None: ...


@dataclass(frozen=True)
class GrantRequest:
    """One reward for one user, as the product's entitlement API receives it.

    `idempotency_key` lets the product apply a repeated request once.
    """

    idempotency_key: str
    playbook_id: str
    user_id: str
    account_id: str
    grant: str
    amount: int | None = None
    for_s: int | None = None
    # Unused, the grant lapses this many seconds after it is given.
    expires_s: int | None = None
    # The playbook's line for the grant record, for the product to show.
    note: str | None = None


@runtime_checkable
class RewardTarget(Protocol):
    """Gives grants in the product (its entitlement API)."""

    name: ClassVar[str]

    def grant(self, request: GrantRequest) -> Sent: ...


@dataclass(frozen=True)
class Check:
    """One line of `referloop doctor`: a vendor setting or credential, and whether
    it works. `detail` says what to fix; it never holds a secret."""

    vendor: str
    what: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ConformanceCase:
    """How the conformance suite drives one kind of send of an adapter.

    An adapter offers its cases through a classmethod,
    `conformance_cases(base_url: str, store: Store, budget: Cap) -> list[...]`:
    `sender` is built against `base_url` (the simulator standing in for the
    vendor) with `budget` as the budget of its send path; `nudge` is one that it
    sends there; `secrets` are the credentials it was given, which must never
    appear in a log line or an error. `dedupes` says the vendor ignores a repeat
    of the same send, so an unanswered send may be retried (TransientError)
    instead of being reported as ambiguous.
    """

    label: str
    sender: Sender
    nudge: RenderedNudge
    secrets: tuple[str, ...]
    dedupes: bool = False


def conformance_nudge(
    reference: Reference | None, delivery_key: str = "conformance:ask:user-1"
) -> RenderedNudge:
    """A rendered nudge for an adapter's conformance cases: made-up ids, an email,
    a subject and an invite link, so that every field a vendor reads is there."""
    link = "https://app.example.com/invite/c0nf0rm"
    return RenderedNudge(
        delivery_key=delivery_key,
        playbook_id="conformance",
        step="ask",
        variant="a",
        recipient=Recipient(
            user_id="user-conformance",
            account_id="acct-conformance",
            email="dana.reviewer@example.com",
        ),
        subject="Invite your reviewers",
        body=f"Your pack is ready. Invite the reviewers who need it: {link}",
        data={
            "invite_link": link,
            "share": "Share the pack with your reviewers",
            "trust": "Only people you invite can see the pack.",
        },
        reference=reference,
    )

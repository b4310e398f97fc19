"""The playbook language: what a playbook and the workspace file may say.

These models check the shape of a file. What needs more than one field at a time
(Liquid variables, caps against each other, overlapping triggers) is checked in
`orchestrator.checks`, and `orchestrator.loader` ties both to lines and columns.
Every field has a description: it is the help text of the JSON Schema that editors
show, and the hint of a "missing" error.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from integrations import amplitude, braze, customerio, mixpanel
from integrations.braze import BrazeReference
from integrations.customerio import CustomerIOReference
from integrations.intercom import IntercomReference
from integrations.webhook import WebhookReference
from orchestrator.units import (
    CAP_JSON_SCHEMA,
    Cap,
    CapValue,
    ClockRangeValue,
    Duration,
    Percentage,
    format_duration,
    parse_cap,
    parse_duration,
)

SIGN_UP_EVENTS = frozenset(
    {"signed_up", "sign_up", "signup", "user_created", "registered", "account_created"}
)


def is_sign_up(event: str | None) -> bool:
    """True for `signed_up`, `Signed Up`, `sign-up` and the like."""
    if event is None:
        return False
    words = re.sub(r"[^a-z0-9]+", "_", event.lower()).strip("_")
    return words in SIGN_UP_EVENTS


LOOP_EVENTS = (
    "invite_sent",
    "invite_accepted",
    "invitee_activated",
    "collaboration_completed",
    "reward_granted",
)
# An Amplitude cohort id is the letters and digits at the end of the cohort's
# URL (`7khm89cz`); the webhook sends it as `cohort_id`.
COHORT_PATTERN = r"^(mixpanel|file):[A-Za-z0-9_.-]+$|^amplitude:[A-Za-z0-9]+$"
FIELD_PATTERN = r"^(event|user|account)\.[A-Za-z0-9_$][A-Za-z0-9_.$-]*$"
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
EVENT_PATTERN = r"^[A-Za-z0-9_$][A-Za-z0-9_ .:$-]{0,127}$"
CHANNEL_PATTERN = r"^[a-z][a-z0-9_]*$"
REENTRY_PATTERN = r"(?i)^\s*(once|every[ _]time|always|after\s+\d+\s*[a-z]+)\s*$"
# What to write instead, for a value that does not match its pattern.
PATTERN_HINTS = {
    COHORT_PATTERN: (
        "write a cohort as `vendor:id`: `mixpanel:48213`, `amplitude:7khm89cz` "
        "(letters and digits, as in the cohort's URL) or `file:<name>`"
    ),
    FIELD_PATTERN: "write a field as `user.<name>`, `account.<name>` or `event.<name>`",
    ID_PATTERN: "use lower-case letters, digits and dashes, e.g. `pack-reviewers`",
    EVENT_PATTERN: "write the event's name as the product reports it",
    CHANNEL_PATTERN: "write a channel such as `customerio`, `braze` or `intercom`",
}


REMOVED_IN = "0.4"
# Earlier spellings that still load, with a warning: (where, old key, new key);
# `*` stands for each item of a list.
RENAMED_KEYS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    ((), "holdout_percent", "holdout"),
    (("nudge",), "fallbacks", "fallback"),
    (("reinforcement", "*", "nudge"), "fallbacks", "fallback"),
    (("nudge",), "trust_note", "trust"),
    (("reinforcement", "*", "nudge"), "trust_note", "trust"),
    (("reward",), "earned_when", "earned_on"),
    (("limits",), "quiet", "quiet_hours"),
)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
    )


CohortRef = Annotated[
    str,
    Field(
        pattern=COHORT_PATTERN,
        description=(
            "A cohort as `vendor:id`: `mixpanel:48213`, `amplitude:7khm89cz` or "
            "`file:<name>`."
        ),
        examples=["mixpanel:48213", "amplitude:7khm89cz"],
    ),
]
EventName = Annotated[
    str,
    Field(
        pattern=EVENT_PATTERN,
        description="A product event's name as the product reports it.",
        examples=["document_pack_uploaded"],
    ),
]
FieldPath = Annotated[
    str,
    Field(
        pattern=FIELD_PATTERN,
        description="A field as `user.<name>`, `account.<name>` or `event.<name>`.",
    ),
]
Scalar = str | int | float | bool


def _as_cap_list(value: Any) -> Any:
    return [value] if isinstance(value, str | Cap) else value


CapList = Annotated[
    list[CapValue],
    BeforeValidator(_as_cap_list),
    WithJsonSchema(
        {"anyOf": [CAP_JSON_SCHEMA, {"type": "array", "items": CAP_JSON_SCHEMA}]}
    ),
]


class Operators(_Strict):
    """A test on one field. Write one or more; all must hold."""

    equals: Scalar | None = Field(None, description="The field equals this value.")
    not_: Scalar | None = Field(
        None, alias="not", description="The field is not this value."
    )
    in_: list[Scalar] | None = Field(
        None, alias="in", description="The field is one of these values."
    )
    not_in: list[Scalar] | None = Field(
        None, description="The field is none of these values."
    )
    at_least: float | None = Field(None, description="The field is >= this number.")
    at_most: float | None = Field(None, description="The field is <= this number.")
    more_than: float | None = Field(None, description="The field is > this number.")
    less_than: float | None = Field(None, description="The field is < this number.")
    exists: bool | None = Field(
        None, description="`true`: the field is set; `false`: it is not."
    )
    contains: str | None = Field(
        None, description="The field (text or list) contains this value."
    )

    @model_validator(mode="after")
    def _has_a_test(self) -> Operators:
        if not self.model_fields_set:
            raise ValueError("write at least one test, e.g. `{at_least: 1}`")
        return self


Condition = Annotated[
    Scalar | list[Scalar] | Operators,
    Field(
        description=(
            "A value the field must equal, a list it must be in, or tests such as "
            "`{at_least: 5}`."
        )
    ),
]


def _check_field_keys(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key in value:
        if not isinstance(key, str) or not re.match(FIELD_PATTERN, key):
            raise ValueError(
                f"`{key}` is not a field; write `user.<name>`, `account.<name>` "
                "or `event.<name>`"
            )
    return value


Conditions = Annotated[
    dict[str, Condition],
    BeforeValidator(_check_field_keys),
    Field(
        description=(
            "Conditions by field (`user.role`, `account.plan`, `event.document_count`);"
            " all must hold."
        )
    ),
]


class Trigger(_Strict):
    """What makes a user eligible: entering a cohort, or a product event."""

    cohort: CohortRef | None = Field(
        None,
        description=(
            "Fire when a user enters this cohort (`mixpanel:<id>` or `amplitude:<id>`)."
        ),
    )
    event: EventName | None = Field(
        None, description="Fire when the product reports this event."
    )
    where: Conditions = Field(default_factory=dict)
    delay: Duration | None = Field(
        None, description="Wait this long after the trigger before nudging (`2h`)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Trigger:
        if (self.cohort is None) == (self.event is None):
            raise ValueError("write exactly one of `cohort:` or `event:`")
        return self

    @property
    def kind(self) -> Literal["cohort", "event"]:
        return "cohort" if self.cohort is not None else "event"

    @property
    def source(self) -> str:
        return self.cohort or f"event:{self.event}"


class Activation(_Strict):
    """Value before the ask: who counts as having reached value in the product."""

    property: FieldPath | None = Field(
        None, description="A user or account field that is set once activated."
    )
    where: Conditions | None = None
    cohort: CohortRef | None = Field(
        None, description="Users in this cohort have reached activation."
    )
    skip: str | None = Field(
        None,
        min_length=10,
        description="Ask without waiting for activation; say why (warned).",
    )

    @model_validator(mode="after")
    def _one_gate(self) -> Activation:
        chosen = [
            k for k in ("property", "where", "cohort", "skip") if getattr(self, k)
        ]
        if len(chosen) != 1:
            raise ValueError(
                "write exactly one of `property:`, `where:`, `cohort:` or `skip:`"
            )
        return self


class Audience(_Strict):
    """Who may be nudged beyond the trigger: exclusions and account conditions."""

    exclude: list[CohortRef] = Field(
        default_factory=list, description="Users in these cohorts are never nudged."
    )
    account: Conditions = Field(default_factory=dict)


class Share(StrEnum):
    """The shareable unit the invite link opens."""

    WORKSPACE_INVITE = "workspace_invite"
    SECURE_LINK = "secure_link"
    REVIEW_REQUEST = "review_request"


class Invite(_Strict):
    """The pre-filled invite the nudge carries."""

    share: Share = Field(
        description="What the link shares: workspace_invite, secure_link or "
        "review_request."
    )
    role: str | None = Field(
        None, description="The role the invitee gets, e.g. `reviewer`."
    )
    expires: Duration = Field(
        default=timedelta(days=14), description="How long the invite link works."
    )


class Message(_Strict):
    """The words of the nudge (Liquid). Vendor templates may read them as data."""

    subject: str | None = Field(None, description="Subject line (Liquid).")
    body: str = Field(description="Message text (Liquid).")


ChannelName = Annotated[
    str,
    Field(
        pattern=CHANNEL_PATTERN,
        description=(
            "`customerio`, `braze`, `intercom`, `webhook`, `outbox`, or an "
            "installed one."
        ),
        examples=["customerio", "braze", "intercom", "webhook", "outbox"],
    ),
]


class Nudge(_Strict):
    """The message that asks a user to invite someone, and how it is sent."""

    channel: ChannelName
    fallback: list[ChannelName] = Field(
        default_factory=list,
        description="Channels to try in order when the first is down for good.",
    )
    customerio: CustomerIOReference | None = None
    braze: BrazeReference | None = None
    intercom: IntercomReference | None = None
    webhook: WebhookReference | None = None
    invite: Invite
    trust: str = Field(
        description="What the invitee will be able to see (Liquid), shown by the link."
    )
    message: Message
    data: dict[str, str] = Field(
        default_factory=dict,
        description="More message data for the vendor template (Liquid values).",
    )
    variant: str = Field("a", description="A label for this copy, carried to metrics.")
    on_ambiguous: Literal["hold", "resend"] = Field(
        "hold",
        description="When a send may or may not have gone out: `hold` it for review "
        "or `resend` and risk a duplicate.",
    )

    def channels(self) -> list[str]:
        return [self.channel, *self.fallback]

    def reference(self, channel: str) -> Any:
        return getattr(self, channel, None)


class Reentry(_Strict):
    """How often the same user may go through this playbook again."""

    mode: Literal["once", "after", "every_time"]
    after: timedelta | None = None


def _parse_reentry(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = " ".join(value.lower().split())
    if text == "once":
        return {"mode": "once"}
    if text in ("every time", "every_time", "always"):
        return {"mode": "every_time"}
    if text.startswith("after "):
        return {"mode": "after", "after": parse_duration(text.removeprefix("after "))}
    raise ValueError(
        f"`{value}` is not a re-entry rule; write `once`, `after 30d` or `every time`"
    )


def _format_reentry(value: Reentry) -> str:
    if value.mode == "after" and value.after is not None:
        return f"after {format_duration(value.after)}"
    return "every time" if value.mode == "every_time" else "once"


ReentryValue = Annotated[
    Reentry,
    BeforeValidator(_parse_reentry),
    PlainSerializer(_format_reentry, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": REENTRY_PATTERN,
            "examples": ["once", "after 30d", "every time"],
        }
    ),
]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WORKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


class SendWindow(_Strict):
    """When nudges may go out, in the recipient's time zone."""

    days: list[Weekday] = Field(
        default_factory=lambda: list(WORKDAYS),
        description="Days of the week, `mon` to `sun`.",
    )
    hours: ClockRangeValue | None = Field(
        None, description="Hours of the day, e.g. `09:00-17:00`."
    )


class Limits(_Strict):
    """How often, and when, this playbook may nudge."""

    per_user: CapList = Field(
        default_factory=list, description="At most N per user, e.g. `1 per 14d`."
    )
    per_account: CapList = Field(
        default_factory=list, description="At most N per account, e.g. `5 per 7d`."
    )
    quiet_hours: ClockRangeValue | None = Field(
        None,
        description="No nudges in these hours of the recipient's day; they wait.",
    )
    send_window: SendWindow | None = None
    reentry: ReentryValue = Field(
        default=Reentry(mode="once"),
        description="`once`, `after 30d` or `every time`.",
    )


class GrantKind(StrEnum):
    """What a reward gives: features, services, or status."""

    GUEST_SEATS = "guest_seats"
    EXTRA_PROJECTS = "extra_projects"
    ADVANCED_REPORTING = "advanced_reporting"
    ONBOARDING_SESSION = "onboarding_session"
    MIGRATION_HELP = "migration_help"
    SECURITY_REVIEW = "security_review"
    EARLY_ACCESS = "early_access"


COUNTED_GRANTS = frozenset({GrantKind.GUEST_SEATS, GrantKind.EXTRA_PROJECTS})
TIMED_GRANTS = frozenset({GrantKind.ADVANCED_REPORTING})


class Grant(_Strict):
    """One reward for one party."""

    grant: GrantKind = Field(description="What is given, e.g. `guest_seats`.")
    amount: int | None = Field(None, ge=1, description="How many (seats, projects).")
    for_: Duration | None = Field(
        None, alias="for", description="How long a feature stays on, e.g. `90d`."
    )
    note: str | None = Field(None, description="A line for the grant record.")

    @model_validator(mode="after")
    def _fits_its_kind(self) -> Grant:
        if self.grant in COUNTED_GRANTS and self.amount is None:
            raise ValueError(f"`{self.grant.value}` needs `amount:`, e.g. `amount: 2`")
        if self.grant in TIMED_GRANTS and self.for_ is None:
            raise ValueError(f"`{self.grant.value}` needs `for:`, e.g. `for: 90d`")
        return self


class RewardCaps(_Strict):
    """How many grants a referrer, or an account, may earn in a period."""

    per_referrer: CapList = Field(default_factory=list)
    per_account: CapList = Field(default_factory=list)


class Reward(_Strict):
    """What the referrer (and the invitee) get once the invitee has done enough."""

    earned_on: Literal["invitee_accepted", "invitee_activated"] = Field(
        description="The qualifying event: `invitee_accepted` or `invitee_activated`."
    )
    referrer: Grant | None = None
    invitee: Grant | None = None
    caps: RewardCaps = Field(default_factory=RewardCaps)
    hold: Duration = Field(
        default=timedelta(days=7),
        description="Wait this long before granting, so a reversed invite is not paid.",
    )
    expires: Duration | None = Field(
        None, description="An unused grant lapses after this long."
    )
    approval: Literal["automatic", "manual"] = Field(
        "automatic",
        description="`manual` holds each grant until someone approves it.",
    )

    @model_validator(mode="after")
    def _someone_gets_something(self) -> Reward:
        if self.referrer is None and self.invitee is None:
            raise ValueError("say who gets what: add `referrer:` or `invitee:`")
        return self


class Reinforcement(_Strict):
    """A follow-up nudge that brings a user back to invite again."""

    on: EventName = Field(
        description="The event that sends it, e.g. `collaboration_completed`."
    )
    delay: Duration | None = Field(None, description="Wait this long after the event.")
    nudge: Nudge


PlaybookId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description="Lower-case letters, digits and dashes; unique; never reused.",
    ),
]


class Playbook(_Strict):
    """One referral loop: trigger, nudge, limits, reward and reinforcement."""

    id: PlaybookId
    description: str = Field(min_length=1, description="What this loop is for.")
    owner: str = Field(min_length=1, description="The team or person to ask.")
    enabled: bool = Field(True, description="`false` keeps the file but sends nothing.")
    priority: int = Field(
        0,
        description="When several playbooks could fire for the same user, the higher "
        "priority goes first.",
    )
    trigger: Trigger
    activation: Activation | None = Field(
        None, description="Value before the ask. Falls back to the workspace's gate."
    )
    audience: Audience = Field(default_factory=Audience)
    holdout: Percentage = Field(
        default=10.0,
        description="Share of eligible users deliberately not nudged, to measure lift.",
    )
    nudge: Nudge
    limits: Limits = Field(default_factory=Limits)
    reward: Reward | None = None
    reinforcement: list[Reinforcement] = Field(default_factory=list)


def _known_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"`{value}` is not a time zone; write an IANA name like `Europe/London`"
        ) from exc
    return value


TimeZone = Annotated[
    str,
    AfterValidator(_known_time_zone),
    Field(description="An IANA time zone, e.g. `America/New_York`."),
]


class GlobalCaps(_Strict):
    """Caps across every playbook and channel."""

    per_user: CapList = Field(default_factory=list)
    per_account: CapList = Field(default_factory=list)


def _known_budgets(
    vendor: str, known: Mapping[str, Cap]
) -> Callable[[dict[str, Cap]], dict[str, Cap]]:
    def check(budgets: dict[str, Cap]) -> dict[str, Cap]:
        unknown = sorted(set(budgets) - set(known))
        if unknown:
            raise ValueError(
                f"{vendor} has no budget {', '.join(unknown)}; its budgets are "
                + ", ".join(f"`{name}`" for name in known)
            )
        return budgets

    return check


def _budgets_field(vendor: str, known: Mapping[str, Cap]) -> Any:
    listed = "; ".join(f"`{name}`: {cap}" for name, cap in known.items())
    return Field(
        default_factory=dict,
        description=(
            f"Each of {vendor}'s budgets, shared by every worker, by name. "
            f"The defaults are the vendor's documented limits: {listed}."
        ),
    )


class CustomerIOSettings(_Strict):
    region: Literal["us", "eu"] = "us"
    budget: CapValue = Field(
        default_factory=lambda: parse_cap("3000 per 3s"),
        description="Transactional sends and Track API calls (`customerio:track`).",
    )
    budgets: Annotated[
        dict[str, CapValue],
        AfterValidator(_known_budgets("Customer.io", customerio.DEFAULT_BUDGETS)),
    ] = _budgets_field("Customer.io", customerio.DEFAULT_BUDGETS)


class BrazeSettings(_Strict):
    rest_url: str = Field(
        "https://rest.iad-01.braze.com",
        pattern=r"^https://",
        description="Your Braze instance's REST endpoint.",
    )
    budget: CapValue = Field(
        default_factory=lambda: parse_cap("250000 per 1h"),
        description="The messaging endpoints together (`braze:messaging`).",
    )
    budgets: Annotated[
        dict[str, CapValue],
        AfterValidator(_known_budgets("Braze", braze.DEFAULT_BUDGETS)),
    ] = _budgets_field("Braze", braze.DEFAULT_BUDGETS)


class IntercomSettings(_Strict):
    region: Literal["us", "eu", "au"] = "us"
    budget: CapValue = Field(
        default_factory=lambda: parse_cap("10000 per 1m"),
        description="Every call to the app's API (`intercom:api`).",
    )


class MixpanelSettings(_Strict):
    residency: Literal["us", "eu", "in"] = "us"
    project_id: int | None = None
    budget: CapValue = Field(
        default_factory=lambda: parse_cap("60 per 1h"),
        description="Engage queries for cohort members (`mixpanel:query`).",
    )
    budgets: Annotated[
        dict[str, CapValue],
        AfterValidator(_known_budgets("Mixpanel", mixpanel.DEFAULT_BUDGETS)),
    ] = _budgets_field("Mixpanel", mixpanel.DEFAULT_BUDGETS)


class AmplitudeSettings(_Strict):
    residency: Literal["us", "eu"] = Field(
        "us", description="Where the Amplitude project keeps its data: `us` or `eu`."
    )
    budget: CapValue = Field(
        default_factory=lambda: parse_cap("100 per 1s"),
        description="Uploads of referloop's events (`amplitude:upload`).",
    )
    budgets: Annotated[
        dict[str, CapValue],
        AfterValidator(_known_budgets("Amplitude", amplitude.DEFAULT_BUDGETS)),
    ] = _budgets_field("Amplitude", amplitude.DEFAULT_BUDGETS)
    download_every: Duration = Field(
        default=timedelta(hours=6),
        description="At most one download of a cohort in this long, to reconcile "
        "it (and only when Amplitude recomputed it since the last one).",
    )
    downloads_per_month: int = Field(
        500,
        ge=0,
        le=500,
        description="Cohort downloads a month, for every cohort and worker; "
        "Amplitude allows a project 500. Lower it when other tools download too.",
    )


class Vendors(_Strict):
    """Vendor settings that are not secrets; credentials come from the environment."""

    customerio: CustomerIOSettings = Field(default_factory=CustomerIOSettings)
    braze: BrazeSettings = Field(default_factory=BrazeSettings)
    intercom: IntercomSettings = Field(default_factory=IntercomSettings)
    mixpanel: MixpanelSettings = Field(default_factory=MixpanelSettings)
    amplitude: AmplitudeSettings = Field(default_factory=AmplitudeSettings)


class Fields(_Strict):
    """The fields the product sends, each with an example value.

    Templates are checked against them and previews use them as sample data.
    """

    user: dict[str, Any] = Field(default_factory=dict)
    account: dict[str, Any] = Field(default_factory=dict)
    events: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RewardPolicy(_Strict):
    """How rewards are given, and what counts as farming, for every playbook."""

    via: Literal["webhook", "customerio", "braze"] = Field(
        "webhook",
        description=(
            "Where grants go: `webhook` (the product's entitlement API), or an "
            "attribute update in `customerio` or `braze`."
        ),
    )
    farming_min_invitees: int = Field(
        5,
        ge=1,
        description="Judge a referrer for farming once this many invitees are past "
        "the grace period.",
    )
    farming_activation_below: Percentage = Field(
        default=20.0,
        description="A referrer whose judged invitees activate less than this share "
        "is farming: their grants are refused.",
    )
    farming_grace: Duration = Field(
        default=timedelta(days=14),
        description="How long an invitee has to activate before they count against "
        "their referrer.",
    )


class MetricsEvents(_Strict):
    """The product's names for the loop's events, as its analytics export has them."""

    invite_sent: str = Field("invite_sent", description="The referrer sent an invite.")
    invite_accepted: str = Field(
        "invite_accepted", description="The invitee accepted (the user is the invitee)."
    )
    invitee_activated: str = Field(
        "invitee_activated", description="The invitee reached activation."
    )
    user_activated: str | None = Field(
        None,
        description="Any user's own activation, for loop time (e.g. `Activated`).",
    )


class MetricsSettings(_Strict):
    """How `referloop report` reads an analytics export and follows each user."""

    window: Duration = Field(
        default=timedelta(days=28),
        description="How long each exposed user is followed from their first "
        "decision: invites, acceptances and activations after it are counted.",
    )
    events: MetricsEvents = Field(default_factory=MetricsEvents)
    referrer_property: str = Field(
        "referrer_id",
        min_length=1,
        description="The property of accepted and activated events that names "
        "who invited the user.",
    )
    account_property: str = Field(
        "account_id", min_length=1, description="The property that names the account."
    )
    segment_property: str = Field(
        "segment",
        min_length=1,
        description="The account property that names its segment (a plan, a size "
        "band), for `referloop report --by segment`: an `account` field of the "
        "product's events, and a property of the export's events.",
    )

    def event_kinds(self) -> dict[str, str]:
        """The export's event names, each with the funnel kind it stands for."""
        kinds = {
            self.events.invite_sent: "invite_sent",
            self.events.invite_accepted: "invite_accepted",
            self.events.invitee_activated: "invitee_activated",
        }
        if self.events.user_activated:
            kinds[self.events.user_activated] = "user_activated"
        return kinds


class Workspace(_Strict):
    """What spans all playbooks: global caps, defaults, vendors, the invite URL."""

    name: str = Field("referloop", description="A name for this workspace.")
    invite_url: str = Field(
        "https://app.example.com/invite",
        pattern=r"^https?://[^\s?#]+$",
        description="The product's invite URL; the signed token is added to it.",
    )
    time_zone: TimeZone = "UTC"
    quiet_hours: ClockRangeValue | None = Field(
        None, description="Default quiet hours in the recipient's time zone."
    )
    caps: GlobalCaps = Field(default_factory=GlobalCaps)
    activation: Activation | None = Field(
        None, description="The default activation gate for every playbook."
    )
    vendors: Vendors = Field(default_factory=Vendors)
    rewards: RewardPolicy = Field(default_factory=RewardPolicy)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    fields: Fields = Field(default_factory=Fields)


# --- Finding a model by its place in a file -------------------------------------


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the keys at `loc`, following lists and dicts."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return None
    for candidate in members_of(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _step(current: Any, part: Any) -> Any:
    for candidate in members_of(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, info in candidate.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
            if part == candidate.__name__:
                return candidate
        origin = get_origin(candidate)
        if origin is list and isinstance(part, int):
            return get_args(candidate)[0]
        if origin is dict:
            return get_args(candidate)[1]
    return current if isinstance(part, str) and not part.islower() else None


def members_of(annotation: Any) -> list[Any]:
    """Flatten Optional, unions and Annotated into the plain types they allow."""
    pending = [annotation]
    flat: list[Any] = []
    while pending:
        item = pending.pop()
        args = get_args(item)
        origin = get_origin(item)
        if origin is None or origin in (list, dict):
            flat.append(item)
        elif hasattr(item, "__metadata__"):
            pending.append(args[0])
        else:
            pending.extend(args)
    return flat

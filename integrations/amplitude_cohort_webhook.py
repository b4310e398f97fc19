"""Amplitude: the batches its Cohort Webhook destination pushes, read into pages.

Amplitude's Cohort Webhook destination POSTs one JSON batch at a time about one
cohort: `cohort_id`, `cohort_name`, `in_cohort` (true: these users entered;
false: they left), `computed_time` (Unix seconds, as text), `message_id` and
`users`, each with `user_id` and the user properties chosen in the destination.
It signs nothing: the destination sends a secret in a header the customer sets,
and the web process compares it.

`parse_cohort_webhook` turns a batch into the page the Mixpanel cohort sync
gives (`add_members` for those who entered, `remove_members` for those who
left), with the batch's `computed_time`, so that a late retry of an older batch
cannot undo a newer one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    ValidationError,
)

from integrations.base import Member, Rejected
from integrations.mixpanel import CohortSyncPage, SyncAction

VENDOR = "amplitude"
DEFAULT_ACCOUNT_PROPERTY = "account_id"
# The destination's template may nest the chosen properties under this key
# rather than beside `user_id`; both forms are read.
NESTED_PROPERTIES = "user_properties"
# Ids become parts of Redis keys: long ones are refused, not stored.
MAX_ID_CHARS = 256
_COHORT_ID = re.compile(r"[A-Za-z0-9]+")


class CohortWebhookError(ValueError):
    """A batch that cannot be used; the message names the field, never its value."""


@dataclass(frozen=True)
class CohortWebhookPage(CohortSyncPage):
    """One batch of the Cohort Webhook, as a cohort-sync page of one page.

    `session_id` is the batch's `message_id`; `computed_ms` is when Amplitude
    computed the cohort, in milliseconds since the epoch.
    """

    computed_ms: int

    @property
    def message_id(self) -> str:
        return self.session_id

    @property
    def entered(self) -> bool:
        return self.action == "add_members"


def _as_id(value: Any) -> str:
    text = _identifier(value)
    if text is None:
        raise ValueError("is not an id")
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"is longer than {MAX_ID_CHARS} characters")
    return text


def _as_cohort_id(value: Any) -> str:
    text = _as_id(value)
    if _COHORT_ID.fullmatch(text) is None:
        raise ValueError("is not a cohort id (letters and digits)")
    return text


def _as_epoch_ms(value: Any) -> int:
    """Unix seconds, as a number or as text, in milliseconds."""
    if isinstance(value, bool):
        raise ValueError("is not a time in Unix seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("is not a time in Unix seconds") from None
    if not 0 <= seconds < 1e11:
        raise ValueError("is not a time in Unix seconds")
    return int(seconds * 1000)


class _Batch(BaseModel):
    """The body of a Cohort Webhook batch, as Amplitude's default template sends it."""

    model_config = ConfigDict(extra="ignore")

    cohort_id: Annotated[str, BeforeValidator(_as_cohort_id)]
    in_cohort: StrictBool
    computed_time: Annotated[int, BeforeValidator(_as_epoch_ms)]
    message_id: Annotated[str, BeforeValidator(_as_id)]
    users: list[Any]


def parse_cohort_webhook(
    body: bytes | str | Mapping[str, Any],
    *,
    account_property: str | None = DEFAULT_ACCOUNT_PROPERTY,
) -> CohortWebhookPage:
    """Read one Cohort Webhook batch into the page the engine applies.

    A user without `user_id` becomes a `Rejected` in the page, so that one bad
    user does not refuse the batch; the user's other properties become its user
    fields, and `account_property` among them names its account.

    Raises:
        CohortWebhookError: the body is not JSON, or a field is missing or wrong.
    """
    raw = _json_object(body)
    try:
        batch = _Batch.model_validate(raw)
    except ValidationError as exc:
        raise CohortWebhookError(_first_problem(exc)) from None

    action: SyncAction = "add_members" if batch.in_cohort else "remove_members"
    members = tuple(
        _webhook_member(f"users[{index}]", item, account_property)
        for index, item in enumerate(batch.users)
    )
    return CohortWebhookPage(
        cohort=f"{VENDOR}:{batch.cohort_id}",
        project_id="",
        action=action,
        session_id=batch.message_id,
        page=1,
        total_pages=1,
        members=members,
        computed_ms=batch.computed_time,
    )


def _json_object(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)
    try:
        loaded = json.loads(body)
    except (ValueError, RecursionError):
        raise CohortWebhookError("the body is not JSON") from None
    if not isinstance(loaded, dict):
        raise CohortWebhookError("the body is not a JSON object")
    return loaded


def _first_problem(exc: ValidationError) -> str:
    """The first error by field and kind; pydantic's `input` (the value) stays out."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "the body"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"`{path}` {message}{more}"


def _webhook_member(
    where: str, item: Any, account_property: str | None
) -> Member | Rejected:
    if not isinstance(item, dict):
        return Rejected(where, "not a JSON object")
    user_id = _identifier(item.get("user_id"))
    if user_id is None or len(user_id) > MAX_ID_CHARS:
        return Rejected(where, "no usable `user_id`")
    nested = item.get(NESTED_PROPERTIES)
    if nested is not None and not isinstance(nested, dict):
        return Rejected(where, f"`{NESTED_PROPERTIES}` is not an object")

    flat = {k: v for k, v in item.items() if k not in ("user_id", NESTED_PROPERTIES)}
    user = {**(nested or {}), **flat}
    account = user.get(account_property) if account_property else None
    return Member(user_id=user_id, account_id=_identifier(account), user=user)


def _identifier(value: Any) -> str | None:
    """An id as text; None for what is missing, blank or not an id."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None

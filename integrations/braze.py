"""Braze: API-triggered campaigns and Canvases, and emails that referloop rendered.

- `POST /campaigns/trigger/send` passes the message data as `trigger_properties`;
- `POST /canvas/trigger/send` passes it as the Canvas `context` (which replaced
  `canvas_entry_properties`);
- `POST /messages/send` sends an email whose subject and body referloop rendered,
  from the app and sender address the playbook names.

Templates read the rendered subject and body in the message data too. Braze answers
a send with a `dispatch_id`, the nudge's vendor id. A trigger request reaches up to 50
recipients, so `send_many` sends the nudges of one campaign or Canvas together.

The three send endpoints share 250,000 requests an hour; `/users/track` (attributes,
events and purchases, up to 75 of each a request) has its own 3,000 every three
seconds. Every answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (Unix seconds): when nothing remains, every worker waits for the
reset. Braze takes no idempotency key, so a send that went out unanswered is
ambiguous, and the ledger alone keeps a resend out.

A thin httpx client, not `braze-client`: that pins tenacity 5, fails to import on
Python 3.11 and lacks the send endpoints.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

import httpx
from pydantic import ConfigDict, Field, field_validator, model_validator

from integrations.base import (
    SECURE,
    Check,
    ConformanceCase,
    Reference,
    RenderedNudge,
    Sent,
    VendorRequest,
    conformance_nudge,
    expect_reference,
)
from integrations.http import (
    DEFAULT_BUDGET_WAIT_MS,
    Call,
    VendorHttp,
    json_or_none,
    reset_epoch_after,
    retry_after_of,
)
from orchestrator.budgets import Budget, vendor_budgets
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap

logger = logging.getLogger(__name__)

DEFAULT_REST_URL = "https://rest.iad-01.braze.com"
HEADERS = {"Authorization": SECURE}

CAMPAIGN_PATH = "/campaigns/trigger/send"
CANVAS_PATH = "/canvas/trigger/send"
MESSAGES_PATH = "/messages/send"
USERS_TRACK_PATH = "/users/track"
MESSAGING_PATHS = (CAMPAIGN_PATH, CANVAS_PATH, MESSAGES_PATH)
# `referloop doctor` lists campaigns: it reads nothing personal and changes nothing.
CHECK_PATH = "/campaigns/list"
CHECK_PERMISSION = "campaigns.list"
SEND_PERMISSIONS = (
    "campaigns.trigger.send",
    "canvas.trigger.send",
    "messages.send",
    "users.track",
)

MESSAGING_BUDGET = "braze:messaging"
USERS_TRACK_BUDGET = "braze:users-track"
# Braze's documented defaults (api/api_limits): the three send endpoints share
# 250,000 requests an hour; /users/track takes 3,000 requests every three seconds.
DEFAULT_BUDGETS: dict[str, Cap] = {
    MESSAGING_BUDGET: parse_cap("250000 per 1h"),
    USERS_TRACK_BUDGET: parse_cap("3000 per 3s"),
}
MAX_RECIPIENTS = 50
MAX_TRACK_OBJECTS = 75

API_KEY_SETTING = "BRAZE_API_KEY"
REST_URL_SETTING = "BRAZE_REST_URL"
# A made-up key, the one `simulator.braze.BrazeSim` accepts unless told otherwise.
CONFORMANCE_API_KEY = "braze-sim-rest-api-key"

_read_reset = reset_epoch_after("X-RateLimit-Reset")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A link ends before white space, quotes or angle brackets, and never on the
# punctuation that closes a sentence around it.
_URL = re.compile(r"https?://[^\s\"'<>]*[^\s\"'<>.,;:!?)]")


class BrazeEmail(Reference):
    """An email that Braze sends as referloop rendered it (`POST /messages/send`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    app_id: str = Field(
        min_length=1,
        description="The app identifier from Settings > APIs and Identifiers.",
    )
    sender: str = Field(
        alias="from",
        min_length=1,
        description="The sender, as `Display Name <address@example.com>`.",
    )
    reply_to: str | None = Field(
        default=None,
        min_length=1,
        description="The reply-to address; the workspace's default when left out.",
    )

    @field_validator("sender")
    @classmethod
    def _is_an_address(cls, sender: str) -> str:
        if "@" not in sender:
            raise ValueError("write `from` as `Display Name <address@example.com>`")
        return sender


class BrazeReference(Reference):
    """What a playbook writes under `nudge.braze`: a campaign, a Canvas or an email."""

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
    email: BrazeEmail | None = Field(
        default=None,
        description=(
            "An email with the subject and body the playbook renders, sent with "
            "`app_id` and `from` (and `reply_to`, if given)."
        ),
    )

    @model_validator(mode="after")
    def _has_exactly_one_kind(self) -> BrazeReference:
        kinds = (self.campaign, self.canvas, self.email)
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("give exactly one of `campaign`, `canvas` or `email`")
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
        """Return the request that sends `nudge` as the playbook's reference says.

        Raises:
            ConfigurationError: the nudge has no `nudge.braze` reference.
        """
        reference = expect_reference(nudge, BrazeReference, self.name)

        if reference.email is not None:
            return self._post(MESSAGES_PATH, email_body(nudge, reference.email))
        path, body = trigger_request(reference, [nudge])
        return self._post(path, body)

    def _post(self, path: str, body: dict[str, Any]) -> VendorRequest:
        url = f"{self.rest_url}{path}"
        return VendorRequest(method="POST", url=url, json=body, headers=dict(HEADERS))


def trigger_request(
    reference: BrazeReference, nudges: Sequence[RenderedNudge]
) -> tuple[str, dict[str, Any]]:
    """The path and body that trigger the reference's campaign or Canvas for
    `nudges`, each recipient with its own message data."""
    if reference.campaign is not None:
        recipients = [_recipient(nudge, "trigger_properties") for nudge in nudges]
        body = {"campaign_id": reference.campaign, "recipients": recipients}
        return CAMPAIGN_PATH, body

    assert reference.canvas is not None  # the validator allows no other case
    recipients = [_recipient(nudge, "context") for nudge in nudges]
    body = {"canvas_id": reference.canvas, "recipients": recipients}
    return CANVAS_PATH, body


def _recipient(nudge: RenderedNudge, data_key: str) -> dict[str, Any]:
    return {"external_user_id": nudge.recipient.user_id, data_key: nudge.message_data()}


def email_body(nudge: RenderedNudge, email: BrazeEmail) -> dict[str, Any]:
    """The `/messages/send` body for one recipient of a rendered email."""
    message: dict[str, Any] = {"app_id": email.app_id, "from": email.sender}
    if email.reply_to is not None:
        message["reply_to"] = email.reply_to
    if nudge.subject is not None:
        message["subject"] = nudge.subject
    message["body"] = as_html(nudge.body)
    message["plaintext_body"] = nudge.body
    return {
        "external_user_ids": [nudge.recipient.user_id],
        "messages": {"email": message},
    }


def as_html(text: str) -> str:
    """The rendered text as the HTML body Braze requires: paragraphs, line breaks
    and links kept, everything else escaped."""
    paragraphs = [part.strip() for part in _PARAGRAPH_BREAK.split(text)]
    return "".join(
        "<p>" + "<br>".join(_linked(line) for line in part.splitlines()) + "</p>"
        for part in paragraphs
        if part
    )


def _linked(line: str) -> str:
    pieces: list[str] = []
    last = 0
    for match in _URL.finditer(line):
        url = html.escape(match.group())
        pieces += [
            html.escape(line[last : match.start()]),
            f'<a href="{url}">{url}</a>',
        ]
        last = match.end()
    pieces.append(html.escape(line[last:]))
    return "".join(pieces)


@dataclass(frozen=True)
class _Batch:
    """One send request, and the positions of the nudges it carries."""

    path: str
    body: dict[str, Any]
    indexes: tuple[int, ...]
    what: str


class BrazeSender(BrazeChannel):
    """Send nudges through Braze, and record attributes and events there.

    `api_key` is a REST API key of the workspace, with the permissions
    `campaigns.trigger.send`, `canvas.trigger.send`, `messages.send` and
    `users.track` (and `campaigns.list` for `referloop doctor`). With a `store`,
    requests wait for budgets shared by every worker: `DEFAULT_BUDGETS`, each
    replaced by the cap of the same name in `budgets`. Without one, no budget
    applies. Without a `timeout`, the shared one applies.

    Raises:
        ConfigurationError: no key, or a budget name Braze has no limit for.
    """

    def __init__(
        self,
        api_key: str,
        rest_url: str = DEFAULT_REST_URL,
        *,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        timeout: httpx.Timeout | None = None,
        budget_wait_ms: int = DEFAULT_BUDGET_WAIT_MS,
    ) -> None:
        if not api_key:
            raise ConfigurationError(
                f"Braze needs a REST API key: set {API_KEY_SETTING}"
            )
        super().__init__(rest_url)
        self._budgets = vendor_budgets(store, "Braze", DEFAULT_BUDGETS, budgets)
        self.http = VendorHttp(
            self.name,
            self.rest_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            budget_wait_ms=budget_wait_ms,
            reset_after=_read_reset,
            on_response=self._steer,
        )

    def close(self) -> None:
        self.http.close()

    # --- sending ----------------------------------------------------------------

    def send(self, nudge: RenderedNudge) -> Sent:
        """Send one nudge; Braze's `dispatch_id` is its vendor id.

        Raises:
            ConfigurationError: the nudge has no `nudge.braze` reference.
            TransientError: try later, after `retry_after_s` when Braze said.
            PermanentError: Braze refused it, or will not send it.
            AmbiguousError: it went out and no answer came back.
        """
        outcome = self.send_many([nudge])[0]
        if isinstance(outcome, VendorError):
            raise outcome
        return outcome

    def send_many(self, nudges: Sequence[RenderedNudge]) -> list[Sent | VendorError]:
        """Send `nudges` in as few requests as Braze allows; one outcome per nudge,
        in the order given.

        The nudges of one campaign or Canvas go together, up to 50 to a request,
        and Braze's answer to a request (its `dispatch_id`, or an error) stands for
        every nudge in it. An email goes alone: its content is its recipient's own.
        Once Braze or the budget asks to wait, the requests not yet made are not
        made, and their nudges get the same `TransientError`.

        Raises:
            ConfigurationError: a nudge has no `nudge.braze` reference; nothing
                was sent.
        """
        outcomes: dict[int, Sent | VendorError] = {}
        waiting: VendorError | None = None
        for batch in self._batches(nudges):
            outcome = waiting or self._deliver(batch)
            if _asks_to_wait(outcome):
                waiting = outcome
            outcomes.update(dict.fromkeys(batch.indexes, outcome))

        return [outcomes[index] for index in range(len(nudges))]

    def _batches(self, nudges: Sequence[RenderedNudge]) -> list[_Batch]:
        references = [expect_reference(n, BrazeReference, self.name) for n in nudges]
        batches: list[_Batch] = []
        triggers: dict[tuple[str | None, str | None], list[int]] = {}
        for index, reference in enumerate(references):
            if reference.email is not None:
                body = email_body(nudges[index], reference.email)
                batches.append(_Batch(MESSAGES_PATH, body, (index,), "an email"))
            else:
                key = (reference.campaign, reference.canvas)
                triggers.setdefault(key, []).append(index)

        for indexes in triggers.values():
            for chunk in _chunks(indexes, MAX_RECIPIENTS):
                reference = references[chunk[0]]
                path, body = trigger_request(reference, [nudges[i] for i in chunk])
                batches.append(_Batch(path, body, chunk, _trigger_name(reference)))
        return batches

    def _deliver(self, batch: _Batch) -> Sent | VendorError:
        count = len(batch.indexes)
        budget = self._budgets.get(MESSAGING_BUDGET)
        try:
            response = self.http.request(
                "POST", batch.path, json=batch.body, budget=budget
            )
        except VendorError as exc:
            logger.info(
                "Braze did not take %d nudge(s) for %s: %s", count, batch.what, exc
            )
            return exc

        outcome = self._outcome(batch, response)
        if isinstance(outcome, VendorError):
            logger.warning(
                "Braze took %d nudge(s) for %s: %s", count, batch.what, outcome
            )
        else:
            logger.info(
                "Braze took %d nudge(s) for %s as dispatch %s.",
                count,
                batch.what,
                outcome.vendor_id,
            )
        return outcome

    def _outcome(self, batch: _Batch, response: httpx.Response) -> Sent | VendorError:
        answer = _json_object(response)
        # Braze documents a `notice` on a trigger of an archived, stopped or paused
        # Canvas: the request is taken with a 201, and nothing is sent.
        if batch.path == CANVAS_PATH and answer.get("notice"):
            return PermanentError(
                self.name,
                f"POST {CANVAS_PATH}: {batch.what} is archived, stopped or paused; "
                "Braze sends nothing until it runs again",
                response.status_code,
            )
        _note_minor_errors(answer, batch.path)

        dispatch_id = answer.get("dispatch_id")
        return Sent(vendor_id=dispatch_id if isinstance(dispatch_id, str) else None)

    # --- user data -------------------------------------------------------------

    def track(
        self,
        *,
        attributes: Sequence[Mapping[str, Any]] = (),
        events: Sequence[Mapping[str, Any]] = (),
        purchases: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        """Record attributes, events and purchases with `POST /users/track`.

        Braze takes up to 75 of each kind a request, so long lists go in order, in
        as many requests as the longest needs. Returns how many were made. Not
        safe to repeat: events and purchases would count twice, and increments to
        attributes apply twice.

        Raises:
            TransientError, PermanentError, AmbiguousError: for the first request
                that failed; the requests before it were taken.
        """
        bodies = list(_track_bodies(attributes, events, purchases))
        budget = self._budgets.get(USERS_TRACK_BUDGET)
        for number, body in enumerate(bodies, start=1):
            try:
                response = self.http.request(
                    "POST", USERS_TRACK_PATH, json=body, budget=budget
                )
            except VendorError:
                logger.warning(
                    "Braze /users/track failed on request %d of %d; "
                    "the %d before it were taken.",
                    number,
                    len(bodies),
                    number - 1,
                )
                raise
            _note_minor_errors(_json_object(response), USERS_TRACK_PATH)

        logger.info("Braze /users/track took %d request(s).", len(bodies))
        return len(bodies)

    # --- rate headers ----------------------------------------------------------

    def _steer(self, response: httpx.Response) -> None:
        """Hold an endpoint's budget off until Braze's window resets, once Braze
        says no request remains in it (`X-RateLimit-Remaining: 0`)."""
        budget = self._budget_for(response.request.url.path)
        if budget is None or not _is_used_up(response.headers):
            return

        wait_s = retry_after_of(response.headers, _read_reset)
        if not wait_s:
            return
        budget.hold_off(math.ceil(wait_s * 1000))
        logger.info(
            "Braze has no requests left for %s; every worker waits %.0f s.",
            budget.name,
            wait_s,
        )

    def _budget_for(self, path: str) -> Budget | None:
        if path.endswith(USERS_TRACK_PATH):
            return self._budgets.get(USERS_TRACK_BUDGET)
        if path.endswith(MESSAGING_PATHS):
            return self._budgets.get(MESSAGING_BUDGET)
        return None

    # --- doctor and conformance ------------------------------------------------

    def check(self) -> list[Check]:
        """Tell whether the REST API key works, by listing campaigns (read-only)."""
        what = "REST API key"
        try:
            self.http.request("GET", CHECK_PATH, call=Call(safe_to_repeat=True))
        except PermanentError as exc:
            return [Check(self.name, what, False, _refusal_hint(exc.status))]
        except VendorError as exc:
            detail = f"{exc}; check {REST_URL_SETTING} ({self.rest_url})"
            return [Check(self.name, what, False, detail)]

        return [Check(self.name, what, True, f"accepted by {self.rest_url}")]

    @classmethod
    def conformance_cases(
        cls, base_url: str, store: Store, budget: Cap
    ) -> list[ConformanceCase]:
        """One case per kind of send (campaign, Canvas, email), against the
        simulated Braze at `base_url`, with `budget` on the send endpoints."""
        email = BrazeEmail(app_id="3f5c1d2e-app", sender="Acme <team@acme.example>")
        references = {
            "campaign": BrazeReference(campaign="0b7e2c34-campaign"),
            "canvas": BrazeReference(canvas="5d1f9a70-canvas"),
            "email": BrazeReference(email=email),
        }
        budgets = {MESSAGING_BUDGET: budget}
        return [
            ConformanceCase(
                label=f"braze-{kind}",
                sender=cls(CONFORMANCE_API_KEY, base_url, store=store, budgets=budgets),
                nudge=conformance_nudge(reference),
                secrets=(CONFORMANCE_API_KEY,),
            )
            for kind, reference in references.items()
        ]


def _chunks(indexes: list[int], size: int) -> Iterator[tuple[int, ...]]:
    for start in range(0, len(indexes), size):
        yield tuple(indexes[start : start + size])


def _trigger_name(reference: BrazeReference) -> str:
    if reference.campaign is not None:
        return f"campaign `{reference.campaign}`"
    return f"Canvas `{reference.canvas}`"


def _track_bodies(
    attributes: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    purchases: Sequence[Mapping[str, Any]],
) -> Iterator[dict[str, Any]]:
    kinds = {"attributes": attributes, "events": events, "purchases": purchases}
    longest = max(len(items) for items in kinds.values())
    for start in range(0, longest, MAX_TRACK_OBJECTS):
        parts = {
            kind: items[start : start + MAX_TRACK_OBJECTS]
            for kind, items in kinds.items()
        }
        yield {kind: list(part) for kind, part in parts.items() if part}


def _is_used_up(headers: httpx.Headers) -> bool:
    remaining = headers.get("x-ratelimit-remaining")
    try:
        return remaining is not None and int(remaining.strip()) <= 0
    except ValueError:
        return False


def _note_minor_errors(answer: Mapping[str, Any], path: str) -> None:
    # Braze takes a request with non-fatal errors and still answers 2xx; the
    # errors may name users, so only their number is logged.
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        logger.warning(
            "Braze took POST %s with %d non-fatal error(s).", path, len(errors)
        )


def _asks_to_wait(outcome: Sent | VendorError) -> TypeGuard[TransientError]:
    """A 429, or a budget used up: every request after it would wait as well."""
    return isinstance(outcome, TransientError) and outcome.retry_after_s is not None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    answer = json_or_none(response)
    return answer if isinstance(answer, dict) else {}


def _refusal_hint(status: int | None) -> str:
    if status == 401:
        return (
            f"Braze refused the key (401): set {API_KEY_SETTING} to a REST API key "
            f"of this workspace, on the instance {REST_URL_SETTING} points to"
        )
    if status == 403:
        sending = ", ".join(f"`{name}`" for name in SEND_PERMISSIONS)
        return (
            f"the key lacks the `{CHECK_PERMISSION}` permission (403), which this "
            f"check uses; sending needs {sending}: add them to the key in Braze "
            "(Settings > APIs and Identifiers)"
        )
    if status == 404:
        return f"Braze answered 404: check {REST_URL_SETTING} and {API_KEY_SETTING}"
    return f"Braze refused the check ({status}): check {API_KEY_SETTING}"

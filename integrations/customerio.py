"""Customer.io: a transactional message, an API-triggered broadcast or a Track event.

A playbook chooses one per nudge (see DESIGN.md, "Customer.io: transactional send or
Track event"):

- `transactional_message`: App API `POST /v1/send/email` (or `/v1/send/push`,
  `/v1/send/in_app` with `message_type`), immediate, not deduped;
- `broadcast`: App API `POST /v1/campaigns/{id}/triggers`, one per 10 seconds;
- `event`: Track API `POST /api/v1/customers/{identifier}/events`, deduped by its
  `id`, a ULID derived from the delivery key, so a resend is ignored.

The region (US or EU) is a workspace setting, so it is a channel setting, not a key of
the playbook.

Sending is a thin httpx client (`VendorHttp`) per API: the App API with
`Authorization: Bearer <app api key>`, the Track API with HTTP Basic
`site_id:track_api_key`. The Track API also takes identify calls and batches of
identify and event operations (`POST /api/v2/batch`). Not the `customerio` SDK: its
one exception type carries the request body (emails, message data) into messages
and logs, and it retries POSTs by itself, which would repeat transactional sends
that Customer.io does not dedupe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, PositiveInt, StringConstraints, model_validator

from integrations.base import (
    SECURE,
    Check,
    ConformanceCase,
    Recipient,
    Reference,
    RenderedNudge,
    Sent,
    VendorRequest,
    conformance_nudge,
    expect_reference,
)
from integrations.http import Call, VendorHttp, json_or_none
from orchestrator.budgets import vendor_budgets
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

APP_URLS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
TRACK_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
HEADERS = {"Authorization": SECURE}

# https://github.com/ulid/spec: 48 bits of milliseconds, then 80 random bits,
# written as 26 characters of Crockford's base32.
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26
ULID_MAX_TIME_MS = 2**48 - 1

# Shared by every worker, in Redis. Customer.io documents the Track API at 1,000
# requests a second, not strictly enforced; transactional sends share that soft
# budget here (DESIGN.md). API-triggered broadcasts: one per 10 seconds; the other
# App API calls: 10 per second.
TRACK_BUDGET = "customerio:track"
BROADCAST_BUDGET = "customerio:broadcast"
APP_BUDGET = "customerio:app"
DEFAULT_BUDGETS: dict[str, Cap] = {
    TRACK_BUDGET: Cap(3000, timedelta(seconds=3)),
    BROADCAST_BUDGET: Cap(1, timedelta(seconds=10)),
    APP_BUDGET: Cap(10, timedelta(seconds=1)),
}

# Track API v2: a batch request must be smaller than 500 KB and each operation in
# it 32 KB or smaller. Counted in bytes of 1,000, which keeps a margin if
# Customer.io counts in 1,024.
MAX_BATCH_BYTES = 500_000
MAX_OPERATION_BYTES = 32_000
_BATCH_OPEN = b'{"batch":['
_BATCH_CLOSE = b"]}"
MAX_LOGGED_ROWS = 10

# The settings' environment variables, named in errors and doctor hints.
APP_KEY_VARIABLE = "CUSTOMERIO_APP_API_KEY"
SITE_ID_VARIABLE = "CUSTOMERIO_SITE_ID"
TRACK_KEY_VARIABLE = "CUSTOMERIO_TRACK_API_KEY"

# The credentials of the conformance cases; the simulated workspace accepts them.
CONFORMANCE_APP_API_KEY = "fake-customerio-app-key-5d0c"
CONFORMANCE_SITE_ID = "fake-customerio-site-71a2"
CONFORMANCE_TRACK_API_KEY = "fake-customerio-track-key-c94e"

Region = Literal["us", "eu"]
Api = Literal["app", "track"]
MessageType = Literal["email", "push", "in_app"]
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
    message_type: MessageType = Field(
        default="email",
        description=(
            "What the transactional message is: `email` (to the user's address), "
            "`push` (to the user's devices) or `in_app` (shown by Customer.io's "
            "SDK in the product). Only with `transactional_message`."
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

    @model_validator(mode="after")
    def _message_type_only_for_transactional(self) -> CustomerIOReference:
        chosen = "message_type" in self.model_fields_set
        if chosen and self.transactional_message is None:
            raise ValueError("`message_type` applies only to `transactional_message`")
        return self


@dataclass(frozen=True)
class _Planned:
    """One call to Customer.io: which API, where, what, and how it may be treated.

    `id_field` names the key of the answer that holds Customer.io's id for it.
    """

    kind: str
    api: Api
    method: str
    path: str
    body: dict[str, Any] | None
    budget: str
    safe_to_repeat: bool = False
    id_field: str | None = None


@dataclass(frozen=True)
class Identify:
    """Set attributes on a person, as one operation of a Track batch."""

    user_id: str
    attributes: Mapping[str, Any]

    def operation(self) -> dict[str, Any]:
        return {
            "type": "person",
            "identifiers": {"id": self.user_id},
            "action": "identify",
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class TrackEvent:
    """Report an event for a person, as one operation of a Track batch.

    `key` is a stable key of what the event reports (a delivery key): the event's
    `id` is a ULID derived from it, so Customer.io drops a resend.
    """

    user_id: str
    name: str
    key: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def operation(self) -> dict[str, Any]:
        return {
            "type": "person",
            "identifiers": {"id": self.user_id},
            "action": "event",
            "name": self.name,
            "id": ulid_from_key(self.key),
            "attributes": dict(self.data),
        }


Operation = Identify | TrackEvent


@dataclass(frozen=True)
class BatchFailure:
    """An operation of a batch that Customer.io did not take, by its index.

    `reason` holds Customer.io's field and reason (never the operation's content);
    `retryable` says whether sending it again may succeed.
    """

    index: int
    reason: str
    retryable: bool = False


@dataclass(frozen=True)
class BatchResult:
    """What became of a batch: the indexes taken, the failures, the requests made."""

    done: tuple[int, ...]
    failed: tuple[BatchFailure, ...]
    requests: int

    @property
    def failed_indexes(self) -> tuple[int, ...]:
        return tuple(failure.index for failure in self.failed)


class CustomerIOChannel:
    """Build, and with credentials send, Customer.io App API and Track API requests.

    `app_url` and `track_url` replace the region's base URLs, for a simulated vendor.
    Without credentials the channel still builds requests (`referloop preview`);
    sending then names the missing setting. Without a `store` no budget is applied;
    `budgets` replaces the caps of `DEFAULT_BUDGETS` by name.
    """

    name: ClassVar[str] = "customerio"
    reference_model: ClassVar[type[Reference] | None] = CustomerIOReference

    def __init__(
        self,
        region: Region = "us",
        app_url: str | None = None,
        track_url: str | None = None,
        *,
        app_api_key: str | None = None,
        site_id: str | None = None,
        track_api_key: str | None = None,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
    ) -> None:
        self.region = region
        self.app_url = (app_url or APP_URLS[region]).rstrip("/")
        self.track_url = (track_url or TRACK_URLS[region]).rstrip("/")
        self._budgets = vendor_budgets(store, "Customer.io", DEFAULT_BUDGETS, budgets)
        self._app = _app_client(self.app_url, app_api_key)
        self._track = _track_client(self.track_url, site_id, track_api_key)

    def close(self) -> None:
        """Release the HTTP clients; the channel can still build requests."""
        for client in (self._app, self._track):
            if client is not None:
                client.close()

    # --- building -------------------------------------------------------------

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the request for the kind of send the playbook chose.

        Raises:
            ConfigurationError: the nudge has no `nudge.customerio` reference.
            PermanentError: a transactional email, but the user has no email.
        """
        planned = self._plan(nudge)
        base = self.app_url if planned.api == "app" else self.track_url
        url = f"{base}{planned.path}"
        return VendorRequest(
            method=planned.method, url=url, json=planned.body, headers=dict(HEADERS)
        )

    def _plan(self, nudge: RenderedNudge) -> _Planned:
        reference = expect_reference(nudge, CustomerIOReference, self.name)

        if reference.transactional_message is not None:
            return self._transactional(
                nudge, reference.transactional_message, reference.message_type
            )
        if reference.broadcast is not None:
            return self._broadcast(nudge, reference.broadcast)
        assert reference.event is not None  # the validator allows no other case
        return self._event(nudge, reference.event)

    def _transactional(
        self, nudge: RenderedNudge, message: int | str, message_type: MessageType
    ) -> _Planned:
        recipient = nudge.recipient
        body: dict[str, Any] = {"transactional_message_id": message}
        if message_type == "email":
            body["to"] = self._email_of(recipient, message)
        body["identifiers"] = {"id": recipient.user_id}
        body["message_data"] = nudge.message_data()

        return _Planned(
            kind=f"transactional {message_type}",
            api="app",
            method="POST",
            path=f"/v1/send/{message_type}",
            body=body,
            budget=TRACK_BUDGET,
            id_field="delivery_id",
        )

    def _email_of(self, recipient: Recipient, message: int | str) -> str:
        if recipient.email is None:
            raise PermanentError(
                self.name,
                f"transactional message `{message}` needs an email for user "
                f"{recipient.user_id}, and none is known",
            )
        return recipient.email

    def _broadcast(self, nudge: RenderedNudge, broadcast: int) -> _Planned:
        body = {"ids": [nudge.recipient.user_id], "data": nudge.message_data()}
        return _Planned(
            kind="broadcast trigger",
            api="app",
            method="POST",
            path=f"/v1/campaigns/{broadcast}/triggers",
            body=body,
            budget=BROADCAST_BUDGET,
            id_field="id",
        )

    def _event(self, nudge: RenderedNudge, event: str) -> _Planned:
        body = {
            "name": event,
            "data": nudge.message_data(),
            "id": ulid_from_key(nudge.delivery_key),
        }
        # Customer.io drops an event whose `id` it has seen, so a repeat is safe.
        return _Planned(
            kind="event",
            api="track",
            method="POST",
            path=f"{_customer_path(nudge.recipient.user_id)}/events",
            body=body,
            budget=TRACK_BUDGET,
            safe_to_repeat=True,
        )

    # --- sending --------------------------------------------------------------

    def send(self, nudge: RenderedNudge) -> Sent:
        """Deliver `nudge` as the playbook chose and return Customer.io's id for it.

        The id is the transactional delivery id or the broadcast trigger id; an
        event has none. A 2xx whose body cannot be read still counts as sent.

        Raises:
            ConfigurationError: no reference, or a credential is not set.
            PermanentError: Customer.io refused it, or a transactional email has
                no address to go to (nothing is sent then).
            TransientError: try again later, after `retry_after_s` when known.
            AmbiguousError: a transactional send or broadcast went out unanswered.
        """
        planned = self._plan(nudge)

        response = self._call(planned)

        answer = json_or_none(response)
        sent = Sent(vendor_id=_id_in(answer, planned.id_field))
        logger.info(
            "Sent delivery %s through customerio (%s, status %s).",
            nudge.delivery_key,
            planned.kind,
            response.status_code,
        )
        return sent

    def identify(self, user_id: str, attributes: Mapping[str, Any]) -> None:
        """Add or update a person's attributes (`PUT /api/v1/customers/{id}`).

        Customer.io documents string, integer and boolean values. Setting the same
        attributes twice is setting them once, so an unanswered call is retried.

        Raises:
            ConfigurationError: the Track API credentials are not set.
            PermanentError, TransientError: as `send`.
        """
        planned = _Planned(
            kind="identify",
            api="track",
            method="PUT",
            path=_customer_path(user_id),
            body=dict(attributes),
            budget=TRACK_BUDGET,
            safe_to_repeat=True,
        )
        response = self._call(planned)
        logger.info(
            "Identified user %s at customerio (status %s).",
            user_id,
            response.status_code,
        )

    def _call(self, planned: _Planned) -> httpx.Response:
        client = self._client(planned.api)
        return client.request(
            planned.method,
            planned.path,
            json=planned.body,
            budget=self._budgets.get(planned.budget),
            call=Call(safe_to_repeat=planned.safe_to_repeat),
        )

    def _client(self, api: Api) -> VendorHttp:
        if api == "app":
            if self._app is None:
                raise ConfigurationError(
                    f"customerio: the App API key is not set ({APP_KEY_VARIABLE})"
                )
            return self._app
        if self._track is None:
            raise ConfigurationError(
                "customerio: the Track API credentials are not set "
                f"({SITE_ID_VARIABLE} and {TRACK_KEY_VARIABLE})"
            )
        return self._track

    # --- batches --------------------------------------------------------------

    def batch(self, operations: Sequence[Operation]) -> BatchResult:
        """Send identify and event operations through `POST /api/v2/batch`.

        Operations go in as few requests as fit under 500 KB each. One over 32 KB
        is refused on its own and never sent. A `207` answer names the rows it
        refused: they are reported by their index in `operations`, and the rest
        count as done; nothing is sent twice. Once a request is rate limited,
        unanswered, failing on Customer.io's side or refused for its credentials,
        the later requests are not sent and their rows are reported as retryable.

        Raises:
            ConfigurationError: the Track API credentials are not set.
        """
        client = self._client("track")
        encoded, failed = _encode_operations(operations)
        done: list[int] = []
        requests = 0
        stop: VendorError | None = None

        for chunk in _chunks(encoded):
            if stop is not None:
                failed += _failures(chunk, f"not sent after: {stop}", retryable=True)
                continue
            requests += 1
            try:
                taken, refused = self._send_chunk(client, chunk)
            except VendorError as error:
                retryable = not isinstance(error, PermanentError)
                failed += _failures(chunk, str(error), retryable)
                stop = error if _stops_a_batch(error) else None
                continue
            done += taken
            failed += refused

        result = BatchResult(
            done=tuple(sorted(done)),
            failed=tuple(sorted(failed, key=lambda failure: failure.index)),
            requests=requests,
        )
        self._log_batch(result, len(operations))
        return result

    def _send_chunk(
        self, client: VendorHttp, chunk: list[tuple[int, bytes]]
    ) -> tuple[list[int], list[BatchFailure]]:
        body = _BATCH_OPEN + b",".join(encoded for _, encoded in chunk) + _BATCH_CLOSE
        # Identify sets the same attributes again and events carry their dedupe
        # `id`, so a batch sent twice is taken once.
        response = client.request(
            "POST",
            "/api/v2/batch",
            content=body,
            headers={"Content-Type": "application/json"},
            budget=self._budgets.get(TRACK_BUDGET),
            call=Call(safe_to_repeat=True),
        )
        indexes = [index for index, _ in chunk]
        if response.status_code != 207:
            return indexes, []
        return _rows_of_207(indexes, json_or_none(response))

    def _log_batch(self, result: BatchResult, count: int) -> None:
        logger.info(
            "Sent a batch of %d operations to customerio in %d requests: "
            "%d taken, %d failed.",
            count,
            result.requests,
            len(result.done),
            len(result.failed),
        )
        if result.failed:
            shown = result.failed_indexes[:MAX_LOGGED_ROWS]
            logger.warning(
                "customerio did not take %d batch rows (first: %s).",
                len(result.failed),
                ", ".join(str(index) for index in shown),
            )

    # --- doctor ---------------------------------------------------------------

    def check(self) -> list[Check]:
        """Say whether the Track credentials and the App API key work.

        Each is tried with a read-only call: `GET /api/v1/accounts/region` (Basic)
        and `GET /v1/transactional` (the list of transactional messages, Bearer).
        A setting that is missing is reported as such; no secret is printed.
        """
        return [self._check_track(), self._check_app()]

    def _check_track(self) -> Check:
        what = "Track API credentials"
        setting = f"{SITE_ID_VARIABLE} and {TRACK_KEY_VARIABLE}"
        if self._track is None:
            detail = f"not set: Track events cannot be sent; set {setting} for them"
            return Check(self.name, what, ok=self._app is not None, detail=detail)

        try:
            response = self._call(_read("track", "/api/v1/accounts/region"))
        except VendorError as error:
            return Check(self.name, what, ok=False, detail=_why(error, setting))

        region = _field_of(json_or_none(response), "region")
        if region is not None and region != self.region:
            detail = (
                f"they belong to the `{region}` region, but the channel is set to "
                f"`{self.region}`: set the Customer.io region to `{region}`"
            )
            return Check(self.name, what, ok=False, detail=detail)
        return Check(self.name, what, ok=True, detail=f"region `{self.region}`")

    def _check_app(self) -> Check:
        what = "App API key"
        if self._app is None:
            detail = (
                "not set: transactional sends and broadcasts cannot be sent; set "
                f"{APP_KEY_VARIABLE} for them"
            )
            return Check(self.name, what, ok=self._track is not None, detail=detail)

        try:
            response = self._call(_read("app", "/v1/transactional"))
        except VendorError as error:
            return Check(
                self.name, what, ok=False, detail=_why(error, APP_KEY_VARIABLE)
            )

        messages = _field_of(json_or_none(response), "messages")
        count = len(messages) if isinstance(messages, list) else 0
        detail = f"transactional messages listed: {count}"
        return Check(self.name, what, ok=True, detail=detail)

    # --- conformance ----------------------------------------------------------

    @classmethod
    def conformance_cases(
        cls, base_url: str, store: Store, budget: Cap
    ) -> list[ConformanceCase]:
        """One case per kind of send, against the simulated Customer.io at
        `base_url` (both APIs), with `budget` as every budget's cap."""
        secrets = (
            CONFORMANCE_APP_API_KEY,
            CONFORMANCE_SITE_ID,
            CONFORMANCE_TRACK_API_KEY,
        )
        references = {
            "transactional email": CustomerIOReference(transactional_message=3),
            "transactional push": CustomerIOReference(
                transactional_message="invite_reviewers", message_type="push"
            ),
            "transactional in-app": CustomerIOReference(
                transactional_message=4, message_type="in_app"
            ),
            "broadcast": CustomerIOReference(broadcast=12),
            "event": CustomerIOReference(event="invite_nudge"),
        }
        return [
            ConformanceCase(
                label=f"customerio {label}",
                sender=cls._for_conformance(base_url, store, budget),
                nudge=conformance_nudge(reference),
                secrets=secrets,
                dedupes=reference.event is not None,
            )
            for label, reference in references.items()
        ]

    @classmethod
    def _for_conformance(
        cls, base_url: str, store: Store, budget: Cap
    ) -> CustomerIOChannel:
        return cls(
            app_url=base_url,
            track_url=base_url,
            app_api_key=CONFORMANCE_APP_API_KEY,
            site_id=CONFORMANCE_SITE_ID,
            track_api_key=CONFORMANCE_TRACK_API_KEY,
            store=store,
            budgets=dict.fromkeys(DEFAULT_BUDGETS, budget),
        )


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


# --- helpers ------------------------------------------------------------------


def _app_client(base_url: str, key: str | None) -> VendorHttp | None:
    if not key:
        return None
    headers = {"Authorization": f"Bearer {key}"}
    return VendorHttp(CustomerIOChannel.name, base_url, headers=headers)


def _track_client(
    base_url: str, site_id: str | None, key: str | None
) -> VendorHttp | None:
    if not site_id or not key:
        return None
    return VendorHttp(CustomerIOChannel.name, base_url, auth=(site_id, key))


def _customer_path(user_id: str) -> str:
    # A user id with a slash stays one path segment.
    return f"/api/v1/customers/{quote(user_id, safe='')}"


def _read(api: Api, path: str) -> _Planned:
    budget = TRACK_BUDGET if api == "track" else APP_BUDGET
    return _Planned(
        kind="read",
        api=api,
        method="GET",
        path=path,
        body=None,
        budget=budget,
        safe_to_repeat=True,
    )


def _id_in(answer: Any, id_field: str | None) -> str | None:
    value = _field_of(answer, id_field) if id_field else None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    return None


def _field_of(answer: Any, name: str) -> Any:
    return answer.get(name) if isinstance(answer, dict) else None


def _why(error: VendorError, setting: str) -> str:
    if isinstance(error, PermanentError) and error.status in (401, 403):
        return f"refused ({error.status}): check {setting}"
    if isinstance(error, TransientError):
        return f"not reachable or failing now: {error}"
    return str(error)


def _encode_operations(
    operations: Sequence[Operation],
) -> tuple[list[tuple[int, bytes]], list[BatchFailure]]:
    """Each operation as the bytes that go into the batch, or refused on its own."""
    encoded: list[tuple[int, bytes]] = []
    refused: list[BatchFailure] = []
    for index, operation in enumerate(operations):
        try:
            data = _compact(operation.operation())
        except (TypeError, ValueError):
            refused.append(BatchFailure(index, "it cannot be written as JSON"))
            continue
        if len(data) > MAX_OPERATION_BYTES:
            reason = f"{len(data)} bytes, over the {MAX_OPERATION_BYTES} allowed"
            refused.append(BatchFailure(index, reason))
            continue
        encoded.append((index, data))
    return encoded, refused


def _compact(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _chunks(
    encoded: list[tuple[int, bytes]],
) -> Iterator[list[tuple[int, bytes]]]:
    """Group operations, in order, into batch bodies under `MAX_BATCH_BYTES`."""
    chunk: list[tuple[int, bytes]] = []
    size = len(_BATCH_OPEN) + len(_BATCH_CLOSE)
    for item in encoded:
        grown = size + len(item[1]) + (1 if chunk else 0)
        if chunk and grown > MAX_BATCH_BYTES:
            yield chunk
            chunk, grown = [], len(_BATCH_OPEN) + len(_BATCH_CLOSE) + len(item[1])
        chunk.append(item)
        size = grown
    if chunk:
        yield chunk


def _failures(
    chunk: list[tuple[int, bytes]], reason: str, retryable: bool
) -> list[BatchFailure]:
    return [BatchFailure(index, reason, retryable) for index, _ in chunk]


def _stops_a_batch(error: VendorError) -> bool:
    """Refused credentials fail every request; so does a vendor that is slow or
    down, and more requests only add to its load. A request refused for what it
    holds says nothing about the next one."""
    if isinstance(error, PermanentError):
        return error.status in (401, 403)
    return True


def _rows_of_207(
    indexes: list[int], answer: Any
) -> tuple[list[int], list[BatchFailure]]:
    """Read `{"errors": [{"batch_index", "reason", "field", ...}]}` row by row.

    `batch_index` counts within the request; `indexes` maps it back to the
    caller's operations. An answer that cannot be read leaves every row of the
    request in doubt; each is safe to send again.
    """
    errors = _field_of(answer, "errors")
    if not isinstance(errors, list):
        reason = "answered 207 without readable row errors"
        return [], [BatchFailure(index, reason, retryable=True) for index in indexes]

    refused: dict[int, BatchFailure] = {}
    for error in errors:
        position = _field_of(error, "batch_index")
        if isinstance(position, int) and 0 <= position < len(indexes):
            index = indexes[position]
            refused[index] = BatchFailure(index, _row_reason(error))
    done = [index for index in indexes if index not in refused]
    return done, list(refused.values())


def _row_reason(error: Mapping[str, Any]) -> str:
    # Customer.io's `message` may quote the refused value; the field and the reason
    # say what to fix without it.
    parts = [str(error[key])[:100] for key in ("field", "reason") if error.get(key)]
    return ": ".join(parts) or "refused"

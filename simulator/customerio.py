"""A simulated Customer.io workspace: the App API and the Track API at one base URL.

App API paths (`/v1/...`) check `Authorization: Bearer <app api key>`; Track API
paths (`/api/...`) check HTTP Basic `site_id:track_api_key`. Answers take the shapes
Customer.io documents: a transactional send answers `delivery_id` and `queued_at`,
a broadcast trigger its `id`, a Track call `{}`, a batch `200` or `207` with
`{"errors": [{"batch_index", "reason", "field", "message"}]}`. Errors read
`{"meta": {"error": ...}}` on the App API and `{"meta": {"errors": [...]}}` on the
Track API (v1); Customer.io documents no body for a 401, so it gets the same.

The limits are the budgets referloop paces itself by (`DEFAULT_BUDGETS` of the
adapter), one bucket each; a test replaces them with `Simulator.set_limits`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, ClassVar

from integrations.customerio import (
    APP_BUDGET,
    BROADCAST_BUDGET,
    CONFORMANCE_APP_API_KEY,
    CONFORMANCE_SITE_ID,
    CONFORMANCE_TRACK_API_KEY,
    DEFAULT_BUDGETS,
    MAX_BATCH_BYTES,
    MAX_OPERATION_BYTES,
    TRACK_BUDGET,
    TRACK_URLS,
)
from simulator.core import Limit, SimRequest, SimResponse, VendorSim

ENVIRONMENT_ID = 1
TRANSACTIONAL_PREFIX = "/v1/send/"
TRACK_PREFIX = "/api/"
BATCH_PATH = "/api/v2/batch"

Handler = Callable[..., SimResponse]


class CustomerIOSim(VendorSim):
    """Customer.io as referloop uses it, with the workspace's fake credentials.

    `fail_batch_rows` makes batch operations for chosen users fail in a 207, as
    Customer.io answers rows it refuses; the rest of the batch is taken.
    """

    name = "customerio"
    APP_API_KEY: ClassVar[str] = CONFORMANCE_APP_API_KEY
    SITE_ID: ClassVar[str] = CONFORMANCE_SITE_ID
    TRACK_API_KEY: ClassVar[str] = CONFORMANCE_TRACK_API_KEY

    def __init__(
        self,
        *,
        app_api_key: str | None = None,
        site_id: str | None = None,
        track_api_key: str | None = None,
        region: str = "us",
    ) -> None:
        self.app_api_key = app_api_key or self.APP_API_KEY
        self.site_id = site_id or self.SITE_ID
        self.track_api_key = track_api_key or self.TRACK_API_KEY
        self.region = region
        self._ids = itertools.count(1)
        self._state = threading.Lock()
        self._failing_rows: dict[str, str] = {}
        self._events: dict[str, Any] = {}
        self.deliveries: list[str] = []
        self.triggers: list[int] = []
        super().__init__()

    # --- what tests switch and read -------------------------------------------

    def fail_batch_rows(self, user_ids: Iterable[str], reason: str = "invalid") -> None:
        """Refuse every batch operation for these users, row by row, in a 207."""
        with self._state:
            self._failing_rows.update(dict.fromkeys(user_ids, reason))

    def forget(self) -> None:
        """Take every batch row again and forget the events and sends kept."""
        with self._state:
            self._failing_rows.clear()
            self._events.clear()
            self.deliveries.clear()
            self.triggers.clear()

    def kept_events(self) -> list[Any]:
        """The events kept, once per dedupe `id` as Customer.io keeps them."""
        with self._state:
            return list(self._events.values())

    # --- the vendor -----------------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/v1/send/email"): self._send_email,
            ("POST", "/v1/send/push"): self._send_to_identifiers,
            ("POST", "/v1/send/in_app"): self._send_to_identifiers,
            ("POST", "/v1/campaigns/{broadcast_id}/triggers"): self._trigger,
            ("GET", "/v1/transactional"): self._list_transactional,
            ("GET", "/api/v1/accounts/region"): self._region,
            ("PUT", "/api/v1/customers/{identifier}"): self._identify,
            ("POST", "/api/v1/customers/{identifier}/events"): self._event,
            ("POST", BATCH_PATH): self._batch,
        }

    def authorized(self, request: SimRequest) -> bool:
        if _is_track(request):
            return _basic(request) == (self.site_id, self.track_api_key)
        return request.header("authorization") == f"Bearer {self.app_api_key}"

    def limits(self) -> list[Limit]:
        return [
            Limit(name, cap.count, cap.window / timedelta(seconds=1))
            for name, cap in DEFAULT_BUDGETS.items()
        ]

    def bucket(self, request: SimRequest) -> str | None:
        path = request.path
        if _is_track(request) or path.startswith(TRANSACTIONAL_PREFIX):
            return TRACK_BUDGET
        if path.startswith("/v1/campaigns/") and path.endswith("/triggers"):
            return BROADCAST_BUDGET
        return APP_BUDGET

    def unauthorized(self, request: SimRequest) -> SimResponse:
        return _refusal(request, 401, "Unauthorized request")

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        headers = {"Retry-After": str(max(1, round(retry_after_s)))}
        message = f"over the {limit.count}-per-{limit.window_s:g}s limit"
        return _refusal(request, 429, message, headers)

    def error(self, request: SimRequest, status: int) -> SimResponse:
        return _refusal(request, status, f"simulated {status}")

    # --- App API --------------------------------------------------------------

    def _send_email(self, request: SimRequest) -> SimResponse:
        body = request.json
        if not isinstance(body, dict) or not body.get("to"):
            return _refusal(request, 400, "`to` is required")
        return self._send_to_identifiers(request)

    def _send_to_identifiers(self, request: SimRequest) -> SimResponse:
        body = request.json
        if not isinstance(body, dict):
            return _refusal(request, 400, "the body is not a JSON object")
        if not body.get("transactional_message_id"):
            return _refusal(request, 400, "`transactional_message_id` is required")
        if not _has_one_identifier(body.get("identifiers")):
            return _refusal(request, 400, "give one of `id`, `email` or `cio_id`")

        delivery_id = f"sim-delivery-{next(self._ids)}"
        with self._state:
            self.deliveries.append(delivery_id)
        return SimResponse(
            200, {"delivery_id": delivery_id, "queued_at": int(time.time())}
        )

    def _trigger(self, request: SimRequest, broadcast_id: str) -> SimResponse:
        body = request.json
        if not broadcast_id.isdigit():
            return _refusal(request, 404, "the broadcast does not exist")
        if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
            return _refusal(request, 400, "give the people as `ids`")

        trigger_id = next(self._ids)
        with self._state:
            self.triggers.append(trigger_id)
        return SimResponse(200, {"id": trigger_id})

    def _list_transactional(self, request: SimRequest) -> SimResponse:
        message = {"id": 3, "name": "invite_reviewers", "created_at": 1_700_000_000}
        return SimResponse(200, {"messages": [message]})

    # --- Track API ------------------------------------------------------------

    def _region(self, request: SimRequest) -> SimResponse:
        answer = {
            "url": TRACK_URLS.get(self.region, TRACK_URLS["us"]),
            "region": self.region,
            "environment_id": ENVIRONMENT_ID,
        }
        return SimResponse(200, answer)

    def _identify(self, request: SimRequest, identifier: str) -> SimResponse:
        if not isinstance(request.json, dict):
            return _refusal(request, 400, "the body is not a JSON object")
        return SimResponse(200, {})

    def _event(self, request: SimRequest, identifier: str) -> SimResponse:
        body = request.json
        if not isinstance(body, dict) or not body.get("name"):
            return _refusal(request, 400, "`name` is required")

        self._keep_event(body)
        return SimResponse(200, {})

    def _batch(self, request: SimRequest) -> SimResponse:
        body = request.json
        if len(request.body) >= MAX_BATCH_BYTES:
            return _batch_refusal("too_large", "the batch is over 500 KB")
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return _batch_refusal("invalid", "give the operations as `batch`")

        errors = [
            error
            for index, operation in enumerate(body["batch"])
            if (error := self._row_error(index, operation)) is not None
        ]
        if errors:
            return SimResponse(207, {"errors": errors})
        return SimResponse(200, {})

    def _row_error(self, index: int, operation: Any) -> dict[str, Any] | None:
        size = len(_compact(operation))
        if size > MAX_OPERATION_BYTES:
            return _row(index, "too_large", "", "the operation is over 32 KB")
        if not isinstance(operation, dict):
            return _row(index, "invalid", "", "the operation is not an object")
        identifiers: Any = operation.get("identifiers")
        if not _has_one_identifier(identifiers):
            return _row(index, "required", "identifiers", "give one identifier")

        with self._state:
            reason = self._failing_rows.get(str(identifiers.get("id")))
        if reason is not None:
            return _row(index, reason, "attributes", "simulated row failure")
        if operation.get("action") == "event":
            self._keep_event(operation)
        return None

    def _keep_event(self, event: dict[str, Any]) -> None:
        key = str(event.get("id") or f"sim-event-{next(self._ids)}")
        with self._state:
            self._events.setdefault(key, event)


def _is_track(request: SimRequest) -> bool:
    return request.path.startswith(TRACK_PREFIX)


def _basic(request: SimRequest) -> tuple[str, str] | None:
    scheme, _, encoded = (request.header("authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _has_one_identifier(identifiers: Any) -> bool:
    if not isinstance(identifiers, dict):
        return False
    given = [key for key in ("id", "email", "cio_id", "phone") if identifiers.get(key)]
    return len(given) == 1


def _refusal(
    request: SimRequest,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> SimResponse:
    if request.path == BATCH_PATH:
        return _batch_refusal("invalid", message, status, headers)
    if _is_track(request):
        return SimResponse(status, {"meta": {"errors": [message]}}, headers or {})
    return SimResponse(status, {"meta": {"error": message}}, headers or {})


def _batch_refusal(
    reason: str,
    message: str,
    status: int = 400,
    headers: dict[str, str] | None = None,
) -> SimResponse:
    body = {"errors": [{"reason": reason, "field": "batch", "message": message}]}
    return SimResponse(status, body, headers or {})


def _row(index: int, reason: str, field: str, message: str) -> dict[str, Any]:
    return {"batch_index": index, "reason": reason, "field": field, "message": message}


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

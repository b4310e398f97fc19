"""A simulated Intercom, answering the calls of the Intercom adapter as API 2.14 does.

- `GET /me`, `POST /contacts/search` (by `external_id`), `POST /messages` and
  `POST /events`, with the bodies the 2.14 document gives for them;
- Bearer auth, and the `Intercom-Version` header checked on every request;
- a directory of contacts: every user of the product has one, with an id derived
  from the user id, unless a test gave it another id or took it away;
- Intercom's error list, `{"type": "error.list", "request_id", "errors": [...]}`;
- the rate limit: 10,000 requests per minute per app, which Intercom counts in
  10-second windows (1,667 each), with `X-RateLimit-Limit`, `-Remaining` and
  `-Reset` (Unix seconds) on every authenticated answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from simulator.core import Limit, SimRequest, SimResponse, VendorSim

API_VERSION = "2.14"
WINDOW_S = 10
# Intercom documents 10,000 per minute per app, spread over 10-second windows;
# its own example rounds 1,000 per minute up to 167 per window.
WINDOW_LIMIT = 1_667
APP_ID = "simapp01"
ADMIN_ID = "991267459"
FIRST_MESSAGE_ID = 403918396
# The spec documents no body for these; the codes are the simulator's own.
_CODES = {
    400: "parameter_invalid",
    401: "unauthorized",
    403: "api_plan_restricted",
    404: "not_found",
    408: "request_timeout",
    422: "parameter_invalid",
    429: "rate_limit_exceeded",
}


class IntercomSim(VendorSim):
    """Intercom's API 2.14 for one app, as far as referloop uses it.

    `messages` holds the messages taken, by the id Intercom gave them; `events`
    the data events taken, each once.
    `token` is the app's access token; with None, any Bearer token is taken (a
    suite that does not know the adapter's fake token). Intercom itself answers a
    request without `Intercom-Version` in the app's default version; the simulator
    refuses it, so that an adapter that forgets the header is caught.
    """

    name = "intercom"

    def __init__(
        self,
        token: str | None = None,
        *,
        version: str = API_VERSION,
        window_limit: int = WINDOW_LIMIT,
    ) -> None:
        self.token = token
        self.version = version
        self.window_limit = window_limit
        self.contacts: dict[str, str] = {}
        self.removed: set[str] = set()
        self.messages: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._seen_events: set[tuple[str, str, int]] = set()
        self._message_ids = itertools.count(FIRST_MESSAGE_ID)
        self._window = (0, 0)
        super().__init__()

    # --- what tests set -------------------------------------------------------

    def add_contact(self, external_id: str, contact_id: str | None = None) -> str:
        """Give the user `external_id` a contact (its derived id by default)."""
        with self.lock:
            self.removed.discard(external_id)
            self.contacts[external_id] = contact_id or derived_contact_id(external_id)
            return self.contacts[external_id]

    def remove_contact(self, external_id: str) -> None:
        """Take the user's contact away: searches find nothing, messages get 404."""
        with self.lock:
            self.removed.add(external_id)

    def clear(self) -> None:
        """Forget contacts, removals, messages, events and the rate window."""
        with self.lock:
            self.contacts.clear()
            self.removed.clear()
            self.messages.clear()
            self.events.clear()
            self._seen_events.clear()
            self._window = (0, 0)

    def contact_of(self, external_id: str) -> str | None:
        """The contact id of a user, or None when it has none."""
        if external_id in self.removed:
            return None
        return self.contacts.get(external_id) or derived_contact_id(external_id)

    # --- the vendor's rules ---------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {
            ("GET", "/me"): self._me,
            ("POST", "/contacts/search"): self._search,
            ("POST", "/messages"): self._message,
            ("POST", "/events"): self._event,
        }

    def authorized(self, request: SimRequest) -> bool:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme != "Bearer" or not token:
            return False
        return self.token is None or token == self.token

    def unauthorized(self, request: SimRequest) -> SimResponse:
        # No rate headers: Intercom sends them only to authenticated requests.
        return error_list(401, "unauthorized", "Access Token Invalid")

    def limits(self) -> list[Limit]:
        return [Limit("app", count=self.window_limit, window_s=WINDOW_S)]

    def bucket(self, request: SimRequest) -> str | None:
        return "app"

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        message = f"Exceeded rate limit of {limit.count} in {WINDOW_S}_seconds"
        reset = math.ceil(time.time() + retry_after_s)
        headers = _rate_headers(limit.count, 0, reset)
        answer = error_list(429, "rate_limit_exceeded", message)
        return dataclasses.replace(answer, headers=headers)

    def error(self, request: SimRequest, status: int) -> SimResponse:
        code = _CODES.get(status, "server_error")
        answer = error_list(status, code, f"simulated {status}")
        headers = self._count(request)
        if status == 429:
            headers["X-RateLimit-Remaining"] = "0"
        return dataclasses.replace(answer, headers=headers)

    def handle(self, request: SimRequest) -> SimResponse:
        if request.header("intercom-version") != self.version:
            answer = error_list(
                400,
                "intercom_version_invalid",
                f"this app answers Intercom-Version {self.version}",
            )
        else:
            answer = super().handle(request)
        headers = {**self._count(request), **answer.headers}
        return dataclasses.replace(answer, headers=headers)

    def _count(self, request: SimRequest) -> dict[str, str]:
        """Count the request in the current 10-second window; its rate headers."""
        now = int(time.time())
        start = now - now % WINDOW_S
        with self.lock:
            used = self._window[1] + 1 if self._window[0] == start else 1
            self._window = (start, used)
        remaining = max(self.window_limit - used, 0)
        return _rate_headers(self.window_limit, remaining, start + WINDOW_S)

    # --- the endpoints --------------------------------------------------------

    def _me(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, _admin_with_app())

    def _search(self, request: SimRequest) -> SimResponse:
        query: Any = (request.json or {}).get("query")
        if not _is_external_id_query(query):
            return error_list(
                400, "parameter_invalid", "the simulator searches by external_id only"
            )
        external_id = str(query["value"])
        contact_id = self.contact_of(external_id)
        found = [] if contact_id is None else [_contact(contact_id, external_id)]
        per_page = ((request.json or {}).get("pagination") or {}).get("per_page", 50)
        return SimResponse(200, _contact_list(found, per_page))

    def _message(self, request: SimRequest) -> SimResponse:
        body = request.json
        refused = _refuse_message(body)
        if refused is not None:
            return refused
        if body["to"]["id"] in self._removed_contact_ids():
            return error_list(404, "not_found", "User Not Found")

        message_id = str(next(self._message_ids))
        with self.lock:
            self.messages[message_id] = body
        return SimResponse(200, _message(message_id, body))

    def _event(self, request: SimRequest) -> SimResponse:
        body = request.json
        if not isinstance(body, dict) or not body.get("event_name"):
            return error_list(400, "parameter_invalid", "event_name is required")
        if not isinstance(body.get("created_at"), int):
            return error_list(400, "parameter_invalid", "created_at is required")
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or self.contact_of(user_id) is None:
            return error_list(404, "not_found", "User Not Found")

        # Intercom ignores a repeat of (user, event name, created_at), still 202.
        seen = (user_id, body["event_name"], body["created_at"])
        with self.lock:
            if seen not in self._seen_events:
                self._seen_events.add(seen)
                self.events.append(body)
        return SimResponse(202, None)

    def _removed_contact_ids(self) -> set[str]:
        with self.lock:
            removed = set(self.removed)
            explicit = dict(self.contacts)
        return {
            explicit.get(user_id) or derived_contact_id(user_id) for user_id in removed
        }


def derived_contact_id(external_id: str) -> str:
    """The contact id the simulator gives a user by default: 24 hex digits, as
    Intercom's ids are, the same for the same user id every time."""
    digest = hashlib.sha256(f"contact:{external_id}".encode()).hexdigest()
    return digest[:24]


def error_list(status: int, code: str, message: str) -> SimResponse:
    """Intercom's error body: an `error.list` with one error."""
    body = {
        "type": "error.list",
        "request_id": str(uuid.uuid4()),
        "errors": [{"code": code, "message": message}],
    }
    return SimResponse(status, body)


def _rate_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


def _is_external_id_query(query: Any) -> bool:
    return (
        isinstance(query, dict)
        and query.get("field") == "external_id"
        and query.get("operator") == "="
        and isinstance(query.get("value"), str | int)
    )


def _refuse_message(body: Any) -> SimResponse | None:
    """Intercom's answer to a `create_message_request` it cannot take, if any."""
    if not isinstance(body, dict) or not body.get("body"):
        return error_list(400, "parameter_invalid", "Body is required")
    if body.get("message_type") not in ("in_app", "email"):
        return error_list(400, "parameter_invalid", "message_type is invalid")
    sender = body.get("from")
    if not isinstance(sender, dict) or sender.get("type") != "admin":
        return error_list(400, "parameter_invalid", "from must be an admin")
    if not isinstance(sender.get("id"), int):
        return error_list(400, "parameter_invalid", "from.id must be an integer")
    recipient = body.get("to")
    if not isinstance(recipient, dict) or not recipient.get("id"):
        return error_list(400, "parameter_invalid", "to must be one contact")
    if recipient.get("type") not in ("user", "lead"):
        return error_list(400, "parameter_invalid", "to must be a user or lead")
    if body["message_type"] == "email" and not body.get("subject"):
        return error_list(
            422, "parameter_not_found", "No subject supplied for email message"
        )
    return None


def _admin_with_app() -> dict[str, Any]:
    return {
        "type": "admin",
        "id": ADMIN_ID,
        "email": "sam.teammate@example.com",
        "name": "Sam Teammate",
        "email_verified": True,
        "app": {
            "type": "app",
            "id_code": APP_ID,
            "name": "Simulated workspace",
            "created_at": 1734537243,
            "secure": False,
            "identity_verification": False,
            "timezone": "Europe/London",
            "region": "US",
        },
        "has_inbox_seat": True,
    }


def _contact(contact_id: str, external_id: str) -> dict[str, Any]:
    return {
        "type": "contact",
        "id": contact_id,
        "workspace_id": APP_ID,
        "external_id": external_id,
        "role": "user",
    }


def _contact_list(found: list[dict[str, Any]], per_page: int) -> dict[str, Any]:
    return {
        "type": "list",
        "data": found,
        "total_count": len(found),
        "pages": {
            "type": "pages",
            "page": 1,
            "per_page": per_page,
            "total_pages": 1 if found else 0,
        },
    }


def _message(message_id: str, body: dict[str, Any]) -> dict[str, Any]:
    # The answer spells the in-app type `inapp`, although the request says `in_app`.
    kind = "inapp" if body["message_type"] == "in_app" else "email"
    answer: dict[str, Any] = {
        "type": "user_message",
        "id": message_id,
        "created_at": int(time.time()),
        "body": body["body"],
        "message_type": kind,
        "conversation_id": str(int(message_id) - FIRST_MESSAGE_ID + 613),
    }
    if kind == "email":
        answer["subject"] = body.get("subject")
    return answer

"""Braze as the simulator plays it: trigger sends, emails, `/users/track` and a list.

What Braze documents, and the simulator answers:

- a REST API key as `Authorization: Bearer <key>`; 401 for an unknown key, 403 for
  a key without the endpoint's permission;
- 201 with `{"dispatch_id": ..., "message": "success"}` for a send, and a `notice`
  for a trigger of a Canvas that is not running (nothing is sent);
- 400 with `{"message": ...}` for a fatal error, such as more than 50 recipients
  to a send or more than 75 objects of a kind to `/users/track`;
- the send endpoints share one limit (250,000 an hour), `/users/track` has its own
  (3,000 every three seconds), the other endpoints another (250,000 an hour);
- `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix
  seconds) on every answer, 429s included; a 429 has no `Retry-After`.

The core enforces the limits, `Simulator.set_limits` included, but shows a vendor
the limit only when it refuses a request. So a 429 describes the limit in force,
while the other answers count this vendor's requests against the limits it was
built with (`BrazeSim(limits=...)`).
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from simulator.core import Limit, SimRequest, SimResponse, VendorSim

API_KEY = "braze-sim-rest-api-key"
PERMISSIONS = frozenset(
    {
        "campaigns.trigger.send",
        "canvas.trigger.send",
        "messages.send",
        "users.track",
        "campaigns.list",
    }
)

MESSAGING = "messaging"
USERS_TRACK = "users-track"
REST = "rest"
DEFAULT_LIMITS = (
    Limit(MESSAGING, count=250_000, window_s=3_600),
    Limit(USERS_TRACK, count=3_000, window_s=3),
    Limit(REST, count=250_000, window_s=3_600),
)
MAX_RECIPIENTS = 50
MAX_TRACK_OBJECTS = 75

# Each route: the permission its key needs, and the limit it counts against.
ROUTES = {
    ("POST", "/campaigns/trigger/send"): ("campaigns.trigger.send", MESSAGING),
    ("POST", "/canvas/trigger/send"): ("canvas.trigger.send", MESSAGING),
    ("POST", "/messages/send"): ("messages.send", MESSAGING),
    ("POST", "/users/track"): ("users.track", USERS_TRACK),
    ("GET", "/campaigns/list"): ("campaigns.list", REST),
}
# Braze's words for its fatal errors (api/errors).
TOO_MANY_IDS = "The max number of external_ids and aliases per request was exceeded"
TOO_MANY_OBJECTS = "Max Input Length Exceeded"
NO_RECIPIENTS = "No Recipients"
STATUS_WORDS = {
    400: "Bad Request",
    401: "Unknown or missing REST API Key",
    403: "Forbidden",
    404: "Unknown REST API Key",
    429: "Over rate limit",
}

Handler = Callable[[SimRequest], SimResponse]


class BrazeSim(VendorSim):
    """A Braze workspace: its REST API keys with their permissions, and its limits.

    `paused_canvases` holds Canvas ids that are archived, stopped or paused;
    `dispatched` the `dispatch_id` of every send taken, oldest first.
    """

    name = "braze"

    def __init__(
        self,
        keys: Mapping[str, Iterable[str]] | None = None,
        limits: Sequence[Limit] = DEFAULT_LIMITS,
    ) -> None:
        given = keys if keys is not None else {API_KEY: PERMISSIONS}
        self.keys = {key: frozenset(granted) for key, granted in given.items()}
        self.paused_canvases: set[str] = set()
        self.dispatched: list[str] = []
        self._limits = list(limits)
        self._taken: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._numbers = itertools.count(1)
        super().__init__()

    # --- what the core asks -----------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/campaigns/trigger/send"): self._campaign,
            ("POST", "/canvas/trigger/send"): self._canvas,
            ("POST", "/messages/send"): self._messages,
            ("POST", "/users/track"): self._users_track,
            ("GET", "/campaigns/list"): self._campaigns,
        }

    def authorized(self, request: SimRequest) -> bool:
        return _key_of(request) in self.keys

    def limits(self) -> list[Limit]:
        return list(self._limits)

    def bucket(self, request: SimRequest) -> str | None:
        route = ROUTES.get((request.method, request.path))
        return route[1] if route else None

    def unauthorized(self, request: SimRequest) -> SimResponse:
        return self._fatal(request, 401)

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        reset = math.ceil(time.time() + retry_after_s)
        headers = _rate_headers(limit.count, 0, reset)
        return SimResponse(429, {"message": STATUS_WORDS[429]}, headers)

    def not_found(self, request: SimRequest) -> SimResponse:
        return self._fatal(request, 404)

    def error(self, request: SimRequest, status: int) -> SimResponse:
        return self._fatal(request, status)

    def handle(self, request: SimRequest) -> SimResponse:
        """Answer a request the core let through, counting it for the headers."""
        bucket = self.bucket(request)
        if bucket is not None:
            with self.lock:
                self._taken[bucket].append(time.monotonic())

        denied = self._denied(request)
        if denied is not None:
            return denied
        return super().handle(request)

    # --- the endpoints ----------------------------------------------------------

    def _campaign(self, request: SimRequest) -> SimResponse:
        return self._trigger(request, "campaign_id")

    def _canvas(self, request: SimRequest) -> SimResponse:
        answer = self._trigger(request, "canvas_id")
        if (
            answer.status != 201
            or request.json["canvas_id"] not in self.paused_canvases
        ):
            return answer
        notice = "The Canvas is paused. Resume the Canvas to send trigger requests."
        return self._answer(request, 201, {**answer.body, "notice": notice})

    def _trigger(self, request: SimRequest, id_key: str) -> SimResponse:
        body = request.json
        if not isinstance(body, dict) or not isinstance(body.get(id_key), str):
            return self._fatal(request, 400)
        recipients = body.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            return self._fatal(request, 400, NO_RECIPIENTS)
        if len(recipients) > MAX_RECIPIENTS:
            return self._fatal(request, 400, TOO_MANY_IDS)
        if not all(_names_a_user(recipient) for recipient in recipients):
            return self._fatal(request, 400)
        return self._dispatch(request)

    def _messages(self, request: SimRequest) -> SimResponse:
        body = request.json
        if not isinstance(body, dict):
            return self._fatal(request, 400)
        users = body.get("external_user_ids")
        if not isinstance(users, list) or not users:
            return self._fatal(request, 400, NO_RECIPIENTS)
        if len(users) > MAX_RECIPIENTS:
            return self._fatal(request, 400, TOO_MANY_IDS)
        messages = body.get("messages")
        if not isinstance(messages, dict) or not messages:
            return self._fatal(request, 400, "No message to send")
        if "email" in messages and not _is_email(messages["email"]):
            return self._fatal(request, 400)
        return self._dispatch(request)

    def _users_track(self, request: SimRequest) -> SimResponse:
        body = request.json
        if not isinstance(body, dict):
            return self._fatal(request, 400)
        kinds = ("attributes", "events", "purchases")
        counts = {kind: len(body.get(kind) or []) for kind in kinds}
        if any(count > MAX_TRACK_OBJECTS for count in counts.values()):
            return self._fatal(request, 400, TOO_MANY_OBJECTS)
        processed = {f"{kind}_processed": n for kind, n in counts.items() if n}
        return self._answer(request, 201, {"message": "success", **processed})

    def _campaigns(self, request: SimRequest) -> SimResponse:
        return self._answer(request, 200, {"message": "success", "campaigns": []})

    # --- answers ----------------------------------------------------------------

    def _denied(self, request: SimRequest) -> SimResponse | None:
        route = ROUTES.get((request.method, request.path))
        granted = self.keys.get(_key_of(request) or "", frozenset())
        if route is None or route[0] in granted:
            return None
        return self._fatal(request, 403)

    def _dispatch(self, request: SimRequest) -> SimResponse:
        dispatch_id = f"dispatch-{next(self._numbers):06d}"
        with self.lock:
            self.dispatched.append(dispatch_id)
        body = {"dispatch_id": dispatch_id, "message": "success"}
        return self._answer(request, 201, body)

    def _fatal(
        self, request: SimRequest, status: int, message: str | None = None
    ) -> SimResponse:
        words = message or STATUS_WORDS.get(status, "Internal Server Error")
        return self._answer(request, status, {"message": words})

    def _answer(self, request: SimRequest, status: int, body: Any) -> SimResponse:
        return SimResponse(status, body, self._headers(request))

    def _headers(self, request: SimRequest) -> dict[str, str]:
        """The rate headers of the limit `request` counts against, as they stand."""
        bucket = self.bucket(request) or REST
        limit = next((item for item in self._limits if item.bucket == bucket), None)
        if limit is None:
            return {}
        now = time.monotonic()
        with self.lock:
            taken = self._taken[bucket]
            while taken and taken[0] <= now - limit.window_s:
                taken.popleft()
            used = len(taken)
            frees_in_s = taken[0] + limit.window_s - now if taken else limit.window_s
        reset = math.ceil(time.time() + frees_in_s)
        return _rate_headers(limit.count, max(0, limit.count - used), reset)


def _rate_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


def _key_of(request: SimRequest) -> str | None:
    scheme, _, key = (request.header("authorization") or "").partition(" ")
    return key if scheme == "Bearer" and key else None


def _names_a_user(recipient: Any) -> bool:
    if not isinstance(recipient, dict):
        return False
    return isinstance(recipient.get("external_user_id"), str) or isinstance(
        recipient.get("user_alias"), dict
    )


def _is_email(email: Any) -> bool:
    """An email object with what Braze requires: `app_id`, `from`, and a `body`
    unless it names a template."""
    if not isinstance(email, dict):
        return False
    has_content = "body" in email or "email_template_id" in email
    return bool(email.get("app_id")) and bool(email.get("from")) and has_content

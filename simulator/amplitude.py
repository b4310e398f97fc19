"""A simulated Amplitude: the HTTP V2 upload, `POST /2/httpapi`.

What it does, as Amplitude's HTTP V2 page documents it:

- the API key is read from the body (`api_key`); another key is answered 400
  "Invalid API key";
- a body over 1 MB or with more than 2,000 events is answered 413;
- a body that is not JSON, or without `api_key` or `events` (an empty list
  included), is answered 400 with `missing_field`;
- each event needs `event_type`, a `user_id` or `device_id` at least
  `options.min_id_length` long (5 by default), a whole `time` in milliseconds,
  a string `insert_id` and an object `event_properties` when given; a batch
  with any event that breaks a rule is answered 400 naming each such event in
  `events_with_invalid_fields` or `events_with_missing_fields`, and none of it
  is kept;
- each user (or device) may send `events_per_user` events in any `user_window_s`
  (30 a second, the documented threshold); events past that are answered 429
  with `throttled_users`, `throttled_events` (their indexes) and `eps_threshold`,
  the others of the request kept; `Retry-After` is sent when
  `throttle_retry_after_s` is set (Amplitude's own default wait is 30 s);
- events are deduped by (`device_id` or `user_id`, `insert_id`): a repeat is
  answered 200 and not kept twice.

`kept` holds what was kept, by that key; `duplicates` counts repeats.
`fail_after_keeping` answers the next requests 500 after keeping their events,
as Amplitude may ("the request may not have been accepted").
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any, ClassVar

from simulator.core import SimRequest, SimResponse, VendorSim

# A made-up project key, known only to the simulator and its tests.
API_KEY = "amp-sim-key-5f1c0ffee2d94b7a"
UPLOAD_PATH = "/2/httpapi"
MAX_EVENTS = 2_000
MAX_BYTES = 1_000_000
MIN_ID_LENGTH = 5
EVENTS_PER_USER = 30
USER_WINDOW_S = 1.0

EventKey = tuple[str, str]


class AmplitudeSim(VendorSim):
    """Amplitude's HTTP V2 upload for one project."""

    name: ClassVar[str] = "amplitude"

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.kept: dict[EventKey, dict[str, Any]] = {}
        self.duplicates = 0
        self.fail_after_keeping = 0
        self.max_bytes = MAX_BYTES
        self.events_per_user = EVENTS_PER_USER
        self.user_window_s = USER_WINDOW_S
        self.throttle_retry_after_s: float | None = None
        self._seen: dict[str, collections.deque[float]] = {}
        super().__init__()

    def clear(self) -> None:
        """Forget what was kept and counted; put every setting back."""
        with self.lock:
            self.kept.clear()
            self._seen.clear()
            self.duplicates = 0
            self.fail_after_keeping = 0
        self.max_bytes = MAX_BYTES
        self.events_per_user = EVENTS_PER_USER
        self.user_window_s = USER_WINDOW_S
        self.throttle_retry_after_s = None

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {("POST", UPLOAD_PATH): self._upload}

    def authorized(self, request: SimRequest) -> bool:
        # A body without a key is the handler's to answer ("missing field").
        body = request.json
        given = body.get("api_key") if isinstance(body, dict) else None
        return given is None or given == self.api_key

    def unauthorized(self, request: SimRequest) -> SimResponse:
        return SimResponse(400, {"code": 400, "error": "Invalid API key"})

    def error(self, request: SimRequest, status: int) -> SimResponse:
        return SimResponse(status, {"code": status, "error": f"simulated {status}"})

    # --- the upload -------------------------------------------------------------

    def _upload(self, request: SimRequest) -> SimResponse:
        if len(request.body) >= self.max_bytes:
            return _too_large()
        body = request.json
        if not isinstance(body, dict):
            return _bad_request("Invalid JSON request body")
        for required in ("api_key", "events"):
            if not body.get(required):
                return _bad_request("Request missing required field", required)
        events = body["events"]
        if not isinstance(events, list):
            return _bad_request("Invalid event JSON")
        if len(events) > MAX_EVENTS:
            return _too_large()

        problems = _problems(events, _min_id_length(body.get("options")))
        if problems is not None:
            return SimResponse(400, problems)
        return self._keep(events, len(request.body))

    def _keep(self, events: list[dict[str, Any]], size: int) -> SimResponse:
        throttled: list[int] = []
        rates: dict[str, int] = {}
        with self.lock:
            now = time.monotonic()
            for index, event in enumerate(events):
                who = _who(event)
                if not self._admit(who, now):
                    throttled.append(index)
                    rates[who] = len(self._seen[who])
                    continue
                self._store(event)
            fail = self.fail_after_keeping > 0
            self.fail_after_keeping -= 1 if fail else 0
        if throttled:
            return self._throttled(events, throttled, rates)
        if fail:
            return SimResponse(500, {"code": 500, "error": "Internal server error"})
        return SimResponse(200, _ingested(len(events), size))

    def _admit(self, who: str, now: float) -> bool:
        seen = self._seen.setdefault(who, collections.deque())
        while seen and seen[0] <= now - self.user_window_s:
            seen.popleft()
        if len(seen) >= self.events_per_user:
            return False
        seen.append(now)
        return True

    def _store(self, event: dict[str, Any]) -> None:
        key = (_who(event), str(event.get("insert_id") or id(event)))
        if key in self.kept:
            self.duplicates += 1
            return
        self.kept[key] = event

    def _throttled(
        self, events: list[dict[str, Any]], throttled: list[int], rates: dict[str, int]
    ) -> SimResponse:
        users = {who: rate for who, rate in rates.items() if _is_user(events, who)}
        body = {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": self.events_per_user,
            "throttled_devices": {},
            "throttled_users": users,
            "throttled_events": throttled,
            "exceeded_daily_quota_users": {},
        }
        headers: dict[str, str] = {}
        if self.throttle_retry_after_s is not None:
            headers["Retry-After"] = f"{self.throttle_retry_after_s:g}"
        return SimResponse(429, body, headers)


def _problems(events: list[Any], min_id_length: int) -> dict[str, Any] | None:
    """The 400 answer for events that break a rule, or None when all are good."""
    invalid: dict[str, list[int]] = collections.defaultdict(list)
    missing: dict[str, list[int]] = collections.defaultdict(list)
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            invalid["event"].append(index)
            continue
        for field in _missing(event):
            missing[field].append(index)
        for field in _invalid(event, min_id_length):
            invalid[field].append(index)
    if not invalid and not missing:
        return None
    return {
        "code": 400,
        "error": "Invalid field values on some events",
        "events_with_invalid_fields": dict(invalid),
        "events_with_missing_fields": dict(missing),
    }


def _missing(event: dict[str, Any]) -> list[str]:
    found = [] if event.get("event_type") else ["event_type"]
    if event.get("user_id") is None and event.get("device_id") is None:
        found.append("user_id")
    return found


def _invalid(event: dict[str, Any], min_id_length: int) -> list[str]:
    found = []
    for field in ("user_id", "device_id"):
        value = event.get(field)
        if value is not None and (
            not isinstance(value, str) or len(value) < min_id_length
        ):
            found.append(field)
    when = event.get("time")
    if when is not None and (isinstance(when, bool) or not isinstance(when, int)):
        found.append("time")
    if "insert_id" in event and not isinstance(event["insert_id"], str):
        found.append("insert_id")
    properties = event.get("event_properties")
    if properties is not None and not isinstance(properties, dict):
        found.append("event_properties")
    return found


def _min_id_length(options: Any) -> int:
    value = options.get("min_id_length") if isinstance(options, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return MIN_ID_LENGTH


def _who(event: dict[str, Any]) -> str:
    return str(event.get("device_id") or event.get("user_id"))


def _is_user(events: list[dict[str, Any]], who: str) -> bool:
    return any(e.get("user_id") == who and not e.get("device_id") for e in events)


def _ingested(count: int, size: int) -> dict[str, Any]:
    return {
        "code": 200,
        "events_ingested": count,
        "payload_size_bytes": size,
        "server_upload_time": int(time.time() * 1000),
    }


def _bad_request(error: str, missing_field: str | None = None) -> SimResponse:
    body: dict[str, Any] = {"code": 400, "error": error}
    if missing_field is not None:
        body["missing_field"] = missing_field
    return SimResponse(400, body)


def _too_large() -> SimResponse:
    return SimResponse(413, {"code": 413, "error": "Payload too large"})

"""Amplitude: referloop's events uploaded through the HTTP V2 API.

Amplitude is a sink, never a channel. `AmplitudeSink.record` uploads referloop's
own events (nudge sent, nudge held back, reward granted) with `POST /2/httpapi`,
in batches of at most 2,000 events and under 1 MB. The API key travels in the
JSON body (`api_key`); there is no header to authenticate with. Each event's
`insert_id` derives from its `LoopEvent.insert_id`, and Amplitude ignores an
`insert_id` it saw in the past 7 days, so an upload is safe to repeat.

How each answer is taken, as the HTTP V2 page documents it:

- 200: the batch is taken;
- 400 naming events (`events_with_invalid_fields`, `events_with_missing_fields`,
  `silenced_events`): none of the batch was taken; the named events are reported
  one by one and the rest sent again. A 400 naming none is a `PermanentError`;
- 413: the batch is split in two and each half sent;
- 429: the events not named in `throttled_events` were taken; the named ones are
  sent again after the wait Amplitude asks for (30 s unless `Retry-After` says
  otherwise), or, past `max_throttle_wait_s`, left to the engine as a
  `TransientError` carrying that wait;
- 5xx: retried a few times on the spot, then a `TransientError`. A 500, 502 or
  504 may have been taken; the `insert_id` makes the resend harmless.

The adapter is a thin httpx client rather than the `amplitude-analytics` SDK,
which uploads from background threads with its own buffer and retries, reports
results only through callbacks, and drops events without a word on an invalid
key or an unexpected 200.

Residency picks the host: `api2.amplitude.com` or `api.eu.amplitude.com`.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import httpx

from integrations.base import Check, LoopEvent
from integrations.http import Call, VendorHttp, json_or_none, retry_after_of
from integrations.mixpanel import insert_id_for
from orchestrator.budgets import Budget, vendor_caps
from orchestrator.errors import PermanentError, TransientError, VendorError
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap

logger = logging.getLogger(__name__)

VENDOR = "amplitude"
UPLOAD_URLS = {
    "us": "https://api2.amplitude.com",
    "eu": "https://api.eu.amplitude.com",
}
UPLOAD_PATH = "/2/httpapi"
API_KEY_SETTING = "AMPLITUDE_API_KEY"
UPLOAD_BUDGET = "amplitude:upload"

# "Limit your upload to 100 batches per second" (the Starter plan, the lowest
# documented ceiling); Growth and Enterprise plans document no request rate.
DEFAULT_BUDGETS: dict[str, Cap] = {UPLOAD_BUDGET: parse_cap("100 per 1s")}

# "Keep request sizes under 1 MB with fewer than 2000 events per request."
MAX_BATCH_EVENTS = 2_000
MAX_BATCH_BYTES = 1_000_000
# "Device IDs and User IDs must be strings with a minimum length of 5 characters."
DEFAULT_MIN_ID_LENGTH = 5
# A 429 asks to "pause sending events for the affected user or device for 30
# seconds" when no header says otherwise.
THROTTLE_WAIT_S = 30.0
MAX_THROTTLE_ROUNDS = 3
# The fields of a 400 answer that name events by their index in the batch.
NAMING_FIELDS = ("events_with_invalid_fields", "events_with_missing_fields")
# Amplitude's own words for a refused key; anything else it says stays out of
# messages, since an answer may quote what was sent.
INVALID_KEY = "invalid api key"

SAFE = Call(safe_to_repeat=True)
Residency = Literal["us", "eu"]


@dataclass(frozen=True)
class FailedEvent:
    """An event Amplitude refused: where it was in the upload and why.

    `index` is its position in the events given to `upload`; `field` is the
    field Amplitude named (or None), `message` what was wrong with it.
    """

    index: int
    insert_id: str
    field: str | None
    message: str


@dataclass(frozen=True)
class UploadResult:
    """What an upload did: how many events Amplitude took, and those it refused."""

    uploaded: int
    failed: tuple[FailedEvent, ...] = ()


class _Refused(Exception):
    """An answer of 400, 413 or 429 to an upload, with its body, to be read here
    rather than turned into a PermanentError by `VendorHttp`."""

    def __init__(self, status: int, body: Any, wait_s: float | None) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.wait_s = wait_s

    def indexes(self, *names: str) -> set[int]:
        """The event indexes the answer names under `names` (lists, or maps
        from a field to a list)."""
        found: set[int] = set()
        for name in names:
            value = self.body.get(name)
            lists = value.values() if isinstance(value, dict) else [value]
            for listed in lists:
                found |= {i for i in _as_list(listed) if _is_index(i)}
        return found

    def fields_of(self, index: int) -> str | None:
        for name in NAMING_FIELDS:
            value = self.body.get(name)
            if not isinstance(value, dict):
                continue
            for field, listed in value.items():
                if index in _as_list(listed):
                    return str(field)
        return None

    @property
    def is_invalid_key(self) -> bool:
        return INVALID_KEY in str(self.body.get("error", "")).lower()


class AmplitudeSink:
    """Upload referloop's events to one Amplitude project.

    `api_key` is the project's API key. `base_url` replaces the residency's
    host, for a simulated vendor. With a `store`, the upload budget is shared
    with every worker; `budgets` override `DEFAULT_BUDGETS` by name. A 429 whose
    wait is at most `max_throttle_wait_s` is waited out here; a longer one goes
    back to the engine.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        api_key: str,
        *,
        residency: Residency = "us",
        base_url: str | None = None,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        timeout: httpx.Timeout | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_throttle_wait_s: float = THROTTLE_WAIT_S,
    ) -> None:
        caps = vendor_caps("Amplitude", DEFAULT_BUDGETS, budgets)
        self._api_key = api_key
        self.residency = residency
        self.max_batch_bytes = max_batch_bytes
        self.max_throttle_wait_s = max_throttle_wait_s
        budget = None
        if store is not None:
            budget = Budget(store, UPLOAD_BUDGET, caps[UPLOAD_BUDGET])
        self._http = VendorHttp(
            VENDOR,
            base_url or UPLOAD_URLS[residency],
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            budget=budget,
            on_response=_read_refusal,
        )

    def close(self) -> None:
        self._http.close()

    # --- events ---------------------------------------------------------------

    def record(self, events: Sequence[LoopEvent]) -> None:
        """Upload `events`; those Amplitude refuses are logged, not raised.

        Raises:
            the errors of `upload`.
        """
        self.upload(events)

    def upload(self, events: Sequence[LoopEvent]) -> UploadResult:
        """Upload `events` in batches of at most 2,000 and under 1 MB.

        Safe to repeat: Amplitude dedupes each event by its `insert_id`. Events
        Amplitude refuses (and any without a user id) are logged and returned;
        the others of their batch are sent again without them.

        Raises:
            TransientError: the budget is used up, Amplitude is unavailable or
                asks for a longer wait than this sink takes; upload it all
                again later (what was taken is ignored the second time).
            PermanentError: Amplitude refused the key or a whole batch.
        """
        if not events:
            return UploadResult(0)

        encoded = {i: _encoded(event) for i, event in enumerate(events)}
        failed = [_no_user(i, e) for i, e in enumerate(events) if not e.user_id]
        sendable = [i for i in encoded if events[i].user_id]
        uploaded, requests = 0, 0
        for batch in _batches(
            sendable, encoded, self._overhead(), self.max_batch_bytes
        ):
            took, refused, sent = self._upload_batch(batch, encoded, events)
            uploaded, requests = uploaded + took, requests + sent
            failed += refused

        for item in failed:
            logger.warning(
                "Amplitude refused event %d (insert id %s): %s.",
                item.index,
                insert_id_for(item.insert_id),
                item.field or "no field named",
            )
        logger.info(
            "Uploaded %d events to Amplitude in %d requests; %d refused.",
            uploaded,
            requests,
            len(failed),
        )
        return UploadResult(uploaded, tuple(sorted(failed, key=lambda f: f.index)))

    def _upload_batch(
        self,
        batch: list[int],
        encoded: Mapping[int, bytes],
        events: Sequence[LoopEvent],
    ) -> tuple[int, list[FailedEvent], int]:
        """Send one batch until every event is taken or refused.

        Returns what was taken, what was refused and how many requests it took.
        """
        queue = collections.deque([batch])
        uploaded, requests, throttled_rounds = 0, 0, 0
        failed: list[FailedEvent] = []
        while queue:
            chunk = queue.popleft()
            requests += 1
            try:
                self._post(chunk, encoded, events)
            except _Refused as answer:
                if answer.status == 413:
                    failed += self._split(chunk, queue, events)
                elif answer.status == 400:
                    refused = _refused_events(answer, chunk, events)
                    failed += refused
                    gone = {item.index for item in refused}
                    rest = [i for i in chunk if i not in gone]
                    if rest:
                        queue.appendleft(rest)
                else:
                    throttled_rounds += 1
                    again = self._throttled(answer, chunk, throttled_rounds)
                    uploaded += len(chunk) - len(again)
                    queue.appendleft(again)
                continue
            uploaded += len(chunk)
        return uploaded, failed, requests

    def _split(
        self, chunk: list[int], queue: collections.deque[list[int]], events: Any
    ) -> list[FailedEvent]:
        """Put both halves of a batch too large back in line; one event alone
        too large is refused."""
        if len(chunk) == 1:
            index = chunk[0]
            message = "too large for one upload (413)"
            return [FailedEvent(index, events[index].insert_id, None, message)]
        half = len(chunk) // 2
        queue.extendleft([chunk[half:], chunk[:half]])
        return []

    def _throttled(self, answer: _Refused, chunk: list[int], rounds: int) -> list[int]:
        """The events of `chunk` a 429 names, once its wait is over.

        Raises:
            TransientError: the wait is longer than this sink takes, or the
                same events were throttled too many times.
        """
        named = {i for i in answer.indexes("throttled_events") if i < len(chunk)}
        again = [chunk[i] for i in sorted(named)] or chunk
        wait_s = THROTTLE_WAIT_S if answer.wait_s is None else answer.wait_s
        logger.warning(
            "Amplitude throttled %d of %d events; sending them again in %.1f s.",
            len(again),
            len(chunk),
            wait_s,
        )
        if wait_s > self.max_throttle_wait_s or rounds > MAX_THROTTLE_ROUNDS:
            raise TransientError(
                VENDOR,
                f"POST {UPLOAD_PATH}: {len(again)} events throttled (429)",
                retry_after_s=wait_s,
            )
        time.sleep(wait_s)
        return again

    def _post(
        self, chunk: list[int], encoded: Mapping[int, bytes], events: Any
    ) -> None:
        shortest = min(len(events[i].user_id) for i in chunk)
        body = self._body([encoded[i] for i in chunk], shortest)
        self._http.request("POST", UPLOAD_PATH, call=SAFE, content=body)

    def _body(self, encoded: Sequence[bytes], shortest_id: int) -> bytes:
        """The upload's JSON: the key, the events, and `min_id_length` when a
        user id is shorter than Amplitude's default minimum."""
        head = b'{"api_key":' + json.dumps(self._api_key).encode("utf-8")
        options = b""
        if shortest_id < DEFAULT_MIN_ID_LENGTH:
            options = b',"options":{"min_id_length":%d}' % max(shortest_id, 1)
        return head + b',"events":[' + b",".join(encoded) + b"]" + options + b"}"

    def _overhead(self) -> int:
        """The bytes of an upload beyond its events, at most."""
        return len(self._body([], 1))

    # --- doctor ---------------------------------------------------------------

    def check(self) -> list[Check]:
        """Say whether Amplitude takes the API key, without sending an event.

        HTTP V2 has no read-only call. An upload of no events is refused with
        400 "missing field: events" once the key is accepted, and with 400
        "Invalid API key" when it is not, so it tells the two apart and
        records nothing.
        """
        what = "api key"
        if not self._api_key:
            return [
                Check(VENDOR, what, ok=False, detail=f"{API_KEY_SETTING} is not set")
            ]
        try:
            self._http.request(
                "POST", UPLOAD_PATH, call=SAFE, content=self._body([], 5)
            )
        except _Refused as answer:
            return [self._judge_check(answer)]
        except PermanentError as exc:
            return [Check(VENDOR, what, ok=False, detail=_refusal(exc.status))]
        except VendorError as exc:
            return [Check(VENDOR, what, ok=False, detail=f"unreachable: {exc}")]
        return [Check(VENDOR, what, ok=True, detail="works")]

    def _judge_check(self, answer: _Refused) -> Check:
        what = "api key"
        if answer.status == 400 and answer.body.get("missing_field") == "events":
            return Check(VENDOR, what, ok=True, detail="works")
        if answer.is_invalid_key:
            return Check(VENDOR, what, ok=False, detail=_refusal(400))
        detail = f"an upload of no events was answered {answer.status}"
        return Check(VENDOR, what, ok=False, detail=detail)


def _refusal(status: int | None) -> str:
    return (
        f"Amplitude refused the key ({status}): check {API_KEY_SETTING} and "
        "`vendors.amplitude.residency` (a project's key works in its own region)"
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _encoded(event: LoopEvent) -> bytes:
    """One HTTP V2 event as compact JSON.

    No `ip` is sent: Amplitude locates a user by the upload's own address only
    when `ip` is `$remote`, and the worker's address says nothing of the user.
    """
    record = {
        "user_id": event.user_id,
        "event_type": event.name,
        "time": _time_ms(event.time),
        "insert_id": insert_id_for(event.insert_id),
        "event_properties": dict(event.properties),
    }
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def _time_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch; a time without a zone is UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def _no_user(index: int, event: LoopEvent) -> FailedEvent:
    return FailedEvent(index, event.insert_id, "user_id", "no user id")


def _batches(
    positions: list[int],
    encoded: Mapping[int, bytes],
    overhead: int,
    max_bytes: int,
) -> list[list[int]]:
    """Split events into batches within Amplitude's count and size."""
    batches: list[list[int]] = []
    batch: list[int] = []
    size = overhead
    for index in positions:
        grown = size + len(encoded[index]) + (1 if batch else 0)
        if batch and (len(batch) == MAX_BATCH_EVENTS or grown >= max_bytes):
            batches.append(batch)
            batch, grown = [], overhead + len(encoded[index])
        batch.append(index)
        size = grown
    if batch:
        batches.append(batch)
    return batches


def _refused_events(
    answer: _Refused, chunk: list[int], events: Sequence[LoopEvent]
) -> list[FailedEvent]:
    """The events of a batch a 400 names, by index.

    Raises:
        PermanentError: the answer names no event of the batch (a refused key,
            a body Amplitude could not read).
    """
    named = answer.indexes(*NAMING_FIELDS, "silenced_events")
    found = sorted(i for i in named if i < len(chunk))
    if not found:
        reason = "the API key" if answer.is_invalid_key else "the whole batch"
        raise PermanentError(VENDOR, f"POST {UPLOAD_PATH}: refused {reason} (400)", 400)
    return [_failed_event(answer, i, chunk[i], events) for i in found]


def _failed_event(
    answer: _Refused, position: int, index: int, events: Sequence[LoopEvent]
) -> FailedEvent:
    field = answer.fields_of(position)
    message = "silenced device" if field is None else f"invalid or missing {field}"
    return FailedEvent(index, events[index].insert_id, field, message)


def _read_refusal(response: httpx.Response) -> None:
    """Catch an upload's 400, 413 or 429 before `VendorHttp` judges it.

    `VendorHttp` turns those into errors without reading their bodies; the
    events they name are read here instead.
    """
    if response.status_code not in (400, 413, 429):
        return
    if not response.url.path.endswith(UPLOAD_PATH):
        return
    wait_s = retry_after_of(response.headers)
    raise _Refused(response.status_code, json_or_none(response), wait_s)

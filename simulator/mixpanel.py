"""A simulated Mixpanel: Engage cohort pages, strict /import, the raw event export
and the service account.

What it does, as Mixpanel documents it:

- Basic auth with one service account (`username:secret`, base64 or plain) and a
  `project_id` query parameter on every query and import;
- `POST /api/query/engage` answers the cohorts a test seeds
  (`sim.vendor("mixpanel").cohorts["48213"] = [...]`, each a result as Engage
  gives it: `{"$distinct_id": ..., "$properties": {...}}`) in pages of
  `page_size`, with `session_id`, `page`, `page_size` and `total`; a page past
  the first needs the session id of the first; only `output_properties` come back;
- `POST /import` (gzip decoded by the server) takes at most 2,000 events and
  `max_import_bytes`; with `strict=1` it checks each event (`event`, `time`,
  `distinct_id`, `$insert_id`), keeps the valid ones and answers 400 with
  `failed_records` for the others; events are deduped by (event, time,
  distinct_id, `$insert_id`);
- the Query API's limits: 60 queries an hour and 5 at once (429 beyond);
- `GET /api/2.0/export` answers the events a test seeds (`seed_export`, a list of
  events as `/import` takes them or a JSON lines file) whose day (UTC, from
  `properties.time`) lies from `from_date` to `to_date`, both included, and whose
  name is in `event` when given, as JSON lines; gzip-compressed when the request
  accepts gzip and the body is over 1,400 bytes. Lines set in `export_raw` for a
  day are answered as they are, with that day's events (to send one that is not
  JSON). It answers 400 for a range that ends before it starts, begins before the
  project was `created` or ends after today (UTC), and for a `where` expression,
  which the simulator does not evaluate. Its limits: 60 queries an hour, 3 a
  second and 100 at once;
- `GET /api/app/me` says who the service account is and which projects it sees.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

from simulator.core import Limit, SimRequest, SimResponse, VendorSim

# A made-up service account, known only to the simulator and its tests.
SIM_USERNAME = "referloop-sim.1a2b3c.mp-service-account"
SIM_SECRET = "mp-sim-secret-0000"  # noqa: S105
SIM_PROJECT_ID = 3141592
PAGE_SIZE = 1_000
MAX_IMPORT_EVENTS = 2_000
MAX_IMPORT_BYTES = 10 * 1024 * 1024
QUERIES_PER_HOUR = 60
QUERIES_AT_ONCE = 5
EXPORT_PATH = "/api/2.0/export"
EXPORTS_PER_HOUR = 60
EXPORTS_PER_SECOND = 3
EXPORTS_AT_ONCE = 100
# "If set to gzip and the response body is > 1400 bytes, the response will be
# compressed" (the Export API's OpenAPI document).
GZIP_FROM_BYTES = 1_400
MAX_EXPORT_LIMIT = 100_000
PROJECT_CREATED = date(2024, 1, 1)
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Events before 1971-01-01 or more than an hour ahead are refused.
EARLIEST_TIME_S = datetime(1971, 1, 1, tzinfo=UTC).timestamp()
LATEST_AHEAD_S = 3_600
# A time above this is in milliseconds, below in seconds.
MILLISECONDS_FROM = 10**11
MAX_INSERT_ID_BYTES = 36
INSERT_ID = re.compile(r"[A-Za-z0-9-]+")
# Values Mixpanel refuses for `distinct_id` and `$insert_id` (its import docs).
PLACEHOLDER_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)

EventKey = tuple[str, int, str, str]


class MixpanelSim(VendorSim):
    """Mixpanel's Query, ingestion and app APIs for one project.

    `cohorts` holds what Engage answers, by cohort id; `imported` what /import
    kept, by the key Mixpanel dedupes on. `engage_delay_s` makes each Engage
    query take that long while it counts as running (to see 5 at once).
    `export_events` is what the raw export answers from, `export_raw` lines it
    answers as they are, by day (`YYYY-MM-DD`); `gzipped` counts the export
    answers that went compressed.
    """

    name: ClassVar[str] = "mixpanel"

    def __init__(
        self,
        username: str = SIM_USERNAME,
        secret: str = SIM_SECRET,
        project_id: int = SIM_PROJECT_ID,
    ) -> None:
        self.username = username
        self.secret = secret
        self.project_id = project_id
        self.page_size = PAGE_SIZE
        self.max_import_bytes = MAX_IMPORT_BYTES
        self.engage_delay_s = 0.0
        self.cohorts: dict[str, list[Any]] = {}
        self.imported: dict[EventKey, dict[str, Any]] = {}
        self.created = PROJECT_CREATED
        self.export_events: list[dict[str, Any]] = []
        self.export_raw: dict[str, list[bytes]] = {}
        self.gzipped = 0
        self._sessions: dict[str, str] = {}
        self._session_numbers = itertools.count(1)
        super().__init__()

    def clear(self) -> None:
        """Forget the seeded cohorts and exports, the sessions and what was
        imported."""
        with self.lock:
            self.cohorts.clear()
            self.imported.clear()
            self._sessions.clear()
            self.export_events.clear()
            self.export_raw.clear()
            self.gzipped = 0
        self.created = PROJECT_CREATED
        self.engage_delay_s = 0.0
        self.page_size = PAGE_SIZE
        self.max_import_bytes = MAX_IMPORT_BYTES

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {
            ("POST", "/api/query/engage"): self._engage,
            ("POST", "/import"): self._import,
            ("GET", EXPORT_PATH): self._export,
            ("GET", "/api/app/me"): self._me,
        }

    def seed_export(self, events: Iterable[dict[str, Any]] | Path) -> None:
        """Add events for the raw export to answer: dicts, or a JSON lines file
        (its lines that are not JSON objects are left out)."""
        given = _read_events(events) if isinstance(events, Path) else list(events)
        with self.lock:
            self.export_events.extend(given)

    def authorized(self, request: SimRequest) -> bool:
        return _basic_credentials(request) == (self.username, self.secret)

    def unauthorized(self, request: SimRequest) -> SimResponse:
        body = {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
        return SimResponse(401, body)

    def limits(self) -> list[Limit]:
        return [
            Limit(
                "query",
                count=QUERIES_PER_HOUR,
                window_s=3_600,
                at_once=QUERIES_AT_ONCE,
            ),
            Limit(
                "export",
                count=EXPORTS_PER_HOUR,
                window_s=3_600,
                at_once=EXPORTS_AT_ONCE,
            ),
            Limit("export", count=EXPORTS_PER_SECOND, window_s=1.0),
        ]

    def bucket(self, request: SimRequest) -> str | None:
        if request.path == EXPORT_PATH:
            return "export"
        return "query" if request.path.startswith("/api/query/") else None

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        body = {
            "code": 429,
            "error": "Project exceeded rate limits. Please retry the request "
            "with exponential backoff.",
            "status": "Too Many Requests",
        }
        headers = {"Retry-After": str(max(1, round(retry_after_s)))}
        return SimResponse(429, body, headers)

    def error(self, request: SimRequest, status: int) -> SimResponse:
        return SimResponse(status, {"error": f"simulated {status}", "status": "error"})

    # --- Engage -----------------------------------------------------------------

    def _engage(self, request: SimRequest) -> SimResponse:
        refused = self._project_refusal(request)
        if refused is not None:
            return refused
        form = request.form
        cohort_id = _cohort_of(form.get("filter_by_cohort"))
        if cohort_id is None:
            return _bad_request("filter_by_cohort must be a JSON object with an id")
        page = _page_of(form.get("page"))
        if page is None:
            return _bad_request("page must be a whole number from 0")
        session_id = self._session(cohort_id, page, form.get("session_id"))
        if session_id is None:
            return _bad_request("a page above 0 needs the session_id of page 0")

        if self.engage_delay_s:
            time.sleep(self.engage_delay_s)
        with self.lock:
            members = list(self.cohorts.get(cohort_id, []))
        wanted = _names(form.get("output_properties"))
        chosen = members[page * self.page_size : (page + 1) * self.page_size]
        body = {
            "page": page,
            "page_size": self.page_size,
            "session_id": session_id,
            "status": "ok",
            "total": len(members),
            "results": [_only(result, wanted) for result in chosen],
        }
        return SimResponse(200, body)

    def _session(self, cohort_id: str, page: int, given: str | None) -> str | None:
        """The query's session: new for page 0, the first page's after that."""
        with self.lock:
            if page == 0:
                session_id = f"{next(self._session_numbers)}-SIMSESSION"
                self._sessions[session_id] = cohort_id
                return session_id
            if given is None or self._sessions.get(given) != cohort_id:
                return None
            return given

    # --- /import ----------------------------------------------------------------

    def _import(self, request: SimRequest) -> SimResponse:
        refused = self._project_refusal(request)
        if refused is not None:
            return refused
        if len(request.body) > self.max_import_bytes:
            return SimResponse(
                413,
                {
                    "code": 413,
                    "error": f"request exceeds max limit of {self.max_import_bytes} "
                    "bytes",
                    "status": "Request Entity Too Large",
                },
            )
        records = _records(request)
        if records is None:
            return _bad_request("the body is not a JSON array of events")
        if len(records) > MAX_IMPORT_EVENTS:
            return _bad_request(f"more than {MAX_IMPORT_EVENTS} events")

        strict = request.param("strict") == "1"
        failed = []
        kept = 0
        for index, record in enumerate(records):
            problem = _problem(record) if strict else None
            if problem is None:
                kept += self._keep(record)
                continue
            field, message = problem
            failed.append(
                {
                    "index": index,
                    "insert_id": _insert_id_of(record),
                    "field": field,
                    "message": message,
                }
            )
        return _import_answer(kept, failed)

    def _keep(self, record: Any) -> int:
        """Keep one event, the latest of its duplicates; 1 if it is valid."""
        if not isinstance(record, dict) or not isinstance(
            record.get("properties"), dict
        ):
            return 0
        properties = record["properties"]
        key = (
            str(record.get("event")),
            _time_ms(properties.get("time")),
            str(properties.get("distinct_id")),
            str(properties.get("$insert_id")),
        )
        with self.lock:
            self.imported.pop(key, None)
            self.imported[key] = record
        return 1

    # --- raw export -------------------------------------------------------------

    def _export(self, request: SimRequest) -> SimResponse:
        refused = self._project_refusal(request)
        if refused is not None:
            return refused
        asked = self._export_query(request)
        if isinstance(asked, SimResponse):
            return asked

        first, last, names, limit = asked
        with self.lock:
            events = list(self.export_events)
            raw = {day: list(lines) for day, lines in self.export_raw.items()}
        dated = [
            (day, _line(event))
            for event in events
            if (day := _day_of(event)) is not None
            and first <= day <= last
            and (names is None or event.get("event") in names)
        ]
        dated += [
            (day, line.rstrip(b"\n") + b"\n")
            for text, lines in raw.items()
            if first <= (day := date.fromisoformat(text)) <= last
            for line in lines
        ]
        dated.sort(key=lambda item: item[0])
        chosen = dated[:limit] if limit is not None else dated
        return self._export_answer(request, b"".join(line for _, line in chosen))

    def _export_query(
        self, request: SimRequest
    ) -> SimResponse | tuple[date, date, set[str] | None, int | None]:
        """The range, names and limit asked for, or the 400 Mixpanel answers."""
        first = _date_of(request.param("from_date"))
        last = _date_of(request.param("to_date"))
        if first is None or last is None:
            return _bad_request("from_date and to_date are required, as yyyy-mm-dd")
        if last < first:
            return _bad_request("to_date cannot be before from_date")
        if first < self.created:
            return _bad_request(
                f"from_date cannot be before the project was created ({self.created})"
            )
        if last > datetime.now(UTC).date():
            return _bad_request("to_date cannot be later than today")
        if request.param("where") is not None:
            return _bad_request("where expressions are not simulated")
        names = _names(request.param("event"))
        if request.param("event") is not None and names is None:
            return _bad_request("event must be a JSON array of event names")
        limit = _limit_of(request.param("limit"))
        if limit == 0:
            return _bad_request(f"limit must be from 1 to {MAX_EXPORT_LIMIT}")
        return first, last, None if names is None else set(names), limit

    def _export_answer(self, request: SimRequest, body: bytes) -> SimResponse:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        accepted = request.header("accept-encoding") or ""
        if "gzip" in accepted and len(body) > GZIP_FROM_BYTES:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
            with self.lock:
                self.gzipped += 1
        return SimResponse(200, raw=body, headers=headers)

    # --- app API ----------------------------------------------------------------

    def _me(self, request: SimRequest) -> SimResponse:
        project = {"name": "Simulated project", "role": "owner"}
        results = {
            "user_name": self.username,
            "projects": {str(self.project_id): project},
        }
        return SimResponse(200, {"status": "ok", "results": results})

    def _project_refusal(self, request: SimRequest) -> SimResponse | None:
        given = request.param("project_id")
        if given is None:
            return _bad_request("project_id is required with a service account")
        if given != str(self.project_id):
            body = {
                "error": "service account has no access to project",
                "status": "error",
            }
            return SimResponse(403, body)
        return None


def _basic_credentials(request: SimRequest) -> tuple[str, str] | None:
    """The Basic credentials; Mixpanel takes them base64-encoded or plain."""
    header = request.header("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        text = value
    username, colon, secret = text.partition(":")
    return (username, secret) if colon else None


def _bad_request(message: str) -> SimResponse:
    return SimResponse(400, {"error": message, "status": "error"})


def _cohort_of(text: str | None) -> str | None:
    try:
        given = json.loads(text) if text else None
    except ValueError:
        return None
    cohort_id = given.get("id") if isinstance(given, dict) else None
    if isinstance(cohort_id, bool) or not isinstance(cohort_id, int | str):
        return None
    return str(cohort_id)


def _page_of(text: str | None) -> int | None:
    if text is None:
        return 0
    return int(text) if text.isdigit() else None


def _names(text: str | None) -> list[str] | None:
    """The output properties asked for; None when all are."""
    try:
        names = json.loads(text) if text else None
    except ValueError:
        return None
    return [str(name) for name in names] if isinstance(names, list) else None


def _only(result: Any, wanted: list[str] | None) -> Any:
    if wanted is None or not isinstance(result, dict):
        return result
    properties = result.get("$properties")
    if not isinstance(properties, dict):
        return result
    kept = {key: value for key, value in properties.items() if key in wanted}
    return {**result, "$properties": kept}


def _read_events(path: Path) -> list[dict[str, Any]]:
    found = []
    with path.open("rb") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
    return found


def _line(event: dict[str, Any]) -> bytes:
    # Compact, and non-ASCII as UTF-8: as the export writes its lines.
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def _day_of(event: dict[str, Any]) -> date | None:
    """The UTC day of an event's `properties.time` (seconds or milliseconds)."""
    properties = event.get("properties")
    moment = properties.get("time") if isinstance(properties, dict) else None
    if isinstance(moment, bool) or not isinstance(moment, int | float):
        return None
    seconds = moment / 1000 if moment >= MILLISECONDS_FROM else moment
    return datetime.fromtimestamp(seconds, UTC).date()


def _date_of(text: str | None) -> date | None:
    if text is None or DAY.fullmatch(text) is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _limit_of(text: str | None) -> int | None:
    """The `limit` asked for; 0 when it is not a number Mixpanel takes."""
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_EXPORT_LIMIT:
        return 0
    return int(text)


def _records(request: SimRequest) -> list[Any] | None:
    """The events of an import: a JSON array, or one JSON object a line."""
    text = request.body.decode("utf-8", "replace")
    if (request.header("content-type") or "").startswith("application/x-ndjson"):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, list) else None


def _problem(record: Any) -> tuple[str, str] | None:
    """What strict validation finds wrong with one event, as (field, message)."""
    if not isinstance(record, dict):
        return "", "event must be a JSON object"
    name = record.get("event")
    if not isinstance(name, str) or not name:
        return "event", "'event' is required and must be a non-empty string"
    properties = record.get("properties")
    if not isinstance(properties, dict):
        return "properties", "'properties' is required and must be an object"
    for check in (_time_problem, _distinct_id_problem, _insert_id_problem):
        found = check(properties)
        if found is not None:
            return found
    return None


def _time_problem(properties: dict[str, Any]) -> tuple[str, str] | None:
    field = "properties.time"
    value = properties.get("time")
    if isinstance(value, bool) or not isinstance(value, int):
        return field, f"'{field}' is invalid: must be specified as seconds since epoch"
    seconds = value / 1000 if value >= MILLISECONDS_FROM else value
    if seconds < EARLIEST_TIME_S or seconds > time.time() + LATEST_AHEAD_S:
        return field, f"'{field}' is invalid: out of the accepted range"
    return None


def _distinct_id_problem(properties: dict[str, Any]) -> tuple[str, str] | None:
    field = "properties.distinct_id"
    value = properties.get("distinct_id")
    if not isinstance(value, str):
        return field, f"'{field}' is required and must be a string"
    if value.lower() in PLACEHOLDER_IDS:
        return field, f"'{field}' is invalid: a placeholder value"
    return None


def _insert_id_problem(properties: dict[str, Any]) -> tuple[str, str] | None:
    field = "properties.$insert_id"
    value = properties.get("$insert_id")
    if not isinstance(value, str):
        return field, f"'{field}' is required and must be a string"
    too_long = len(value.encode("utf-8")) > MAX_INSERT_ID_BYTES
    if too_long or not INSERT_ID.fullmatch(value) or value.lower() in PLACEHOLDER_IDS:
        return field, f"'{field}' is invalid: at most 36 letters, digits or dashes"
    return None


def _insert_id_of(record: Any) -> str:
    properties = record.get("properties") if isinstance(record, dict) else None
    value = properties.get("$insert_id") if isinstance(properties, dict) else None
    return value if isinstance(value, str) else ""


def _time_ms(value: Any) -> int:
    number = int(value) if isinstance(value, int) else 0
    return number if number >= MILLISECONDS_FROM else number * 1000


def _import_answer(imported: int, failed: list[dict[str, Any]]) -> SimResponse:
    if not failed:
        body = {"code": 200, "num_records_imported": imported, "status": "OK"}
        return SimResponse(200, body)
    body = {
        "code": 400,
        "error": "some data points in the request failed validation",
        "status": "Bad Request",
        "num_records_imported": imported,
        "failed_records": failed,
    }
    return SimResponse(400, body)

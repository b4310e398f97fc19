"""A simulated Amplitude Dashboard REST API: the behavioral cohorts and their download.

What it does, as Amplitude documents it:

- Basic auth with the project's `api_key:secret_key`;
- `GET /api/3/cohorts` lists the cohorts a test seeds (`seed`), each with `id`,
  `name`, `size`, `lastComputed` (ms), `published` and `archived`;
- `GET /api/5/cohorts/request/:id` starts a download job (202, `request_id`
  and `cohort_id`) and counts it in `downloads`; the members are taken as they
  are at that moment;
- `GET /api/5/cohorts/request-status/:request_id` answers 202 (`JOB
  INPROGRESS`) for the job's first `polls_before_done` polls, then 200 (`JOB
  COMPLETED`);
- `GET /api/5/cohorts/request/:request_id/file` answers a completed job's CSV
  (`user_id`, `amplitude_id`, then the properties asked for with `props=1` and
  `propKeys`) through a 302 to a signed link on another path of this server
  (`/files/...`), which refuses a request carrying credentials, as a storage
  host does; with `redirect` off it answers the CSV itself;
- 60 download requests in any 10 minutes and 5 calls at once (429 beyond);
- `GET /api/2/export?start=YYYYMMDDTHH&end=YYYYMMDDTHH` answers the events a
  test seeds (`seed_export`) received in those hours (`server_upload_time`,
  else `event_time`), both included, as Amplitude's
  Export API does: a zip archive holding one gzipped JSON lines file per hour
  with events, named `<project>/<project>_<day>_<hour>#0.json.gz`; 404 when no
  hour has events; 400 for a malformed hour, `end` before `start`, more than
  365 days, or more than `export_limit` events (the 4 GB limit, made small).
"""

from __future__ import annotations

import base64
import binascii
import csv
import gzip
import io
import itertools
import json
import secrets
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from simulator.amplitude import API_KEY
from simulator.core import Limit, SimRequest, SimResponse, VendorSim

# Made-up credentials, known only to the simulator and its tests.
# The project's key is the one the simulated ingestion takes too.
SIM_API_KEY = API_KEY
SIM_SECRET_KEY = "amp-sim-secret-key-0000"  # noqa: S105
REQUESTS_PER_10_MIN = 60
AT_ONCE = 5
FILES = "/files/"
REQUEST = "/api/5/cohorts/request/"
EXPORT = "/api/2/export"
SIM_PROJECT = 314159
HOUR_FORMAT = "%Y%m%dT%H"
MAX_EXPORT_DAYS = 365


@dataclass
class SimCohort:
    """A seeded cohort: its members' rows (`user_id`, `amplitude_id` and any
    properties) and when Amplitude last computed it."""

    cohort_id: str
    name: str
    last_computed_ms: int
    rows: list[dict[str, str]] = field(default_factory=list)
    archived: bool = False
    size: int | None = None


@dataclass
class _Job:
    cohort_id: str
    csv: bytes
    polls: int = 0


class AmplitudeCohortsSim(VendorSim):
    """Amplitude's cohort list and download for one project.

    `downloads` counts the download requests taken; `polls_before_done` is how
    many status polls a job answers 202 before it completes; `raw_csv` by
    cohort id replaces the file the simulator would write (to send an odd one).
    """

    name: ClassVar[str] = "amplitude-dashboard"

    def __init__(
        self, api_key: str = SIM_API_KEY, secret_key: str = SIM_SECRET_KEY
    ) -> None:
        self.api_key = api_key
        self.secret_key = secret_key
        self.cohorts: dict[str, SimCohort] = {}
        self.raw_csv: dict[str, bytes] = {}
        self.polls_before_done = 0
        self.redirect = True
        self.downloads = 0
        self.export_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.export_limit: int | None = None
        self._jobs: dict[str, _Job] = {}
        self._links: dict[str, str] = {}
        self._numbers = itertools.count(1)
        super().__init__()

    def clear(self) -> None:
        """Forget the seeded cohorts, the jobs and their links."""
        with self.lock:
            self.cohorts.clear()
            self.raw_csv.clear()
            self._jobs.clear()
            self._links.clear()
            self.export_events.clear()
            self.downloads = 0
        self.polls_before_done = 0
        self.export_limit = None
        self.redirect = True

    def seed(self, cohort: SimCohort) -> None:
        with self.lock:
            self.cohorts[cohort.cohort_id] = cohort

    def seed_export(self, events: Iterable[dict[str, Any]] | Path) -> None:
        """Add events for the Export API to answer: dicts in its shape, or a
        JSON lines file of them. Each goes to the hour of its `event_time`."""
        given = _read_lines(events) if isinstance(events, Path) else list(events)
        with self.lock:
            for event in given:
                self.export_events[_hour_of(event)].append(event)

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {
            ("GET", "/api/3/cohorts"): self._list,
            ("GET", REQUEST + "{cohort_id}"): self._request,
            ("GET", "/api/5/cohorts/request-status/{request_id}"): self._status,
            ("GET", REQUEST + "{request_id}/file"): self._file,
            ("GET", FILES + "{token}"): self._link,
            ("GET", EXPORT): self._export,
        }

    # --- auth and limits ----------------------------------------------------

    def authorized(self, request: SimRequest) -> bool:
        if request.path.startswith(FILES):
            return True
        return _basic(request) == (self.api_key, self.secret_key)

    def unauthorized(self, request: SimRequest) -> SimResponse:
        return SimResponse(401, {"error": "Invalid API key or secret key"})

    def limits(self) -> list[Limit]:
        return [
            Limit("request", REQUESTS_PER_10_MIN, 600.0, at_once=AT_ONCE),
            Limit("dashboard", 10**6, 600.0, at_once=AT_ONCE),
        ]

    def bucket(self, request: SimRequest) -> str | None:
        if request.path.startswith(FILES):
            return None
        is_request = request.path.startswith(REQUEST) and request.path.count("/") == 5
        return "request" if is_request else "dashboard"

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        headers = {"Retry-After": str(max(1, round(retry_after_s)))}
        return SimResponse(429, {"error": "Too many requests"}, headers)

    # --- handlers -----------------------------------------------------------

    def _list(self, request: SimRequest) -> SimResponse:
        with self.lock:
            listed = [_listed(cohort) for cohort in self.cohorts.values()]
        return SimResponse(200, {"cohorts": listed})

    def _request(self, request: SimRequest, cohort_id: str) -> SimResponse:
        with self.lock:
            cohort = self.cohorts.get(cohort_id)
            if cohort is None:
                return SimResponse(404, {"error": f"cohort {cohort_id} not found"})
            body = self.raw_csv.get(cohort_id) or _csv(cohort.rows, _keys(request))
            request_id = f"sim-request-{next(self._numbers)}"
            self._jobs[request_id] = _Job(cohort_id, body)
            self.downloads += 1
        answer = {"request_id": request_id, "cohort_id": cohort_id}
        return SimResponse(202, answer)

    def _status(self, request: SimRequest, request_id: str) -> SimResponse:
        with self.lock:
            job = self._jobs.get(request_id)
            if job is None:
                return SimResponse(404, {"error": "request not found"})
            job.polls += 1
            done = job.polls > self.polls_before_done
        status = "JOB COMPLETED" if done else "JOB INPROGRESS"
        body = {
            "request_id": request_id,
            "cohort_id": job.cohort_id,
            "async_status": status,
        }
        return SimResponse(200 if done else 202, body)

    def _file(self, request: SimRequest, request_id: str) -> SimResponse:
        with self.lock:
            job = self._jobs.get(request_id)
            done = job is not None and job.polls > self.polls_before_done
            if job is None or not done:
                return SimResponse(400, {"error": "the job has not completed"})
            if not self.redirect:
                return _csv_answer(job.csv)
            token = secrets.token_hex(8)
            self._links[token] = request_id
        host = request.header("host") or "127.0.0.1"
        link = f"http://{host}/{self.name}{FILES}{token}?signature={token[::-1]}"
        return SimResponse(302, {"message": "redirect"}, {"Location": link})

    def _link(self, request: SimRequest, token: str) -> SimResponse:
        if request.header("authorization") is not None:
            body = b"<Error><Code>InvalidArgument</Code></Error>"
            return SimResponse(400, raw=body, headers={"Content-Type": "text/xml"})
        with self.lock:
            job = self._jobs.get(self._links.get(token, ""))
        if job is None or request.param("signature") != token[::-1]:
            return SimResponse(403, raw=b"<Error><Code>AccessDenied</Code></Error>")
        return _csv_answer(job.csv)

    def _export(self, request: SimRequest) -> SimResponse:
        hours = _hours_asked(request)
        if isinstance(hours, str):
            return SimResponse(400, {"error": hours})
        with self.lock:
            found = {hour: list(self.export_events.get(hour, ())) for hour in hours}
        found = {hour: events for hour, events in found.items() if events}
        if not found:
            return SimResponse(404, {"error": "Raw data files were not found."})
        total = sum(len(events) for events in found.values())
        if self.export_limit is not None and total > self.export_limit:
            return SimResponse(
                400,
                {
                    "error": "The file size of the exported data "
                    "is too large. Shorten the time ranges and "
                    "try again. The limit size is 4GB."
                },
            )
        return SimResponse(
            200, raw=_archive(found), headers={"Content-Type": "application/zip"}
        )


def _hours_asked(request: SimRequest) -> list[str] | str:
    """The hours from `start` to `end`, both included, or why they are wrong."""
    try:
        start = datetime.strptime(request.param("start") or "", HOUR_FORMAT)
        end = datetime.strptime(request.param("end") or "", HOUR_FORMAT)
    except ValueError:
        return "start and end must be hours, as YYYYMMDDTHH"
    if end < start:
        return "end must not be before start"
    if end - start >= timedelta(days=MAX_EXPORT_DAYS):
        return f"the range must be at most {MAX_EXPORT_DAYS} days"
    count = int((end - start) / timedelta(hours=1)) + 1
    moments = (start + timedelta(hours=n) for n in range(count))
    return [moment.strftime(HOUR_FORMAT) for moment in moments]


def _hour_of(event: dict[str, Any]) -> str:
    """The hour Amplitude took the event in, which is the hour it exports it in."""
    taken = event.get("server_upload_time") or event["event_time"]
    moment = datetime.strptime(str(taken)[:13], "%Y-%m-%d %H")
    return moment.strftime(HOUR_FORMAT)


def _archive(found: dict[str, list[dict[str, Any]]]) -> bytes:
    """A zip of one gzipped JSON lines file per hour, as the Export API sends."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for hour, events in sorted(found.items()):
            moment = datetime.strptime(hour, HOUR_FORMAT)
            name = f"{SIM_PROJECT}/{SIM_PROJECT}_{moment:%Y-%m-%d_%-H}#0.json.gz"
            text = "".join(json.dumps(event) + "\n" for event in events)
            archive.writestr(name, gzip.compress(text.encode("utf-8")))
    return buffer.getvalue()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
    return found


def _basic(request: SimRequest) -> tuple[str, str] | None:
    header = request.header("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, colon, secret = text.partition(":")
    return (key, secret) if colon else None


def _listed(cohort: SimCohort) -> dict[str, Any]:
    size = cohort.size if cohort.size is not None else len(cohort.rows)
    return {
        "id": cohort.cohort_id,
        "name": cohort.name,
        "size": size,
        "lastComputed": cohort.last_computed_ms,
        "published": True,
        "archived": cohort.archived,
        "appId": 314159,
    }


def _keys(request: SimRequest) -> list[str] | None:
    """The properties asked for: None for all, [] for none."""
    if request.param("props") != "1":
        return []
    asked = request.query.get("propKeys")
    return list(asked) if asked else None


def _csv(rows: list[dict[str, str]], keys: list[str] | None) -> bytes:
    known = list(dict.fromkeys(key for row in rows for key in row))
    names = [key for key in known if key not in ("user_id", "amplitude_id")]
    chosen = names if keys is None else [key for key in names if key in keys]
    columns = ["user_id", "amplitude_id", *chosen]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(name, "") for name in columns])
    return text.getvalue().encode("utf-8")


def _csv_answer(body: bytes) -> SimResponse:
    headers: Mapping[str, str] = {"Content-Type": "text/csv; charset=utf-8"}
    return SimResponse(200, raw=body, headers=headers)

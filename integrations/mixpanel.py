"""Mixpanel: cohorts read from Engage, referloop's events imported, cohort-sync pages.

Mixpanel is a source and a sink, never a channel:

- `MixpanelAdapter.cohort_pages` pages a cohort's members out of the Query API
  (`POST /api/query/engage` with `filter_by_cohort`), 1,000 a page. The Query API
  allows 60 queries an hour and 5 at once per project: a shared `Budget` paces the
  queries and shared `Slots` bound those in flight, for every worker at once.
- `MixpanelAdapter.record` imports referloop's own events (nudge sent, nudge held
  back, reward granted) through `POST /import?strict=1`, gzipped, in batches of at
  most 2,000. Each event's `$insert_id` derives from its `LoopEvent.insert_id`, so
  Mixpanel dedupes a resend and the import is safe to repeat. Events Mixpanel
  refuses are reported one by one; the rest of their batch counts as imported.
- `parse_cohort_sync` reads one page of Mixpanel's cohort-sync webhook (`members`,
  `add_members`, `remove_members`) and `cohort_sync_answer` builds the answer it
  expects; the web process receives the webhook and uses both.

Both halves authenticate with a service account (HTTP Basic) and a `project_id`.
Residency picks the hosts: the Query API on `mixpanel.com`, `eu.mixpanel.com` or
`in.mixpanel.com`, ingestion on `api.mixpanel.com`, `api-eu.mixpanel.com` or
`api-in.mixpanel.com` (the `servers` of Mixpanel's query and ingestion OpenAPI
documents).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from integrations.base import Check, LoopEvent, Member, Rejected
from integrations.http import DEFAULT_TIMEOUT, Call, VendorHttp, json_or_none
from orchestrator.budgets import Budget, Slots, vendor_caps
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap

logger = logging.getLogger(__name__)

VENDOR = "mixpanel"
QUERY_URLS = {
    "us": "https://mixpanel.com",
    "eu": "https://eu.mixpanel.com",
    "in": "https://in.mixpanel.com",
}
INGESTION_URLS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
ENGAGE_PATH = "/api/query/engage"
ME_PATH = "/api/app/me"
IMPORT_PATH = "/import"

# Query API: "a maximum of 5 concurrent queries and 60 queries per hour" per
# project. Ingestion: "2GB of uncompressed JSON/minute or ~30k events per second",
# which is 15 full batches of 2,000 a second.
DEFAULT_BUDGETS: dict[str, Cap] = {
    "mixpanel:query": parse_cap("60 per 1h"),
    "mixpanel:import": parse_cap("15 per 1s"),
}
QUERY_AT_ONCE = 5
# Up to ten queries go at once (a poll's pages); after a burst the pace is one per
# 3600 / 51 s, about 71 s, so that no hour holds more than 60 (see Budget).
QUERY_BURST = 10
SLOT_LEASE = timedelta(minutes=2)
SLOT_WAIT_S = 2.0
SLOT_RETRY_AFTER_S = 10.0
# A read that has begun waits this long for its next page's budget slot rather
# than give up the pages it read (within the slot's lease); a read that has not
# begun waits no longer than any other call.
PAGE_BUDGET_WAIT_MS = 100_000
# Engage computes the cohort for its first page, which takes longer than a send.
QUERY_TIMEOUT = httpx.Timeout(60.0, connect=3.0, pool=5.0)

# Engage answers at most `page_size` (1,000) profiles a page.
ENGAGE_PAGE_SIZE = 1_000
DEFAULT_OUTPUT_PROPERTIES = (
    "$email",
    "$first_name",
    "$last_name",
    "$name",
    "$timezone",
)
DEFAULT_ACCOUNT_PROPERTY = "account_id"
# Mixpanel's reserved profile properties, under the names every other source uses
# and templates and guardrails read (`user.email`, `user.time_zone`).
PROFILE_FIELDS = {
    "$email": "email",
    "$first_name": "first_name",
    "$last_name": "last_name",
    "$name": "name",
    "$timezone": "time_zone",
}

# /import: "up to 2000 events and 10MB uncompressed per request". Mixpanel's own
# 413 answer (in its OpenAPI document) names 2,097,152 bytes, as older versions of
# the page did; batches stay under that, the smaller of the two.
MAX_BATCH_EVENTS = 2_000
MAX_BATCH_BYTES = 2 * 1024 * 1024
# "$insert_ids must be ≤ 36 bytes and contain only alphanumeric characters or -".
INSERT_ID_LENGTH = 36

NUDGE_SENT = "referloop nudge sent"
NUDGE_HELD_BACK = "referloop nudge held back"
REWARD_GRANTED = "referloop reward granted"

SAFE = Call(safe_to_repeat=True)
Residency = Literal["us", "eu", "in"]
SyncAction = Literal["members", "add_members", "remove_members"]
SYNC_ACTIONS: tuple[SyncAction, ...] = ("members", "add_members", "remove_members")
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class FailedEvent:
    """An event Mixpanel refused: where it was in the import and why.

    `index` is its position in the events given to `import_events`; `field` and
    `message` are Mixpanel's own words for what is wrong with it.
    """

    index: int
    insert_id: str
    field: str | None
    message: str


@dataclass(frozen=True)
class ImportResult:
    """What an import did: how many events Mixpanel took, and those it refused."""

    imported: int
    failed: tuple[FailedEvent, ...] = ()


@dataclass(frozen=True)
class _EngagePage:
    results: list[Any]
    page: int
    page_size: int
    session_id: str | None

    @property
    def is_last(self) -> bool:
        # Mixpanel's paging recipe: fewer results than `page_size` ends the query.
        return len(self.results) < self.page_size or not self.session_id


class _PartialImport(Exception):
    """A strict import answered 400 with the records it refused."""

    def __init__(self, failed_records: list[Any]) -> None:
        self.failed_records = failed_records


class MixpanelAdapter:
    """Read cohorts from Mixpanel and import referloop's events into it.

    `username` and `secret` are a service account's; `project_id` the project
    both halves address. `query_url` and `ingestion_url` replace the residency's
    hosts, for a simulated vendor. `output_properties` are the profile properties
    a cohort read asks for (few keep pages small), and `account_property` the one
    holding the user's account id. With a `store`, the Query API's budget and
    concurrency bound are shared with every worker; `budgets` override
    `DEFAULT_BUDGETS` by name.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        username: str,
        secret: str,
        project_id: int | None,
        *,
        residency: Residency = "us",
        query_url: str | None = None,
        ingestion_url: str | None = None,
        output_properties: Sequence[str] = DEFAULT_OUTPUT_PROPERTIES,
        account_property: str | None = DEFAULT_ACCOUNT_PROPERTY,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        query_burst: int = QUERY_BURST,
        slot_wait_s: float = SLOT_WAIT_S,
        timeout: httpx.Timeout | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        caps = vendor_caps("Mixpanel", DEFAULT_BUDGETS, budgets)
        self.username = username
        self._secret = secret
        self.project_id = project_id
        self.account_property = account_property
        self.output_properties = _with(output_properties, account_property)
        self.slot_wait_s = slot_wait_s
        self.max_batch_bytes = max_batch_bytes
        self._query_budget, self._slots, import_budget = _shared_limits(
            store, caps, query_burst
        )

        query_base = query_url or QUERY_URLS[residency]
        auth = (username, secret)
        self._query = VendorHttp(
            VENDOR, query_base, auth=auth, timeout=timeout or QUERY_TIMEOUT
        )
        self._paging = VendorHttp(
            VENDOR,
            query_base,
            auth=auth,
            timeout=timeout or QUERY_TIMEOUT,
            budget_wait_ms=PAGE_BUDGET_WAIT_MS,
        )
        self._ingestion = VendorHttp(
            VENDOR,
            ingestion_url or INGESTION_URLS[residency],
            auth=auth,
            budget=import_budget,
            timeout=timeout or DEFAULT_TIMEOUT,
            on_response=_read_partial_import,
        )

    def close(self) -> None:
        for client in (self._query, self._paging, self._ingestion):
            client.close()

    # --- cohorts --------------------------------------------------------------

    def cohort_pages(self, cohort: str) -> Iterator[list[Member | Rejected]]:
        """Yield the members of `cohort` (`mixpanel:<id>`), a page of Engage at a
        time; a result without a distinct id is a `Rejected` in its page.

        An empty cohort gives one empty page: empty, which is not unread.

        Raises:
            ConfigurationError: the cohort is not a Mixpanel cohort id, or the
                project id is not set.
            TransientError: the budget or the concurrent queries are used up,
                or Mixpanel did not answer; read again later.
            PermanentError: Mixpanel refused the query (credentials, cohort).
        """
        form = self._engage_form(_cohort_id(cohort))
        self._require_project()

        number, members, rejected = 0, 0, 0
        answer = self._engage(form, first=True)
        while True:
            page = self._members(cohort, answer)
            members += sum(isinstance(item, Member) for item in page)
            rejected += sum(isinstance(item, Rejected) for item in page)
            if page or number == 0:
                yield page
            number += 1
            if answer.is_last:
                break
            paged = {**form, "session_id": str(answer.session_id)}
            answer = self._engage({**paged, "page": str(answer.page + 1)}, first=False)

        logger.info(
            "Read %d members of cohort %s from Mixpanel in %d queries; %d rejected.",
            members,
            cohort,
            number,
            rejected,
        )

    def _engage_form(self, cohort_id: int) -> dict[str, str]:
        # Form fields, as the Query API's OpenAPI document lists them; both
        # `filter_by_cohort` and `output_properties` are JSON written as text.
        return {
            "filter_by_cohort": json.dumps({"id": cohort_id}),
            "output_properties": json.dumps(list(self.output_properties)),
        }

    def _engage(self, form: dict[str, str], *, first: bool) -> _EngagePage:
        http = self._query if first else self._paging
        with self._query_slot(f"POST {ENGAGE_PATH}"):
            response = http.request(
                "POST",
                ENGAGE_PATH,
                call=SAFE,
                budget=self._query_budget,
                params=self._project_params(),
                data=form,
            )
        return _engage_page(json_or_none(response), int(form.get("page", "0")))

    @contextmanager
    def _query_slot(self, where: str) -> Iterator[None]:
        """Hold one of the project's concurrent query slots for the block.

        Raises:
            TransientError: no slot came free within `slot_wait_s`.
        """
        if self._slots is None:
            yield
            return
        with self._slots.held(self.slot_wait_s) as held:
            if not held:
                raise TransientError(
                    VENDOR,
                    f"{where}: {QUERY_AT_ONCE} queries already run at once "
                    "for the project",
                    retry_after_s=SLOT_RETRY_AFTER_S,
                )
            yield

    def _members(self, cohort: str, answer: _EngagePage) -> list[Member | Rejected]:
        return [
            self._member(f"{cohort} page {answer.page} result {index}", result)
            for index, result in enumerate(answer.results)
        ]

    def _member(self, where: str, result: Any) -> Member | Rejected:
        if not isinstance(result, dict):
            return Rejected(where, "not a JSON object")
        user_id = _identifier(result.get("$distinct_id"))
        if user_id is None:
            return Rejected(where, "no `$distinct_id`")
        properties = result.get("$properties") or {}
        if not isinstance(properties, dict):
            return Rejected(where, "`$properties` is not an object")

        account = (
            properties.get(self.account_property) if self.account_property else None
        )
        user = {_field(str(key)): value for key, value in properties.items()}
        return Member(user_id=user_id, account_id=_identifier(account), user=user)

    # --- events ---------------------------------------------------------------

    def record(self, events: Sequence[LoopEvent]) -> None:
        """Import `events`; those Mixpanel refuses are logged, not raised.

        Raises:
            the errors of `import_events`.
        """
        self.import_events(events)

    def import_events(self, events: Sequence[LoopEvent]) -> ImportResult:
        """Import `events` into Mixpanel, in gzipped batches of at most 2,000.

        Safe to repeat: Mixpanel dedupes each event by its `$insert_id`, derived
        from the event's `insert_id`. A batch Mixpanel answers with a partial 400
        is never sent again: the events it took count as imported, and those it
        refused are logged and returned.

        Raises:
            ConfigurationError: the project id is not set.
            TransientError: the budget is used up, Mixpanel is unavailable or
                did not answer; repeat the whole import later.
            PermanentError: Mixpanel refused the credentials or a whole batch.
        """
        if not events:
            return ImportResult(0)
        self._require_project()

        encoded = [_encoded(event) for event in events]
        imported, batches = 0, 0
        failed: list[FailedEvent] = []
        for offset, batch in _batches(encoded, self.max_batch_bytes):
            took, refused = self._import_batch(offset, batch, events)
            imported, batches = imported + took, batches + 1
            failed += refused

        logger.info(
            "Imported %d events into Mixpanel project %s in %d batches; %d refused.",
            imported,
            self.project_id,
            batches,
            len(failed),
        )
        return ImportResult(imported, tuple(failed))

    def _import_batch(
        self, offset: int, batch: list[bytes], events: Sequence[LoopEvent]
    ) -> tuple[int, list[FailedEvent]]:
        body = b"[" + b",".join(batch) + b"]"
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        try:
            self._ingestion.request(
                "POST",
                IMPORT_PATH,
                call=SAFE,
                params={"strict": "1", **self._project_params()},
                content=gzip.compress(body),
                headers=headers,
            )
        except _PartialImport as partial:
            failed = _failed_events(offset, len(batch), partial.failed_records, events)
            for item in failed:
                logger.warning(
                    "Mixpanel refused event %d (insert id %s): %s.",
                    item.index,
                    item.insert_id,
                    item.field or "no field named",
                )
            return len(batch) - len(failed), failed
        return len(batch), []

    # --- doctor ---------------------------------------------------------------

    def check(self) -> list[Check]:
        """Say whether the project id is set and the service account works.

        Reads `GET /api/app/me`, which counts against no query budget.
        """
        return [self._check_project(), self._check_service_account()]

    def _check_project(self) -> Check:
        if self.project_id is None:
            detail = (
                "not set: give `vendors.mixpanel.project_id` in the workspace file "
                "or MIXPANEL_PROJECT_ID"
            )
            return Check(VENDOR, "project id", ok=False, detail=detail)
        return Check(VENDOR, "project id", ok=True, detail=str(self.project_id))

    def _check_service_account(self) -> Check:
        what = "service account"
        if not self.username or not self._secret:
            detail = "the service account username or secret is not set"
            return Check(VENDOR, what, ok=False, detail=detail)
        try:
            response = self._query.request("GET", ME_PATH, call=SAFE)
        except PermanentError as exc:
            return Check(VENDOR, what, ok=False, detail=_refusal(exc))
        except VendorError as exc:
            return Check(VENDOR, what, ok=False, detail=f"unreachable: {exc}")

        if not self._reaches_project(json_or_none(response)):
            detail = (
                f"works, but has no access to project {self.project_id}: add it "
                "to the project in Mixpanel's organization settings"
            )
            return Check(VENDOR, what, ok=False, detail=detail)
        return Check(VENDOR, what, ok=True, detail="works")

    def _reaches_project(self, body: Any) -> bool:
        """False only when the answer lists the account's projects and this one
        is not among them; an answer of another shape says nothing."""
        results = body.get("results") if isinstance(body, dict) else None
        projects = results.get("projects") if isinstance(results, dict) else None
        if not isinstance(projects, dict) or self.project_id is None:
            return True
        return str(self.project_id) in projects

    # --- shared ---------------------------------------------------------------

    def _require_project(self) -> None:
        if self.project_id is None:
            raise ConfigurationError(
                "Mixpanel needs a project id: give `vendors.mixpanel.project_id` "
                "in the workspace file or MIXPANEL_PROJECT_ID"
            )

    def _project_params(self) -> dict[str, str]:
        return {"project_id": str(self.project_id)}


def _shared_limits(
    store: Store | None, caps: Mapping[str, Cap], query_burst: int
) -> tuple[Budget | None, Slots | None, Budget | None]:
    """The query budget, query slots and import budget every worker shares
    through `store`; without a store, none."""
    if store is None:
        return None, None, None
    query = caps["mixpanel:query"]
    return (
        Budget(store, "mixpanel:query", query, burst=min(query_burst, query.count)),
        Slots(store, "mixpanel:query", QUERY_AT_ONCE, lease=SLOT_LEASE),
        Budget(store, "mixpanel:import", caps["mixpanel:import"]),
    )


def _with(names: Sequence[str], extra: str | None) -> tuple[str, ...]:
    listed = tuple(dict.fromkeys(names))
    return listed if extra is None or extra in listed else (*listed, extra)


def _cohort_id(cohort: str) -> int:
    """The numeric id of `mixpanel:<id>`.

    Raises:
        ConfigurationError: the cohort is not a Mixpanel cohort id.
    """
    vendor, _, cohort_id = cohort.partition(":")
    if vendor != VENDOR or not cohort_id.isdigit():
        raise ConfigurationError(
            f"`{cohort}` is not a Mixpanel cohort: write `mixpanel:<numeric id>`"
        )
    return int(cohort_id)


def _identifier(value: Any) -> str | None:
    """An id as text; None for what is missing, blank or not an id."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


def _field(name: str) -> str:
    return PROFILE_FIELDS.get(name, name)


def _engage_page(body: Any, asked: int) -> _EngagePage:
    """Read one Engage answer.

    Raises:
        TransientError: the answer is not an Engage page; asking again may help.
    """
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(results, list):
        raise TransientError(
            VENDOR, f"POST {ENGAGE_PATH}: answered without a list of results"
        )
    page = body.get("page")
    size = body.get("page_size")
    session = body.get("session_id")
    return _EngagePage(
        results=results,
        page=page if isinstance(page, int) and not isinstance(page, bool) else asked,
        page_size=size if isinstance(size, int) and size > 0 else ENGAGE_PAGE_SIZE,
        session_id=session if isinstance(session, str) and session else None,
    )


def insert_id_for(key: str) -> str:
    """The `$insert_id` Mixpanel dedupes an event by, always the same for `key`.

    Mixpanel takes at most 36 letters, digits or dashes; a delivery key has
    colons and may be longer, so the id is the first 36 hex digits of its
    SHA-256.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:INSERT_ID_LENGTH]


def _time_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a time without a zone is taken as UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def _encoded(event: LoopEvent) -> bytes:
    """One /import record as compact JSON.

    The fixed fields win over same-named properties: they are what Mixpanel
    dedupes by. `ip` 0 keeps Mixpanel from placing the user where the worker
    runs ("set the value of ip to 0 and our API will skip the geolocation").
    """
    properties = {
        **event.properties,
        "time": _time_ms(event.time),
        "distinct_id": event.user_id,
        "$insert_id": insert_id_for(event.insert_id),
        "ip": 0,
    }
    record = {"event": event.name, "properties": properties}
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def _batches(encoded: list[bytes], max_bytes: int) -> Iterator[tuple[int, list[bytes]]]:
    """Split records into batches within Mixpanel's count and size, with the
    position of each batch's first record."""
    start, size = 0, 2
    batch: list[bytes] = []
    for index, record in enumerate(encoded):
        grown = size + len(record) + (1 if batch else 0)
        if batch and (len(batch) == MAX_BATCH_EVENTS or grown > max_bytes):
            yield start, batch
            start, batch, grown = index, [], 2 + len(record)
        batch.append(record)
        size = grown
    if batch:
        yield start, batch


def _read_partial_import(response: httpx.Response) -> None:
    """Catch a strict import's partial 400 before it becomes a PermanentError.

    Mixpanel ingests the valid events of a batch and answers 400 with
    `failed_records` (index, field, message) for the others. `VendorHttp` turns
    every other 4xx into a PermanentError without reading its body, so this
    hook, which sees each answer first, reads this one.
    """
    if response.status_code != 400 or not response.url.path.endswith(IMPORT_PATH):
        return
    body = json_or_none(response)
    failed = body.get("failed_records") if isinstance(body, dict) else None
    if isinstance(failed, list) and failed:
        raise _PartialImport(failed)


def _failed_events(
    offset: int, size: int, records: list[Any], events: Sequence[LoopEvent]
) -> list[FailedEvent]:
    """The events of a batch that Mixpanel's `failed_records` name, by index.

    Raises:
        PermanentError: no record names an event of the batch.
    """
    found: dict[int, FailedEvent] = {}
    for record in records:
        item = record if isinstance(record, dict) else {}
        index = item.get("index")
        if isinstance(index, bool) or not isinstance(index, int | float):
            continue
        if 0 <= int(index) < size:
            failed = _failed_event(offset + int(index), item, events)
            found[failed.index] = failed
    if not found:
        raise PermanentError(
            VENDOR,
            f"POST {IMPORT_PATH}: refused (400) without naming the events",
            400,
        )
    return [found[position] for position in sorted(found)]


def _failed_event(
    position: int, record: dict[str, Any], events: Sequence[LoopEvent]
) -> FailedEvent:
    field = record.get("field")
    return FailedEvent(
        index=position,
        insert_id=events[position].insert_id,
        field=field if isinstance(field, str) and field else None,
        message=str(record.get("message") or ""),
    )


def _refusal(exc: PermanentError) -> str:
    if exc.status in (401, 403):
        return (
            f"Mixpanel refused the service account ({exc.status}): check its "
            "username and secret"
        )
    return str(exc)


# --- cohort sync ---------------------------------------------------------------


class CohortSyncError(ValueError):
    """A cohort-sync request that cannot be used.

    The message names the field that is wrong, never its value. `action` is the
    request's action when it could be read, for the answer to echo.
    """

    def __init__(self, message: str, action: SyncAction | None = None) -> None:
        self.action = action
        super().__init__(message)


@dataclass(frozen=True)
class CohortSyncPage:
    """One page of a cohort sync, ready for the snapshot of `cohort`.

    `action` says what the members are: the whole cohort (`members`), those
    who entered (`add_members`) or those who left (`remove_members`). `page`
    counts from 1 to `total_pages` within `session_id`; Mixpanel may send a
    session again from its first page.
    """

    cohort: str
    project_id: str
    action: SyncAction
    session_id: str
    page: int
    total_pages: int
    members: tuple[Member | Rejected, ...]

    @property
    def is_last(self) -> bool:
        return self.page == self.total_pages


def _as_id(value: Any) -> str:
    text = _identifier(value)
    if text is None:
        raise ValueError("is not an id")
    return text


def _as_cohort_id(value: Any) -> str:
    text = _as_id(value)
    if _ID_PATTERN.fullmatch(text) is None:
        raise ValueError("is not a cohort id")
    return text


SyncId = Annotated[str, BeforeValidator(_as_id)]
SyncCohortId = Annotated[str, BeforeValidator(_as_cohort_id)]


class _PageInfo(BaseModel):
    total_pages: int = Field(ge=1)
    page_count: int = Field(ge=1)

    @model_validator(mode="after")
    def _within_total(self) -> _PageInfo:
        if self.page_count > self.total_pages:
            raise ValueError("`page_count` is past `total_pages`")
        return self


class _Parameters(BaseModel):
    mixpanel_project_id: SyncId
    mixpanel_cohort_id: SyncCohortId
    mixpanel_session_id: SyncId
    page_info: _PageInfo
    members: list[Any]


class _CohortSyncRequest(BaseModel):
    """The body of Mixpanel's cohort-sync webhook, as its docs describe it."""

    model_config = ConfigDict(extra="ignore")

    action: SyncAction
    parameters: _Parameters


def parse_cohort_sync(
    body: bytes | str | Mapping[str, Any],
    *,
    account_property: str | None = DEFAULT_ACCOUNT_PROPERTY,
) -> CohortSyncPage:
    """Read one cohort-sync request into the page the engine snapshots.

    A member without `mixpanel_distinct_id` becomes a `Rejected` in the page,
    so that one bad member does not pause the whole sync; what else a member
    holds (`email`, `first_name`, exported properties) becomes its user fields.

    Raises:
        CohortSyncError: the body is not JSON, or a field is missing or wrong.
    """
    raw = _json_object(body)
    action = raw.get("action") if raw.get("action") in SYNC_ACTIONS else None
    try:
        request = _CohortSyncRequest.model_validate(raw)
    except ValidationError as exc:
        raise CohortSyncError(_first_problem(exc), action) from None

    parameters = request.parameters
    members = tuple(
        _sync_member(f"parameters.members[{index}]", item, account_property)
        for index, item in enumerate(parameters.members)
    )
    return CohortSyncPage(
        cohort=f"{VENDOR}:{parameters.mixpanel_cohort_id}",
        project_id=parameters.mixpanel_project_id,
        action=request.action,
        session_id=parameters.mixpanel_session_id,
        page=parameters.page_info.page_count,
        total_pages=parameters.page_info.total_pages,
        members=members,
    )


def cohort_sync_answer(
    action: str, *, error: str | None = None, code: int = 400
) -> dict[str, Any]:
    """The JSON Mixpanel expects back: the action echoed and `success`, or
    `failure` with a message its UI shows (and the HTTP status it came with).

    Mixpanel pauses a sync on 400, 401, 403 and 404 and retries 429 and 5xx.
    """
    if error is None:
        return {"action": action, "status": "success"}
    return {
        "action": action,
        "status": "failure",
        "error": {"message": error, "code": code},
    }


def _json_object(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        return dict(body)
    try:
        loaded = json.loads(body)
    except (ValueError, RecursionError):
        raise CohortSyncError("the body is not JSON") from None
    if not isinstance(loaded, dict):
        raise CohortSyncError("the body is not a JSON object")
    return loaded


def _first_problem(exc: ValidationError) -> str:
    """The first error, by field path and kind: pydantic's `input` (the value)
    stays out."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "the body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"`{path}`: {message}{more}"


def _sync_member(
    where: str, item: Any, account_property: str | None
) -> Member | Rejected:
    if not isinstance(item, dict):
        return Rejected(where, "not a JSON object")
    user_id = _identifier(item.get("mixpanel_distinct_id"))
    if user_id is None:
        return Rejected(where, "no `mixpanel_distinct_id`")

    user = {key: value for key, value in item.items() if key != "mixpanel_distinct_id"}
    account = item.get(account_property) if account_property else None
    return Member(user_id=user_id, account_id=_identifier(account), user=user)

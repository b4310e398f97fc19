"""Amplitude: behavioral cohorts downloaded whole, to reconcile their snapshots.

Amplitude pushes cohort changes through its cohort-sync webhook; this source
downloads a cohort's full membership now and then, so that a missed or
restarted push does not leave a snapshot wrong for long. Downloads are dear:
Amplitude allows 500 "get one cohort" requests a month, 60 in any 10 minutes
and 5 calls at once, across every worker of the project. So a cohort is
downloaded only when all of these hold, decided atomically in Redis:

- its `lastComputed` (from `GET /api/3/cohorts`) is newer than the one of the
  last download that completed;
- the last download was asked for at least `min_interval` ago;
- fewer than `monthly_downloads` were asked for this month (UTC).

A download is Amplitude's three steps: `GET /api/5/cohorts/request/:id` starts
a job; `GET /api/5/cohorts/request-status/:request_id` answers 202 while it runs
and 200 (`JOB COMPLETED`) when it is done; `GET /api/5/cohorts/request/
:request_id/file` answers the CSV (`user_id`, `amplitude_id`, properties), often
as a redirect to a short-lived link, which is followed without credentials. The
pending request is kept in Redis, so a job still running when the wait ends
(TransientError) is polled again by the next call, and costs no second download.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, cast

import httpx

from integrations.base import Check, Member, Rejected
from integrations.http import (
    Call,
    VendorHttp,
    error_for_status,
    error_for_transport,
    json_or_none,
    retry_after_of,
    take_budget,
)
from orchestrator.budgets import Budget, Slots, vendor_caps
from orchestrator.errors import (
    ConfigurationError,
    NotDue,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

VENDOR = "amplitude"
URLS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
LIST_PATH = "/api/3/cohorts"
REQUEST_PATH = "/api/5/cohorts/request/{}"
STATUS_PATH = "/api/5/cohorts/request-status/{}"
FILE_PATH = "/api/5/cohorts/request/{}/file"
COMPLETED = "JOB COMPLETED"

# Amplitude's limits: 500 cohort downloads a month, 60 single-cohort requests
# per 10 minutes, 5 concurrent requests across cohort downloads and the
# Dashboard REST API, 2 million users a cohort. Every call of this source goes
# through the 10-minute budget, not only the requests: polls are cheap to pace.
BUDGET = "amplitude:cohorts"
DEFAULT_BUDGETS: dict[str, Cap] = {BUDGET: Cap(60, timedelta(minutes=10))}
BURST = 10
AT_ONCE = 5
MONTHLY_DOWNLOADS = 500
MAX_COHORT_USERS = 2_000_000
MIN_INTERVAL = timedelta(hours=6)

SLOT_LEASE = timedelta(minutes=5)
SLOT_WAIT_S = 2.0
SLOT_RETRY_AFTER_S = 10.0
# Polls wait this long for a budget slot rather than give up a running job.
POLL_BUDGET_WAIT_MS = 30_000
FIRST_POLL_S = 1.0
MAX_POLL_GAP_S = 15.0
POLL_WAIT_S = 60.0
RETRY_POLL_AFTER_S = 60.0
# A claim whose request never left (a worker killed mid-call) lapses; a job's
# file is fetched within this long of its request, or the request is made anew.
CLAIM_TTL_MS = 2 * 60 * 1000
PENDING_TTL_MS = 12 * 3600 * 1000
MONTH_TTL_S = 40 * 24 * 3600
LINK = "GET (the file's link)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_ACCOUNT_PROPERTY = "account_id"
# Columns of the file that are ids, not properties.
ID_COLUMNS = ("user_id", "amplitude_id")
TIMEOUT = httpx.Timeout(30.0, connect=3.0, pool=5.0)
# A large file takes minutes; each read waits this long for the next bytes.
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=5.0)

SAFE = Call(safe_to_repeat=True)
Residency = Literal["us", "eu"]
Clock = Callable[[], datetime]

# KEYS: the cohort's state hash, its pending hash, this month's download count.
# ARGV: lastComputed (ms), now (ms), the minimum interval (ms), the monthly
# limit, the claim's TTL (ms), the month count's TTL (s). Returns {verdict, n}.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'pending', 0}
end
local last_computed = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local done = tonumber(redis.call('HGET', KEYS[1], 'last_computed_ms') or '-1')
if last_computed <= done then
  return {'unchanged', 0}
end
local asked = tonumber(redis.call('HGET', KEYS[1], 'requested_at_ms') or '-1')
if asked >= 0 and now - asked < tonumber(ARGV[3]) then
  return {'too_soon', asked + tonumber(ARGV[3]) - now}
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used >= tonumber(ARGV[4]) then
  return {'spent', used}
end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'requested_at_ms', ARGV[2])
redis.call('HSET', KEYS[2], 'last_computed_ms', ARGV[1], 'request_id', '')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
return {'claimed', used + 1}
"""


@dataclass(frozen=True)
class CohortInfo:
    """One cohort as Amplitude lists it; `last_computed_ms` None when never."""

    cohort_id: str
    size: int | None
    last_computed_ms: int | None
    archived: bool
    published: bool


class AmplitudeCohorts:
    """Download Amplitude behavioral cohorts whole, within the shared budgets.

    `api_key` and `secret_key` are the project's; `residency` picks the host,
    `base_url` replaces it (a simulated vendor). `store` holds the budgets, the
    monthly count and each cohort's last download, shared by every worker.
    `properties` are the user properties a download asks for (None: all, the
    empty list: none); `account_property` the one that holds the account id.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        store: Store,
        *,
        residency: Residency = "us",
        base_url: str | None = None,
        properties: Sequence[str] | None = None,
        account_property: str | None = DEFAULT_ACCOUNT_PROPERTY,
        min_interval: timedelta = MIN_INTERVAL,
        monthly_downloads: int = MONTHLY_DOWNLOADS,
        budgets: Mapping[str, Cap] | None = None,
        burst: int = BURST,
        poll_wait_s: float = POLL_WAIT_S,
        first_poll_s: float = FIRST_POLL_S,
        slot_wait_s: float = SLOT_WAIT_S,
        timeout: httpx.Timeout | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not api_key or not secret_key:
            raise ConfigurationError(
                "Amplitude needs AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY"
            )
        cap = vendor_caps("Amplitude", DEFAULT_BUDGETS, budgets)[BUDGET]
        self.properties = _with(properties, account_property)
        self.account_property = account_property
        self.min_interval = min_interval
        self.monthly_downloads = monthly_downloads
        self.poll_wait_s = poll_wait_s
        self.first_poll_s = first_poll_s
        self.slot_wait_s = slot_wait_s
        self._store = store
        self._clock = clock or _utc_now
        self._budget = Budget(store, BUDGET, cap, burst=min(burst, cap.count))
        self._slots = Slots(store, "amplitude:dashboard", AT_ONCE, lease=SLOT_LEASE)
        self._claim = store.redis.register_script(_CLAIM)

        base = base_url or URLS[residency]
        auth = (api_key, secret_key)
        self._http = VendorHttp(
            VENDOR, base, auth=auth, timeout=timeout or TIMEOUT, budget=self._budget
        )
        self._polls = VendorHttp(
            VENDOR,
            base,
            auth=auth,
            timeout=timeout or TIMEOUT,
            budget=self._budget,
            budget_wait_ms=POLL_BUDGET_WAIT_MS,
        )
        # The file's link is signed; it gets no credentials, whatever its host.
        self._links = httpx.Client(
            timeout=timeout or DOWNLOAD_TIMEOUT, follow_redirects=True
        )

    def close(self) -> None:
        self._http.close()
        self._polls.close()
        self._links.close()

    def check(self) -> list[Check]:
        """Say whether the secret key works, by listing the cohorts (read only;
        one of the 60 requests Amplitude allows in 10 minutes)."""
        what = "secret key (cohort downloads)"
        try:
            count = len(self.list_cohorts())
        except PermanentError as exc:
            detail = (
                f"refused ({exc.status}): check AMPLITUDE_API_KEY, "
                "AMPLITUDE_SECRET_KEY and `vendors.amplitude.residency`"
            )
            return [Check(VENDOR, what, ok=False, detail=detail)]
        except VendorError as exc:
            return [Check(VENDOR, what, ok=False, detail=f"unreachable: {exc}")]
        return [Check(VENDOR, what, ok=True, detail=f"works ({count} cohorts)")]

    # --- the cohort list --------------------------------------------------------

    def list_cohorts(self) -> list[CohortInfo]:
        """The project's cohorts, with when each was last computed.

        Raises:
            TransientError: the budget or the slots are used up, or Amplitude
                did not answer; list again later.
            PermanentError: Amplitude refused the credentials.
        """
        where = f"GET {LIST_PATH}"
        with self._slot(where):
            response = self._http.request("GET", LIST_PATH, call=SAFE)
        body = json_or_none(response)
        listed = body.get("cohorts") if isinstance(body, dict) else None
        if not isinstance(listed, list):
            raise TransientError(VENDOR, f"{where}: answered without a cohort list")

        found = [info for item in listed if (info := _cohort_info(item)) is not None]
        logger.info("Listed %d cohorts of the Amplitude project.", len(found))
        return found

    # --- a cohort's members -----------------------------------------------------

    def cohort_pages(self, cohort: str) -> Iterator[list[Member | Rejected]]:
        """Yield the members of `cohort` (`amplitude:<id>`) from a fresh download,
        a page of rows at a time; a row without a `user_id` is a `Rejected`.

        Resumes the pending download of an earlier call if there is one; else
        lists the cohorts and downloads this one only if it is due.

        Raises:
            NotDue: the cohort is unchanged or was downloaded too recently.
            ConfigurationError: the cohort is not an Amplitude cohort id.
            TransientError: a budget is used up (the month's included, with the
                wait until the next month), the job is still running, or
                Amplitude did not answer; read again later.
            PermanentError: Amplitude refused the request (credentials, an
                unknown or archived cohort, one too large to download).
        """
        cohort_id = _cohort_id(cohort)
        request_id = self._pending_request(cohort, cohort_id)
        if request_id is None:
            request_id = self._request(cohort, cohort_id, self._due(cohort, cohort_id))

        self._wait_until_done(cohort, request_id)
        yield from self._read_file(cohort, cohort_id, request_id)

    def _due(self, cohort: str, cohort_id: str) -> int:
        """The `lastComputed` to download, once the budgets granted a download.

        Raises:
            NotDue, TransientError, PermanentError: see `cohort_pages`.
        """
        info = self._listed(cohort, cohort_id)
        if info.size is not None and info.size > MAX_COHORT_USERS:
            raise PermanentError(
                VENDOR,
                f"{cohort} has {info.size} users, more than the {MAX_COHORT_USERS} "
                "a download may hold: reconcile it through the cohort-sync webhook",
            )
        computed = info.last_computed_ms or 0
        now = self._clock()
        month = f"{now:%Y-%m}"
        verdict, number = self._claim(
            keys=[self._key(cohort_id), self._pending_key(cohort_id), self._month(now)],
            args=[
                computed,
                _ms(now),
                self.min_interval // timedelta(milliseconds=1),
                self.monthly_downloads,
                CLAIM_TTL_MS,
                MONTH_TTL_S,
            ],
        )
        return self._judge_claim(cohort, str(verdict), int(number), computed, month)

    def _judge_claim(
        self, cohort: str, verdict: str, number: int, computed: int, month: str
    ) -> int:
        if verdict == "claimed":
            logger.info(
                "Downloading Amplitude cohort %s: download %d of %d in %s.",
                cohort,
                number,
                self.monthly_downloads,
                month,
            )
            return computed
        if verdict == "unchanged":
            raise NotDue(cohort, "unchanged since the last download", None)
        if verdict == "too_soon":
            raise NotDue(cohort, "downloaded too recently", number / 1000)
        if verdict == "pending":
            raise TransientError(
                VENDOR,
                f"{cohort}: another worker is requesting its download",
                retry_after_s=SLOT_RETRY_AFTER_S,
            )
        wait_s = (_next_month(self._clock()) - self._clock()).total_seconds()
        logger.warning(
            "The monthly budget of %d Amplitude cohort downloads is used up for "
            "%s; %s waits until the next month.",
            self.monthly_downloads,
            month,
            cohort,
        )
        raise TransientError(
            VENDOR,
            f"{cohort}: the monthly budget of {self.monthly_downloads} cohort "
            f"downloads is used up for {month} (UTC); the next month opens it again",
            retry_after_s=wait_s,
        )

    def _listed(self, cohort: str, cohort_id: str) -> CohortInfo:
        for info in self.list_cohorts():
            if info.cohort_id == cohort_id and not info.archived:
                return info
        raise PermanentError(
            VENDOR,
            f"{cohort} is not among the project's cohorts, or is archived: check "
            "the playbook's cohort id",
            404,
        )

    def _request(self, cohort: str, cohort_id: str, computed: int) -> str:
        """Ask Amplitude for a download, and keep its request id as pending.

        A request that fails gives up the claim (the month's count stays
        spent: Amplitude may have counted it).
        """
        path = REQUEST_PATH.format(cohort_id)
        try:
            with self._slot(f"GET {REQUEST_PATH.format(':id')}"):
                response = self._http.request(
                    "GET", path, call=SAFE, params=self._property_params()
                )
        except PermanentError as exc:
            self._store.redis.delete(self._pending_key(cohort_id))
            raise _clearer(exc, cohort) from None
        except TransientError:
            self._store.redis.delete(self._pending_key(cohort_id))
            raise

        body = json_or_none(response)
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            self._store.redis.delete(self._pending_key(cohort_id))
            raise TransientError(VENDOR, f"{cohort}: answered without a request id")
        self._keep_pending(cohort_id, request_id, computed)
        logger.info("Amplitude took request %s for cohort %s.", request_id, cohort)
        return request_id

    def _property_params(self) -> list[tuple[str, str]]:
        if self.properties is None:
            return [("props", "1")]
        if not self.properties:
            return []
        return [("props", "1"), *(("propKeys", name) for name in self.properties)]

    def _pending_request(self, cohort: str, cohort_id: str) -> str | None:
        pending = cast(
            dict[str, str], self._store.redis.hgetall(self._pending_key(cohort_id))
        )
        request_id = pending.get("request_id")
        if request_id:
            logger.info("Resuming request %s for cohort %s.", request_id, cohort)
        return request_id or None

    def _keep_pending(self, cohort_id: str, request_id: str, computed: int) -> None:
        key = self._pending_key(cohort_id)
        pipe = self._store.redis.pipeline()
        pipe.hset(key, mapping={"request_id": request_id, "last_computed_ms": computed})
        pipe.pexpire(key, PENDING_TTL_MS)
        pipe.execute()

    # --- the job ----------------------------------------------------------------

    def _wait_until_done(self, cohort: str, request_id: str) -> None:
        """Poll the job with growing gaps until it completes or the wait ends.

        Raises:
            TransientError: still running when the wait ended (polled again by
                the next call), or Amplitude did not answer.
        """
        deadline = time.monotonic() + self.poll_wait_s
        gap = self.first_poll_s
        polls = 0
        while True:
            polls += 1
            if self._is_done(cohort, request_id):
                logger.info("Request %s completed after %d polls.", request_id, polls)
                return
            if time.monotonic() + gap > deadline:
                break
            time.sleep(gap)
            gap = min(gap * 2, MAX_POLL_GAP_S)

        raise TransientError(
            VENDOR,
            f"{cohort}: request {request_id} is still running after {polls} polls; "
            "it is polled again on the next read",
            retry_after_s=RETRY_POLL_AFTER_S,
        )

    def _is_done(self, cohort: str, request_id: str) -> bool:
        where = f"GET {STATUS_PATH.format(':request_id')}"
        try:
            with self._slot(where):
                response = self._polls.request(
                    "GET", STATUS_PATH.format(request_id), call=SAFE
                )
        except PermanentError as exc:
            self._forget_pending(cohort)
            raise _clearer(exc, cohort) from None
        body = json_or_none(response)
        status = body.get("async_status") if isinstance(body, dict) else None
        if response.status_code == 200 and status == COMPLETED:
            return True
        if response.status_code == 202 or status in (None, "JOB INPROGRESS"):
            return False
        self._forget_pending(cohort)
        raise TransientError(
            VENDOR, f"{cohort}: request {request_id} ended as `{status}`"
        )

    def _forget_pending(self, cohort: str) -> None:
        self._store.redis.delete(self._pending_key(_cohort_id(cohort)))

    # --- the file ---------------------------------------------------------------

    def _read_file(
        self, cohort: str, cohort_id: str, request_id: str
    ) -> Iterator[list[Member | Rejected]]:
        """Stream the job's CSV into pages of members; record the download once
        the whole file was read."""
        members, rejected = 0, 0
        with self._file(cohort, request_id) as response:
            for page in _pages(self._rows(cohort, response), self.account_property):
                members += sum(isinstance(item, Member) for item in page)
                rejected += sum(isinstance(item, Rejected) for item in page)
                yield page
        self._record_download(cohort_id)
        logger.info(
            "Read %d members of cohort %s from Amplitude; %d rejected.",
            members,
            cohort,
            rejected,
        )

    @contextmanager
    def _file(self, cohort: str, request_id: str) -> Iterator[httpx.Response]:
        """The file's answer, streamed: from Amplitude itself, or from the link
        it redirects to, asked for without credentials."""
        where = f"GET {FILE_PATH.format(':request_id')}"
        path = FILE_PATH.format(request_id)
        link: httpx.URL | None = None
        with self._slot(where):
            take_budget(VENDOR, self._budget, POLL_BUDGET_WAIT_MS, where)
            with self._streamed(self._http.client, "GET", path, where) as response:
                if response.status_code in REDIRECTS:
                    link = _location(response, where)
                else:
                    self._check(response, where, cohort)
                    yield response
        if link is None:
            return
        # The link goes unlogged: its query is a signature.
        with self._streamed(self._links, "GET", str(link), LINK) as got:
            self._check(got, LINK, cohort)
            yield got

    @contextmanager
    def _streamed(
        self, client: httpx.Client, method: str, url: str, where: str
    ) -> Iterator[httpx.Response]:
        try:
            with client.stream(method, url) as response:
                yield response
        except httpx.HTTPError as exc:
            raise error_for_transport(VENDOR, where, exc, safe_to_repeat=True) from None

    def _check(self, response: httpx.Response, where: str, cohort: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        wait_s = retry_after_of(response.headers) if status == 429 else None
        if wait_s:
            self._budget.hold_off(int(wait_s * 1000))
        error = error_for_status(VENDOR, where, status, wait_s)
        if isinstance(error, PermanentError):
            self._forget_pending(cohort)
            raise _clearer(error, cohort)
        raise error

    def _rows(self, cohort: str, response: httpx.Response) -> Iterator[_Row]:
        response.encoding = "utf-8-sig"
        reader = csv.reader(_lines(response.iter_text()))
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        for number, values in enumerate(reader, start=1):
            if not any(value.strip() for value in values):
                continue
            yield _Row(f"{cohort} row {number}", names, values)

    def _record_download(self, cohort_id: str) -> None:
        pending_key = self._pending_key(cohort_id)
        computed = cast(
            str | None, self._store.redis.hget(pending_key, "last_computed_ms")
        )
        pipe = self._store.redis.pipeline()
        if computed is not None:
            pipe.hset(self._key(cohort_id), "last_computed_ms", computed)
        pipe.delete(pending_key)
        pipe.execute()

    # --- shared -----------------------------------------------------------------

    @contextmanager
    def _slot(self, where: str) -> Iterator[None]:
        """Hold one of the project's 5 concurrent calls for the block.

        Raises:
            TransientError: no slot came free within `slot_wait_s`.
        """
        with self._slots.held(self.slot_wait_s) as held:
            if not held:
                raise TransientError(
                    VENDOR,
                    f"{where}: {AT_ONCE} calls already run at once for the project",
                    retry_after_s=SLOT_RETRY_AFTER_S,
                )
            yield

    def _key(self, cohort_id: str) -> str:
        # One hash tag for every key, so that the claim script may touch them
        # all on a Redis Cluster too.
        return self._store.key("{amplitude-cohorts}", "cohort", cohort_id)

    def _pending_key(self, cohort_id: str) -> str:
        return self._store.key("{amplitude-cohorts}", "cohort", cohort_id, "pending")

    def _month(self, now: datetime) -> str:
        return self._store.key("{amplitude-cohorts}", "downloads", f"{now:%Y-%m}")

    def downloads_this_month(self) -> int:
        """How many downloads were asked for this month (UTC), by every worker."""
        used = cast(str | None, self._store.redis.get(self._month(self._clock())))
        return int(used) if used is not None else 0


@dataclass(frozen=True)
class _Row:
    where: str
    names: list[str]
    values: list[str]


def _pages(
    rows: Iterator[_Row], account_property: str | None, size: int = 1_000
) -> Iterator[list[Member | Rejected]]:
    page: list[Member | Rejected] = []
    for row in rows:
        page.append(_member(row, account_property))
        if len(page) == size:
            yield page
            page = []
    yield page


def _member(row: _Row, account_property: str | None) -> Member | Rejected:
    if len(row.values) != len(row.names):
        return Rejected(row.where, f"{len(row.values)} fields, not {len(row.names)}")
    record = dict(zip(row.names, row.values, strict=True))
    user_id = record.get("user_id", "").strip()
    if not user_id:
        return Rejected(row.where, "no `user_id`")

    user = {
        name: value
        for name, value in record.items()
        if name not in ID_COLUMNS and name and value != ""
    }
    account = user.get(account_property) if account_property else None
    return Member(user_id=user_id, account_id=account or None, user=user)


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    """Lines with their endings kept, so that a quoted field may hold one."""
    rest = ""
    for chunk in chunks:
        rest += chunk
        lines = rest.splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
        yield from lines
    if rest:
        yield rest


def _location(response: httpx.Response, where: str) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise TransientError(VENDOR, f"{where}: redirected without a location")
    return response.url.join(location)


def _cohort_info(item: Any) -> CohortInfo | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    size = item.get("size")
    return CohortInfo(
        cohort_id=item["id"],
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        last_computed_ms=_time_ms(item.get("lastComputed")),
        archived=item.get("archived") is True,
        published=item.get("published") is True,
    )


def _time_ms(value: Any) -> int | None:
    """`lastComputed` in ms: a number, or a date and time as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return _ms(aware)


def _cohort_id(cohort: str) -> str:
    """The id of `amplitude:<id>`.

    Raises:
        ConfigurationError: the cohort is not an Amplitude cohort id.
    """
    vendor, _, cohort_id = cohort.partition(":")
    if vendor != VENDOR or not cohort_id.isalnum():
        raise ConfigurationError(
            f"`{cohort}` is not an Amplitude cohort: write `amplitude:<cohort id>`"
        )
    return cohort_id


def _clearer(error: PermanentError, cohort: str) -> PermanentError:
    """Say what a refusal means for a cohort download."""
    if error.status == 404:
        return PermanentError(
            VENDOR,
            f"{cohort}: Amplitude has no such cohort or download request (404)",
            404,
        )
    message = str(error).removeprefix(f"{VENDOR}: ")
    return PermanentError(VENDOR, f"{cohort}: {message}", error.status)


def _with(names: Sequence[str] | None, extra: str | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    listed = tuple(dict.fromkeys(names))
    return listed if extra is None or extra in listed else (*listed, extra)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)

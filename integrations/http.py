"""The HTTP half every vendor adapter shares: timeouts, budgets, answers to errors.

A `VendorHttp` sends one vendor's requests over httpx and turns every outcome into
what the engine understands, once, here:

- 2xx: the response, for the adapter to read;
- 429: `TransientError` with the wait the vendor asked for (`Retry-After`, or the
  vendor's reset header), and the shared budget held off for that long, so every
  worker slows to the vendor's pace;
- 408 and 5xx: `TransientError`;
- other 4xx: `PermanentError` with the status;
- no connection, or a request refused before it was written: `TransientError`,
  after a few quick retries (tenacity), since nothing reached the vendor;
- a timeout or a dropped connection after the request went out: `AmbiguousError`,
  unless the call is safe to repeat (an idempotent read, or a write the vendor
  dedupes), which gets the same few quick retries and then `TransientError`.

Long waits belong to the engine's retries (Dramatiq); tenacity only covers a few
seconds. Messages carry the vendor, method, path and status: never bodies, query
strings, credentials or personal data.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity

from orchestrator.budgets import BREAKER_PAUSE_MS, Budget
from orchestrator.errors import (
    AmbiguousError,
    PermanentError,
    TransientError,
    VendorError,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0, pool=5.0)
# A caller waits this long for a budget slot in its own thread; a longer wait goes
# back to the engine as a TransientError with the wait as its retry_after.
DEFAULT_BUDGET_WAIT_MS = 2_000
QUICK_ATTEMPTS = 3
QUICK_WAIT_MAX_S = 1.0
# The longest Retry-After taken at face value; a vendor asking for more is asked
# again after this long.
MAX_RETRY_AFTER_S = 3_600.0

ResetReader = Callable[[Mapping[str, str]], float | None]


@dataclass(frozen=True)
class Call:
    """How one call may be treated when it fails.

    `safe_to_repeat`: the vendor takes the same request twice as once (a read, or
    a write it dedupes), so a timeout after sending is retried, not ambiguous.
    """

    safe_to_repeat: bool = False


class _NotSent(Exception):
    """The request never reached the vendor; repeating it is always safe."""


class _Unanswered(Exception):
    """The request went out and no answer came back."""


class _Retryable(Exception):
    """A transient answer (5xx, 408) to a call that is safe to repeat."""

    def __init__(self, error: TransientError) -> None:
        self.error = error


class VendorHttp:
    """One vendor's HTTP client: base URL, auth, timeouts and budget.

    `budget` paces every request; `reset_after` reads how long a 429 asks to wait
    when the vendor says so in its own headers rather than `Retry-After`.
    `on_response` sees every answer, e.g. to steer the budget by rate headers.
    The client is safe to share between threads.
    """

    def __init__(
        self,
        vendor: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        budget: Budget | None = None,
        budget_wait_ms: int = DEFAULT_BUDGET_WAIT_MS,
        reset_after: ResetReader | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self.vendor = vendor
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.budget_wait_ms = budget_wait_ms
        self._reset_after = reset_after
        self._on_response = on_response
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
        )
        self.client = httpx.Client(
            base_url=self.base_url,
            headers=dict(headers or {}),
            auth=auth,
            timeout=timeout or default_timeout(),
            limits=limits,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        call: Call = Call(),
        budget: Budget | None = None,
        **options: Any,
    ) -> httpx.Response:
        """Send one request and return its 2xx response.

        `options` go to httpx (`json`, `content`, `params`, `headers`). `budget`
        replaces the client's own for this call (an endpoint with its own limit).

        Raises:
            TransientError: try again later, after `retry_after_s` when known.
            PermanentError: the vendor refused the request; do not repeat it.
            AmbiguousError: it went out and may or may not have been taken.
        """
        retried = quick_retries(
            tenacity.retry_if_exception_type((_NotSent, _Retryable))
            | tenacity.retry_if_exception(
                lambda exc: call.safe_to_repeat and isinstance(exc, _Unanswered)
            )
        )
        where = f"{method} {_without_query(path)}"
        try:
            return retried(
                self._once, method, path, call, budget or self.budget, options
            )
        except _NotSent as exc:
            self._failed(budget or self.budget)
            raise TransientError(
                self.vendor, f"{where}: could not reach the vendor ({exc})"
            ) from None
        except _Retryable as exc:
            raise exc.error from None
        except _Unanswered as exc:
            self._failed(budget or self.budget)
            message = f"{where}: no answer ({exc})"
            if call.safe_to_repeat:
                raise TransientError(self.vendor, message) from None
            raise AmbiguousError(self.vendor, message) from None

    def _failed(self, budget: Budget | None) -> None:
        note_failure(self.vendor, budget)

    def _once(
        self,
        method: str,
        path: str,
        call: Call,
        budget: Budget | None,
        options: dict[str, Any],
    ) -> httpx.Response:
        where = f"{method} {_without_query(path)}"
        if budget is not None:
            self._wait_for_budget(budget, where)
        started = time.monotonic()
        try:
            response = self.client.request(method, path, **options)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(type(exc).__name__) from None
        except (httpx.TimeoutException, httpx.NetworkError) as exc:
            raise _Unanswered(type(exc).__name__) from None
        except httpx.RemoteProtocolError as exc:
            raise _Unanswered(type(exc).__name__) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug(
            "%s %s answered %s in %.0f ms.",
            self.vendor,
            where,
            response.status_code,
            elapsed_ms,
        )
        if self._on_response is not None:
            self._on_response(response)
        return self._judge(method, path, response, call, budget)

    def _wait_for_budget(self, budget: Budget, where: str) -> None:
        take_budget(self.vendor, budget, self.budget_wait_ms, where)

    def _judge(
        self,
        method: str,
        path: str,
        response: httpx.Response,
        call: Call,
        budget: Budget | None,
    ) -> httpx.Response:
        status = response.status_code
        if 200 <= status < 300:
            return response
        where = f"{method} {_without_query(path)}"
        # Vendors put their reset header on every answer; only a 429 asks us to
        # wait for it. Any status may carry a Retry-After.
        reader = self._reset_after if status == 429 else None
        wait_s = retry_after_of(response.headers, reader)
        if status == 429 and budget is not None and wait_s:
            budget.hold_off(int(wait_s * 1000))
        error = error_for_status(self.vendor, where, status, wait_s)
        if isinstance(error, TransientError) and status != 429:
            note_failure(self.vendor, budget)
            if call.safe_to_repeat:
                raise _Retryable(error)
        raise error

    def retry_after(self, headers: Mapping[str, str]) -> float | None:
        """The wait an answer asks for, in seconds, if it says."""
        return retry_after_of(headers, self._reset_after)


def quick_retries(retry: tenacity.retry_base) -> tenacity.Retrying:
    """The few quick tries, within about a second, of what is safe to repeat."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(QUICK_ATTEMPTS),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=QUICK_WAIT_MAX_S),
        retry=retry,
        reraise=True,
    )


def take_budget(vendor: str, budget: Budget, wait_ms: int, where: str) -> None:
    """Wait up to `wait_ms` for a slot of `budget`, in this thread.

    Raises:
        TransientError: no slot opens in time; `retry_after_s` says when one will.
    """
    grant = budget.wait_for_slot(wait_ms)
    if not grant.granted:
        raise TransientError(
            vendor,
            f"{where}: the shared budget ({budget.cap}) is used up for now",
            retry_after_s=grant.wait_ms / 1000,
        )


def note_failure(vendor: str, budget: Budget | None) -> None:
    """Count a 5xx, a timeout or a refused connection against the vendor's breaker;
    when it trips, every worker pauses that vendor for a while (see `budgets`)."""
    if budget is not None and budget.failed():
        logger.warning(
            "%s keeps failing; every worker pauses its requests for %d s.",
            vendor,
            BREAKER_PAUSE_MS // 1000,
        )


def retry_after_of(
    headers: Mapping[str, str], reset_after: ResetReader | None = None
) -> float | None:
    """The wait a vendor's answer asks for, in seconds: `Retry-After`, else the
    vendor's own reset header read by `reset_after`; at most an hour."""
    lowered = {key.lower(): value for key, value in headers.items()}
    waited = parse_retry_after(lowered.get("retry-after"))
    if waited is None and reset_after is not None:
        waited = reset_after(lowered)
    if waited is None:
        return None
    return min(max(waited, 0.0), MAX_RETRY_AFTER_S)


def error_for_status(
    vendor: str, where: str, status: int, retry_after_s: float | None = None
) -> VendorError:
    """The error a non-2xx answer means; `where` is `METHOD /path`, no query.

    For adapters built on a vendor SDK, which raise their own exceptions: read the
    status and headers off those and raise this instead.
    """
    if status == 429:
        logger.warning(
            "%s answered 429 to %s; waiting %s s.", vendor, where, retry_after_s
        )
        return TransientError(
            vendor, f"{where}: rate limited (429)", retry_after_s=retry_after_s
        )
    if status == 408 or status >= 500:
        return TransientError(
            vendor, f"{where}: answered {status}", retry_after_s=retry_after_s
        )
    if status == 401:
        return PermanentError(
            vendor, f"{where}: credentials refused (401); check the settings", status
        )
    if status == 403:
        return PermanentError(
            vendor,
            f"{where}: not permitted (403): the key lacks a permission, or the "
            "feature is off for this workspace",
            status,
        )
    return PermanentError(vendor, f"{where}: refused ({status})", status)


def error_for_transport(
    vendor: str, where: str, exc: httpx.HTTPError, *, safe_to_repeat: bool
) -> VendorError:
    """The error a failed exchange means: nothing sent is transient; sent and not
    answered is ambiguous, unless the call is safe to repeat."""
    name = type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransientError(vendor, f"{where}: could not reach the vendor ({name})")
    message = f"{where}: no answer ({name})"
    if safe_to_repeat:
        return TransientError(vendor, message)
    return AmbiguousError(vendor, message)


def default_timeout() -> httpx.Timeout:
    """The timeouts a client gets when it names none (read when it is built)."""
    return DEFAULT_TIMEOUT


def _without_query(path: str) -> str:
    return path.partition("?")[0]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Read `Retry-After` as seconds: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - (time.time() if now is None else now), 0.0)


def reset_epoch_after(header: str) -> ResetReader:
    """Read a header holding the Unix time when the limit resets (Intercom, Braze).

    The reader is given the headers with lowercased names.
    """

    def read(headers: Mapping[str, str]) -> float | None:
        raw = headers.get(header.lower())
        if raw is None:
            return None
        try:
            return max(float(raw) - time.time(), 0.0)
        except ValueError:
            return None

    return read


def json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None when the vendor sent something else.

    A 2xx with a broken body still means the vendor took the request; the
    adapter goes on without the ids it would have read.
    """
    try:
        return response.json()
    except ValueError:
        logger.warning(
            "%s %s answered %s with a body that is not JSON.",
            response.request.method,
            response.request.url.path,
            response.status_code,
        )
        return None

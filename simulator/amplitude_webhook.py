"""A stand-in for Amplitude's Cohort Webhook destination: the side that sends.

Amplitude pushes a cohort's changes to a webhook as batches (Amplitude's "Cohort
Webhooks" destination page): each batch says users entered (`in_cohort: true`)
or left (`false`), with `cohort_id`, `cohort_name`, `computed_time` (Unix
seconds, as text, one per sync), `message_id` and `users`. The destination's
custom headers carry referloop's secret. An answer slower than a second or two,
or a 5xx, counts as failed: the same batch, same `message_id`, is sent again
after a backoff, a bounded number of times. The batches of one sync go out on a
few threads at once (four by default), so they arrive in any order.

`CohortWebhookSender` plays that sender against a URL, and records every attempt
in `attempts`, so that tests assert on what went over the wire. It can also send
some batches twice on purpose and shuffle their order, as a sender that lost its
bookkeeping would. Its logs say message ids and statuses, never users.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1_000
DEFAULT_THREADS = 4
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 0.5
DEFAULT_COHORT_NAME = "Simulated cohort"
USER_AGENT = "Amplitude/Webhook/1.0"

# A user is an id, or an object with `user_id` and the chosen properties.
User = str | Mapping[str, Any]


@dataclass(frozen=True)
class Sync:
    """One computation of the cohort: who entered and who left since the last.

    `computed_s` is when Amplitude computed it, in Unix seconds; left out, the
    sender takes the clock, kept later than the previous sync's.
    """

    entered: Sequence[User] = ()
    left: Sequence[User] = ()
    computed_s: int | None = None


@dataclass(frozen=True)
class Batch:
    """One POST of the webhook: users who all entered, or all left."""

    message_id: str
    in_cohort: bool
    computed_s: int
    users: tuple[Mapping[str, Any], ...]

    def body(self, cohort_id: str, cohort_name: str) -> dict[str, Any]:
        return {
            "cohort_name": cohort_name,
            "cohort_id": cohort_id,
            "in_cohort": self.in_cohort,
            "computed_time": str(self.computed_s),
            "message_id": self.message_id,
            "users": [dict(user) for user in self.users],
        }


@dataclass(frozen=True)
class Attempt:
    """One POST of a batch and its answer.

    `status` is None when no answer came within the timeout or the connection
    failed; `number` counts the attempts of one delivery from 1; `is_replay`
    marks a delivery sent again on purpose (a duplicate), not by a retry.
    """

    message_id: str
    number: int
    status: int | None
    elapsed_s: float
    is_replay: bool = False

    @property
    def is_failed(self) -> bool:
        """What Amplitude sends again: no answer in time, or a 5xx."""
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class _Delivery:
    batch: Batch
    is_replay: bool


class CohortWebhookSender:
    """Post a cohort's syncs to a webhook as Amplitude's destination does.

    Use it as a context manager, or call `close`. `send` posts one sync and
    returns when every batch of it was answered or given up on; syncs are sent
    one after the other, as Amplitude computes them.
    """

    def __init__(
        self,
        url: str,
        header: str,
        secret: str,
        cohort_id: str,
        *,
        cohort_name: str = DEFAULT_COHORT_NAME,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int = DEFAULT_THREADS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        duplicates: int = 0,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        """`duplicates` batches of each sync are sent a second time, with their
        `message_id`; `shuffle` sends a sync's batches in a random order (from
        `seed`) rather than entries first, then exits."""
        if batch_size < 1 or threads < 1 or max_attempts < 1:
            raise ValueError("batch_size, threads and max_attempts must be positive")

        self.url = url
        self.cohort_id = cohort_id
        self.cohort_name = cohort_name
        self.batch_size = batch_size
        self.threads = threads
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.duplicates = duplicates
        self.shuffle = shuffle
        self.attempts: list[Attempt] = []
        self._random = random.Random(seed)  # noqa: S311 - an order, not a secret
        self._last_computed_s = 0
        self._lock = threading.Lock()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            header: secret,
        }
        self._client = httpx.Client(headers=headers, timeout=timeout_s)

    def __enter__(self) -> CohortWebhookSender:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def send_all(self, syncs: Iterable[Sync]) -> list[Attempt]:
        """Send each sync in turn; the attempts of all of them."""
        return [attempt for sync in syncs for attempt in self.send(sync)]

    def send(self, sync: Sync) -> list[Attempt]:
        """Send one sync's batches concurrently; the attempts, in the order made."""
        deliveries = self._deliveries(self.batches(sync))
        before = len(self.attempts)
        with ThreadPoolExecutor(self.threads, "amplitude-webhook") as pool:
            list(pool.map(self._deliver, deliveries))

        return self.attempts[before:]

    def batches(self, sync: Sync) -> list[Batch]:
        """The batches of `sync`, entries first, each with a `message_id` of its own."""
        computed_s = self._computed_s(sync.computed_s)
        run = uuid.uuid4().hex
        entered = self._split(run, "enter", True, computed_s, sync.entered)
        left = self._split(run, "exit", False, computed_s, sync.left)
        return entered + left

    def delivered(self) -> set[str]:
        """The message ids answered 2xx at least once."""
        return {
            a.message_id
            for a in self.attempts
            if a.status is not None and 200 <= a.status < 300
        }

    # --- internals --------------------------------------------------------------

    def _computed_s(self, given: int | None) -> int:
        computed_s = given if given is not None else int(time.time())
        computed_s = max(computed_s, self._last_computed_s + 1)
        self._last_computed_s = computed_s
        return computed_s

    def _split(
        self,
        run: str,
        direction: str,
        in_cohort: bool,
        computed_s: int,
        users: Sequence[User],
    ) -> list[Batch]:
        size = self.batch_size
        chunks = [users[start : start + size] for start in range(0, len(users), size)]
        return [
            Batch(
                message_id=f"{run}::{direction}::{number}",
                in_cohort=in_cohort,
                computed_s=computed_s,
                users=tuple(_user(item) for item in chunk),
            )
            for number, chunk in enumerate(chunks)
        ]

    def _deliveries(self, batches: list[Batch]) -> list[_Delivery]:
        deliveries = [_Delivery(batch, is_replay=False) for batch in batches]
        replayed = self._random.sample(batches, min(self.duplicates, len(batches)))
        deliveries += [_Delivery(batch, is_replay=True) for batch in replayed]
        if self.shuffle:
            self._random.shuffle(deliveries)
        return deliveries

    def _deliver(self, delivery: _Delivery) -> None:
        """Post one batch until it is answered, or refused, or the attempts run out."""
        batch = delivery.batch
        content = json.dumps(batch.body(self.cohort_id, self.cohort_name)).encode()
        for number in range(1, self.max_attempts + 1):
            attempt = self._post(batch.message_id, number, content, delivery.is_replay)
            if not attempt.is_failed:
                return
            if number < self.max_attempts:
                time.sleep(self.backoff_s * 2 ** (number - 1))

        logger.warning(
            "Gave up on cohort webhook batch %s after %d attempts.",
            batch.message_id,
            self.max_attempts,
        )

    def _post(
        self, message_id: str, number: int, content: bytes, is_replay: bool
    ) -> Attempt:
        started = time.monotonic()
        status = self._status(content)
        elapsed_s = time.monotonic() - started

        attempt = Attempt(message_id, number, status, elapsed_s, is_replay)
        with self._lock:
            self.attempts.append(attempt)
        logger.info(
            "Sent cohort webhook batch %s, attempt %d: %s in %.2f s.",
            message_id,
            number,
            status if status is not None else "no answer",
            elapsed_s,
        )
        return attempt

    def _status(self, content: bytes) -> int | None:
        """The answer's status; None when none came in time or the connection
        failed, which Amplitude treats alike."""
        try:
            return self._client.post(self.url, content=content).status_code
        except httpx.TransportError as exc:
            logger.debug("No answer to a cohort webhook batch: %s.", type(exc).__name__)
            return None


def _user(item: User) -> Mapping[str, Any]:
    if isinstance(item, str):
        return {"user_id": item}
    if "user_id" not in item:
        raise ValueError("a user needs a `user_id`")
    return item

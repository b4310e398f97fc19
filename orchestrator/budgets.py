"""Vendor budgets shared by every worker: request rates and concurrent calls.

- `Budget` paces requests with GCRA in Redis. No window of the budget's length ever
  holds more than its count, unlike a fixed-window counter, which lets twice the
  limit through across a window boundary (Dramatiq's limiters do that).
- `Slots` bounds how many calls run at once (Mixpanel's 5 queries per project),
  with leases so that a worker killed mid-call does not keep its slot.

Both use the Redis server's clock by default, so workers on many machines agree.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from orchestrator.errors import ConfigurationError
from orchestrator.state import Store
from orchestrator.units import Cap

# GCRA: KEYS[1] holds the theoretical arrival time (TAT) in microseconds. ARGV: now
# in microseconds ('' for the server's clock), the emission interval and the burst
# tolerance in microseconds, and the longest wait the caller accepts in ms. Returns
# {1, wait_ms}: a slot was taken and may be used after wait_ms; or {0, wait_ms}:
# nothing was taken, ask again after wait_ms. Numbers are written with %.0f: Lua's
# default %.14g would round a 16-digit microsecond time.
_RESERVE = """
local now
if ARGV[1] == '' then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
else
  now = tonumber(ARGV[1])
end
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local max_wait_us = tonumber(ARGV[4]) * 1000
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local wait = tat - tolerance - now
if wait > max_wait_us then
  return {0, math.ceil(wait / 1000)}
end
local next_tat = tat + interval
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', ttl_ms)
return {1, math.max(0, math.ceil(wait / 1000))}
"""

# Push the TAT to at least now + ARGV[2] ms (plus the tolerance), so that the next
# slot opens no earlier: a vendor that answered 429 asked everyone to wait.
_HOLD_OFF = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local until_tat = now + tonumber(ARGV[1]) * 1000 + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if until_tat > tat then
  local ttl_ms = math.ceil((until_tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', until_tat), 'PX', ttl_ms)
end
return 0
"""

# A breaker on the budget: KEYS[1] is the TAT, KEYS[2] counts recent failures.
# ARGV: the failure window (ms), the failures that trip it, the pause (ms) and the
# tolerance (us). Returns 1 when this failure tripped it: the TAT is pushed past
# the pause and the count starts again.
_FAILED = """
local failures = redis.call('INCR', KEYS[2])
if failures == 1 then
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
end
if failures < tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local until_tat = now + tonumber(ARGV[3]) * 1000 + tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if until_tat > tat then
  local ttl_ms = math.ceil((until_tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', until_tat), 'PX', ttl_ms)
end
return 1
"""

# A counting semaphore: KEYS[1] is a sorted set of holders scored by the end of
# their lease (ms, server clock). ARGV: holder, slots, lease ms.
_TAKE_SLOT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class Grant:
    """A budget's answer: whether a request was granted, and the ms to wait.

    A granted request may go after `wait_ms`; a refused one took nothing and may
    ask again after `wait_ms`.
    """

    granted: bool
    wait_ms: int


# A vendor failing this often (5xx, timeouts, no connection) is taken to be down:
# every worker pauses its requests for BREAKER_PAUSE_MS, then tries again. The
# waits that follow are not failed attempts, so an outage uses up no retries.
# Budgets are paced this far below the vendor's limit (see `with_headroom`).
HEADROOM = 0.02
HEADROOM_FROM = 100

BREAKER_FAILURES = 5
BREAKER_WINDOW_MS = 10_000
BREAKER_PAUSE_MS = 10_000


class Budget:
    """A vendor's request budget, shared by every worker (GCRA in Redis).

    `burst` requests may go at once; the price is the pace after a burst: one per
    `cap.window / (cap.count - burst + 1)`. The default, 1, paces evenly at the
    full rate, e.g. one Braze request per 14.4 ms for `250000 per 1h`.

    Use either explicit times or the server's clock for one budget, never both.
    """

    def __init__(self, store: Store, name: str, cap: Cap, *, burst: int = 1) -> None:
        if cap.count < 1 or not 1 <= burst <= cap.count:
            raise ValueError(f"a budget of {cap} cannot allow bursts of {burst}")
        window_us = cap.window // timedelta(microseconds=1)
        self.name = name
        self.cap = cap
        self._key = store.key("budget", name)
        self._interval_us = -(-window_us // (cap.count - burst + 1))
        self._tolerance_us = (burst - 1) * self._interval_us
        self._failures_key = store.key("budget", name, "failures")
        self._reserve = store.redis.register_script(_RESERVE)
        self._hold_off = store.redis.register_script(_HOLD_OFF)
        self._failed = store.redis.register_script(_FAILED)

    def acquire(self, now_ms: int | None = None) -> int:
        """Take one request now and return 0, or return the ms to wait first.

        A wait takes nothing: call again after it.
        """
        grant = self.reserve(0, now_ms)
        return 0 if grant.granted else grant.wait_ms

    def reserve(self, max_wait_ms: int, now_ms: int | None = None) -> Grant:
        """Take the next request slot if it opens within `max_wait_ms`.

        Slots are handed out in order, so callers that wait do not race each
        other for the same opening: each sleeps until its own.
        """
        now_us = "" if now_ms is None else now_ms * 1000
        args = [now_us, self._interval_us, self._tolerance_us, max(0, max_wait_ms)]
        granted, wait_ms = self._reserve(keys=[self._key], args=args)
        return Grant(bool(granted), int(wait_ms))

    def wait_for_slot(self, max_wait_ms: int) -> Grant:
        """Reserve a slot within `max_wait_ms` and sleep until it opens.

        A refused grant comes back at once, with the wait it would have needed.
        """
        grant = self.reserve(max_wait_ms)
        if grant.granted and grant.wait_ms > 0:
            time.sleep(grant.wait_ms / 1000)
        return grant

    def hold_off(self, wait_ms: int) -> None:
        """Open no slot for `wait_ms` from now (server clock), for every worker."""
        self._hold_off(keys=[self._key], args=[max(0, wait_ms), self._tolerance_us])

    def failed(
        self,
        *,
        trips_at: int = BREAKER_FAILURES,
        window_ms: int = BREAKER_WINDOW_MS,
        pause_ms: int = BREAKER_PAUSE_MS,
    ) -> bool:
        """Count a failure that says the vendor may be down; True when it tripped
        the breaker: `trips_at` failures within `window_ms`, across all workers,
        open no slot for `pause_ms`."""
        args = [window_ms, trips_at, pause_ms, self._tolerance_us]
        keys = [self._key, self._failures_key]
        return bool(self._failed(keys=keys, args=args))


def vendor_caps(
    vendor: str, defaults: Mapping[str, Cap], overrides: Mapping[str, Cap] | None
) -> dict[str, Cap]:
    """A vendor's budgets as paced: its documented `defaults`, with `overrides`
    laid over, each with the headroom of `with_headroom`.

    Raises:
        ConfigurationError: an override names a budget the vendor does not have.
    """
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ConfigurationError(
            f"{vendor} has no budget {', '.join(unknown)}; its budgets are "
            + ", ".join(sorted(defaults))
        )
    chosen = {**defaults, **(overrides or {})}
    return {name: with_headroom(cap) for name, cap in chosen.items()}


def with_headroom(cap: Cap) -> Cap:
    """`cap` less HEADROOM of its count, for a count of HEADROOM_FROM or more.

    A budget paced at exactly a vendor's limit meets it head on: requests leave
    evenly spaced but arrive a little bunched, so about once per vendor window
    one goes over the line, and the 429 pauses every worker. A small count
    (one broadcast per 10 s, 60 queries an hour) keeps its exact value, since
    one less would cost far more than the jitter.
    """
    if cap.count < HEADROOM_FROM:
        return cap
    return Cap(math.floor(cap.count * (1 - HEADROOM)), cap.window)


def vendor_budgets(
    store: Store | None,
    vendor: str,
    defaults: Mapping[str, Cap],
    overrides: Mapping[str, Cap] | None,
) -> dict[str, Budget]:
    """`vendor_caps` as budgets every worker shares through `store`; none without
    a store (a preview, or a check that sends nothing)."""
    caps = vendor_caps(vendor, defaults, overrides)
    if store is None:
        return {}
    return {name: Budget(store, name, cap) for name, cap in caps.items()}


class Slots:
    """At most `count` calls at once across every worker, each under a lease.

    A holder that dies without letting go loses its slot when the lease ends.
    """

    def __init__(
        self, store: Store, name: str, count: int, *, lease: timedelta
    ) -> None:
        if count < 1:
            raise ValueError(f"`{name}` needs at least one slot, not {count}")
        self.name = name
        self.count = count
        self._key = store.key("slots", name)
        self._lease_ms = max(1, lease // timedelta(milliseconds=1))
        self._redis = store.redis
        self._take = store.redis.register_script(_TAKE_SLOT)

    def try_take(self) -> str | None:
        """Take a slot and return its holder token, or None when all are taken."""
        holder = secrets.token_hex(8)
        taken = self._take(keys=[self._key], args=[holder, self.count, self._lease_ms])
        return holder if taken else None

    def give_back(self, holder: str) -> None:
        self._redis.zrem(self._key, holder)

    def in_use(self) -> int:
        """How many slots are held now, counting leases that have not ended."""
        now_ms = int(time.time() * 1000)
        return cast(int, self._redis.zcount(self._key, f"({now_ms}", "+inf"))

    @contextmanager
    def held(self, max_wait_s: float, poll_s: float = 0.05) -> Iterator[bool]:
        """Hold a slot for the block; yields False if none came within `max_wait_s`."""
        deadline = time.monotonic() + max_wait_s
        holder = self.try_take()
        while holder is None and time.monotonic() < deadline:
            time.sleep(poll_s)
            holder = self.try_take()
        try:
            yield holder is not None
        finally:
            if holder is not None:
                self.give_back(holder)

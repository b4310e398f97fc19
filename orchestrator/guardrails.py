"""Guardrails: the rules that hold back or defer a delivery.

Pure parts decide from data alone: conditions on user, account and event fields
(`matches`), the holdout (`in_holdout`) and the recipient's clock (`next_allowed`,
`clock_verdict`). Redis parts are shared by every worker: caps per user and account
across all playbooks and channels (`Caps`); vendor budgets live in `budgets`. The
engine records each decision not to send as a `Verdict` with a short reason code.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from orchestrator.model import Condition, Operators, SendWindow, Weekday
from orchestrator.state import Store
from orchestrator.units import Cap, ClockRange

HOLDOUT_BUCKETS = 10_000
SEARCH_DAYS = 8
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Reason codes of the verdicts not to send; the ledger counts them by prefix.
HOLDOUT = "holdout"
QUIET_HOURS = "quiet_hours"
SEND_WINDOW = "send_window"
NOT_ACTIVATED = "not_activated"
REENTRY = "reentry"

_SEPARATOR = "\x1f"
_MISSING: Final = object()
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_OFFSET_PROBE = timedelta(hours=1)


# --- Conditions -------------------------------------------------------------------


def matches(
    conditions: Mapping[str, Condition],
    user: Mapping[str, Any] | None = None,
    account: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
) -> bool:
    """True when every condition holds for this user, account and event.

    A field such as `user.company.size` is looked up in `user` (a key may itself
    hold dots: `{"company.size": 40}` works too). A field that is absent or `None`
    is missing: only `exists: false`, `not` and `not_in` hold for it. Numbers
    written as text (CSV, form data) compare as numbers when both sides read as
    numbers; `"true"` and `"false"` compare as booleans. Data of any other shape
    makes a test fail; this never raises on odd data.
    """
    roots = {"user": user, "account": account, "event": event}
    for field, condition in conditions.items():
        root, _, rest = field.partition(".")
        actual = _lookup(roots.get(root), rest.split("."))
        if not _holds(condition, actual):
            return False
    return True


def _lookup(value: Any, parts: list[str]) -> Any:
    if not parts:
        return _MISSING if value is None else value
    if not isinstance(value, Mapping):
        return _MISSING

    for size in range(len(parts), 0, -1):
        key = ".".join(parts[:size])
        if key in value:
            found = _lookup(value[key], parts[size:])
            if found is not _MISSING:
                return found
    return _MISSING


def _holds(condition: Any, actual: Any) -> bool:
    if isinstance(condition, Operators):
        return all(
            _passes(name, test, actual, getattr(condition, name))
            for name, test in _TESTS.items()
        )
    if actual is _MISSING:
        return False
    if isinstance(condition, list):
        return _is_one_of(actual, condition)
    return _equals(actual, condition)


def _passes(
    name: str, test: Callable[[Any, Any], bool], actual: Any, expected: Any
) -> bool:
    if expected is None:
        return True
    if actual is _MISSING:
        return name in ("not_", "not_in") or (name == "exists" and expected is False)
    return test(actual, expected)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    return {"true": True, "false": False}.get(text) if text else None


def _as_number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return Decimal(value.strip())
    return None


def _equals(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        left, right = _as_bool(actual), _as_bool(expected)
        return left is not None and left == right

    left_number, right_number = _as_number(actual), _as_number(expected)
    if left_number is not None and right_number is not None:
        return left_number == right_number
    return isinstance(actual, str) and isinstance(expected, str) and actual == expected


def _is_one_of(actual: Any, options: Any) -> bool:
    return isinstance(options, list) and any(_equals(actual, o) for o in options)


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list | tuple | set | frozenset):
        return any(_equals(item, expected) for item in actual)
    return False


def _compares(accept: Callable[[Decimal, Decimal], bool]) -> Callable[[Any, Any], bool]:
    def test(actual: Any, expected: Any) -> bool:
        left, right = _as_number(actual), _as_number(expected)
        return left is not None and right is not None and accept(left, right)

    return test


# Each test by the name of its `Operators` field; all that are written must hold.
_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": _equals,
    "not_": lambda actual, expected: not _equals(actual, expected),
    "in_": _is_one_of,
    "not_in": lambda actual, expected: not _is_one_of(actual, expected),
    "at_least": _compares(lambda left, right: left >= right),
    "at_most": _compares(lambda left, right: left <= right),
    "more_than": _compares(lambda left, right: left > right),
    "less_than": _compares(lambda left, right: left < right),
    "exists": lambda _actual, expected: expected is True,
    "contains": _contains,
}


# --- Holdout ----------------------------------------------------------------------


def in_holdout(playbook_id: str, subject_id: str, percent: float) -> bool:
    """True when this subject is in the playbook's holdout, deliberately not nudged.

    The answer depends only on the two ids (sha256, 10,000 buckets), so it is the
    same in every worker and every run, and a subject's holdout in one playbook
    says nothing about another. `percent` is 0 to 100, to 0.01%.
    """
    text = _SEPARATOR.join((playbook_id, subject_id))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    bucket = int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS

    return bucket < round(percent * HOLDOUT_BUCKETS / 100)


# --- The recipient's clock --------------------------------------------------------


def recipient_zone(time_zone: str | None, default_zone: str) -> ZoneInfo:
    """The recipient's time zone, or the workspace's when it is missing or unknown."""
    if isinstance(time_zone, str) and time_zone:
        try:
            return ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return ZoneInfo(default_zone)


def is_allowed(
    local: datetime, quiet: ClockRange | None, window: SendWindow | None
) -> bool:
    """True when a nudge may go out at this local wall-clock time."""
    clock = local.time()
    if quiet is not None and quiet.contains(clock):
        return False
    if window is None:
        return True
    if WEEKDAYS[local.weekday()] not in window.days:
        return False
    return window.hours is None or window.hours.contains(clock)


def next_allowed(
    now: datetime,
    time_zone: str | None,
    default_zone: str,
    quiet: ClockRange | None,
    window: SendWindow | None,
) -> datetime:
    """The first moment at or after `now` when a nudge may go out (UTC).

    Quiet hours and the send window are read on the recipient's wall clock, and
    each instant is judged by what that clock shows then. So on a spring-forward
    day a time that never shows (02:30 in New York on 2026-03-08) is reached when
    the clocks jump past it; on a fall-back day a time shown twice is reached at
    its first showing, and the repeated hour is judged again as the clock shows
    it. The window's days are the days of the local date at that instant.

    Returns `now` itself when a nudge may go out now.

    Raises:
        ValueError: `now` is naive, or nothing is allowed in the next 8 days.
    """
    if now.utcoffset() is None:
        raise ValueError("`now` must be an aware datetime")
    zone = recipient_zone(time_zone, default_zone)
    if is_allowed(now.astimezone(zone), quiet, window):
        return now

    for moment in _openings(now.astimezone(UTC), zone, quiet, window):
        if is_allowed(moment.astimezone(zone), quiet, window):
            return moment
    raise ValueError(
        f"nothing is allowed in the {SEARCH_DAYS} days after {now.isoformat()}: "
        "the send window lies inside quiet hours or has no days"
    )


def _openings(
    start: datetime, zone: ZoneInfo, quiet: ClockRange | None, window: SendWindow | None
) -> list[datetime]:
    """Every instant in the search at which sending may become allowed.

    Being allowed only starts when the local clock reaches the end of quiet hours,
    the start of the window's hours or midnight, or when the clocks change.
    """
    end = start + timedelta(days=SEARCH_DAYS)
    clocks = {time(0)}
    if quiet is not None:
        clocks.add(quiet.end)
    if window is not None and window.hours is not None:
        clocks.add(window.hours.start)

    first_day = start.astimezone(zone).date()
    moments = set(_clock_changes(start, end, zone))
    for offset in range(SEARCH_DAYS + 2):
        day = first_day + timedelta(days=offset)
        for clock in clocks:
            moments.update(_instants_of(datetime.combine(day, clock), zone))
    return sorted(moment for moment in moments if start < moment <= end)


def _instants_of(wall: datetime, zone: ZoneInfo) -> set[datetime]:
    """When the local clock shows `wall`: never in a gap, twice in an overlap."""
    found = set()
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            found.add(instant)
    return found


def _clock_changes(start: datetime, end: datetime, zone: ZoneInfo) -> list[datetime]:
    """The instants between `start` and `end` at which the zone's UTC offset changes."""
    changes = []
    before = start
    while before < end:
        after = min(before + _OFFSET_PROBE, end)
        if _offset(before, zone) != _offset(after, zone):
            changes.append(_first_second_like(before, after, zone))
        before = after
    return changes


def _first_second_like(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second after `low` with the UTC offset of `high`."""
    target = _offset(high, zone)
    low_s, high_s = math.floor(low.timestamp()), math.ceil(high.timestamp())
    while high_s - low_s > 1:
        middle_s = (low_s + high_s) // 2
        if _offset(datetime.fromtimestamp(middle_s, UTC), zone) == target:
            high_s = middle_s
        else:
            low_s = middle_s
    return datetime.fromtimestamp(high_s, UTC)


def _offset(moment: datetime, zone: ZoneInfo) -> timedelta | None:
    return moment.astimezone(zone).utcoffset()


def clock_verdict(
    now: datetime,
    time_zone: str | None,
    default_zone: str,
    quiet: ClockRange | None,
    window: SendWindow | None,
) -> Verdict:
    """Send now, or defer to `next_allowed` for quiet hours or the send window."""
    until = next_allowed(now, time_zone, default_zone, quiet, window)
    if until == now:
        return Verdict.send()

    local = now.astimezone(recipient_zone(time_zone, default_zone))
    is_quiet = quiet is not None and quiet.contains(local.time())
    return Verdict.defer(QUIET_HOURS if is_quiet else SEND_WINDOW, until)


# --- Caps -------------------------------------------------------------------------

# KEYS: one sorted set per claimed subject. ARGV: the token, now_ms, then for each
# key the number of its caps followed by each cap's count and window_ms. Returns 0
# when every cap had room and the token is recorded, else the 1-based number of the
# first cap that is full. The token's own entry never counts against it.
_TAKE = """
local token = ARGV[1]
local now = tonumber(ARGV[2])
local longest = {}
local at, number = 3, 0
for i, key in ipairs(KEYS) do
  local mine = redis.call('ZSCORE', key, token)
  mine = mine and tonumber(mine)
  local caps = tonumber(ARGV[at])
  longest[i] = 0
  for j = 1, caps do
    number = number + 1
    local count = tonumber(ARGV[at + 2 * j - 1])
    local window = tonumber(ARGV[at + 2 * j])
    local used = redis.call('ZCOUNT', key, '(' .. (now - window), '+inf')
    if mine and mine > now - window then
      used = used - 1
    end
    if used >= count then
      return number
    end
    longest[i] = math.max(longest[i], window)
  end
  at = at + 1 + 2 * caps
end
for i, key in ipairs(KEYS) do
  if longest[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - longest[i])
    redis.call('ZADD', key, ARGV[2], token)
    if redis.call('PTTL', key) < longest[i] then
      redis.call('PEXPIRE', key, longest[i])
    end
  end
end
return 0
"""


def cap_reason(scope: str, cap: Cap) -> str:
    """The reason code of a delivery held by a cap: `cap:per_user:1 per 14d`."""
    return f"cap:{scope}:{cap}"


def excluded_reason(cohort: str) -> str:
    """The reason code of a delivery held by an exclusion cohort."""
    return f"excluded:{cohort}"


class Caps:
    """Sliding-window caps, shared by every worker, playbook and channel.

    A subject is what a cap counts for: `user:u_1`, `account:acct_1`, or
    `user:u_1:playbook:pack-reviewers` for one playbook's own limit. Each subject
    is a sorted set of delivery keys scored by when they were taken.

    Every claim on one subject must carry the same caps (the workspace's for
    `user:` and `account:`, a playbook's for its own subjects): entries older than
    the longest window of a claim are trimmed away. The keys of one take are used
    in one script, so they must live on one Redis node (no Redis Cluster).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._take = store.redis.register_script(_TAKE)

    def take(
        self, claims: Sequence[tuple[str, Sequence[Cap]]], token: str, now_ms: int
    ) -> Cap | None:
        """Count `token` against every claimed cap if, and only if, all have room.

        All caps are checked and recorded in one atomic step, so two workers can
        never both take the last slot. Taking the same token again changes no
        count. Returns None when taken, else the first cap that is full.
        """
        return self.take_many([(claims, token)], now_ms)[0]

    def take_many(
        self,
        takes: Sequence[tuple[Sequence[tuple[str, Sequence[Cap]]], str]],
        now_ms: int,
    ) -> list[Cap | None]:
        """`take` for each (claims, token) pair, in one round trip.

        Each take is still its own atomic script: one delivery's caps are taken
        all or none, whatever the others in the batch find.
        """
        pipe = self.store.redis.pipeline(transaction=False)
        queued: list[list[Cap] | None] = []
        for claims, token in takes:
            keys, args, caps = self._take_args(claims, token, now_ms)
            if keys:
                self._take(keys=keys, args=args, client=pipe)
            queued.append(caps if keys else None)
        answers = iter(pipe.execute())
        return [
            None if caps is None else _blocked(caps, int(next(answers)))
            for caps in queued
        ]

    def _take_args(
        self, claims: Sequence[tuple[str, Sequence[Cap]]], token: str, now_ms: int
    ) -> tuple[list[str], list[str | int], list[Cap]]:
        keys: list[str] = []
        args: list[str | int] = [token, now_ms]
        caps: list[Cap] = []
        for subject, subject_caps in claims:
            keys.append(self.store.key("cap", subject))
            args.append(len(subject_caps))
            for cap in subject_caps:
                args.extend([cap.count, _ms(cap.window)])
                caps.append(cap)
        return keys, args, caps

    def give_back(self, claims_subjects: Sequence[str], token: str) -> None:
        """Stop counting `token`: use it when a delivery definitely failed."""
        keys = [self.store.key("cap", subject) for subject in claims_subjects]
        with self.store.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.zrem(key, token)
            pipe.execute()

    def used(self, subject: str, cap: Cap, now_ms: int) -> int:
        """How many deliveries count against `cap` for `subject` at `now_ms`."""
        since = now_ms - _ms(cap.window)
        key = self.store.key("cap", subject)
        return cast(int, self.store.redis.zcount(key, f"({since}", "+inf"))


def _ms(span: timedelta) -> int:
    return span // timedelta(milliseconds=1)


def _blocked(caps: Sequence[Cap], answer: int) -> Cap | None:
    """The cap `_TAKE` answered with (1-based), or None for 0: taken."""
    return caps[answer - 1] if answer else None


# --- Verdicts ---------------------------------------------------------------------

Action = Literal["send", "hold", "defer"]


@dataclass(frozen=True)
class Verdict:
    """What the guardrails decided for one delivery, and why.

    `reason` is a short code (`holdout`, `quiet_hours`, `cap:per_user:1 per 14d`,
    `excluded:mixpanel:123`); `until` is when a deferred delivery may go.
    """

    action: Action
    reason: str = ""
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.action != "send" and not self.reason:
            raise ValueError(f"a `{self.action}` verdict needs a reason")
        if (self.action == "defer") != (self.until is not None):
            raise ValueError("`until` goes with a `defer` verdict, and only with it")

    @classmethod
    def send(cls) -> Verdict:
        return cls("send")

    @classmethod
    def hold(cls, reason: str) -> Verdict:
        return cls("hold", reason)

    @classmethod
    def defer(cls, reason: str, until: datetime) -> Verdict:
        return cls("defer", reason, until)

    @property
    def sends(self) -> bool:
        return self.action == "send"

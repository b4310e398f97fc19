"""Guardrails: conditions, holdout, the recipient's clock, caps and vendor budgets."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.guardrails import (
    QUIET_HOURS,
    SEND_WINDOW,
    Caps,
    Verdict,
    cap_reason,
    clock_verdict,
    excluded_reason,
    in_holdout,
    is_allowed,
    matches,
    next_allowed,
    recipient_zone,
)
from orchestrator.model import Condition, Operators, SendWindow
from orchestrator.state import Store
from orchestrator.units import Cap, ClockRange, parse_cap, parse_clock_range

EXAMPLES = settings(max_examples=200, deadline=None)
NIGHT = parse_clock_range("20:00-08:00")
OFFICE = SendWindow.model_validate(
    {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00"}
)
ONE_PER_DAY = parse_cap("1 per 1d")
DAY_MS = 86_400_000
T0_MS = 1_780_000_000_000


def ops(**tests: Any) -> Operators:
    """An `Operators` written as in YAML (`not`, `in` included)."""
    return Operators.model_validate(tests)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- conditions -------------------------------------------------------------------

USER = {"role": "admin", "seats": 12, "plan": "pro", "tags": ["legal", "m&a", 7]}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("admin", True),
        ("viewer", False),
        (["viewer", "admin"], True),
        (["viewer"], False),
        (ops(equals="admin"), True),
        (ops(equals="Admin"), False),
        (ops(**{"not": "viewer"}), True),
        (ops(**{"not": "admin"}), False),
        (ops(**{"in": ["admin", "owner"]}), True),
        (ops(**{"in": ["owner"]}), False),
        (ops(not_in=["owner"]), True),
        (ops(not_in=["admin"]), False),
        (ops(exists=True), True),
        (ops(exists=False), False),
        (ops(contains="dm"), True),
        (ops(contains="own"), False),
        (ops(equals="admin", not_in=["owner"]), True),
        (ops(equals="admin", contains="x"), False),
    ],
)
def test_each_text_operator_holds_or_not(condition: Any, expected: bool) -> None:
    """Every operator that applies to text gives the right answer on `user.role`."""
    actual = matches({"user.role": condition}, user=USER)

    assert actual == expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (12, True),
        (ops(at_least=12), True),
        (ops(at_least=13), False),
        (ops(at_most=12), True),
        (ops(at_most=11.5), False),
        (ops(more_than=11.9), True),
        (ops(more_than=12), False),
        (ops(less_than=12.1), True),
        (ops(less_than=12), False),
        (ops(at_least=10, at_most=20), True),
        (ops(at_least=10, less_than=12), False),
    ],
)
def test_each_number_operator_holds_or_not(condition: Any, expected: bool) -> None:
    """The comparisons are exact at their bounds (`at_least` includes, `more_than`
    excludes)."""
    actual = matches({"user.seats": condition}, user=USER)

    assert actual == expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (ops(exists=False), True),
        (ops(**{"not": "admin"}), True),
        (ops(not_in=["admin"]), True),
        ("admin", False),
        (["admin"], False),
        (ops(equals="admin"), False),
        (ops(**{"in": ["admin"]}), False),
        (ops(exists=True), False),
        (ops(at_least=0), False),
        (ops(at_most=0), False),
        (ops(more_than=0), False),
        (ops(less_than=0), False),
        (ops(contains="a"), False),
        (ops(exists=False, at_least=0), False),
    ],
)
def test_only_exists_false_and_negations_hold_for_a_missing_field(
    condition: Any, expected: bool
) -> None:
    """A field that is absent, or null, fails every test but `exists: false`,
    `not` and `not_in`."""
    absent = matches({"user.title": condition}, user=USER)
    null = matches({"user.title": condition}, user={**USER, "title": None})

    assert (absent, null) == (expected, expected)


@pytest.mark.parametrize(
    ("value", "condition", "expected"),
    [
        ("12", ops(at_least=10), True),
        (" 12 ", ops(at_least=13), False),
        ("3.0", 3, True),
        ("007", ops(equals=7), True),
        ("1e3", ops(more_than=999), True),
        ("-2.5", ops(less_than=-2), True),
        ("12", ["5", 12], True),
        (12, "12", True),
        (0.1, "0.1", True),
        ("12 seats", ops(at_least=10), False),
        ("abc", ops(less_than=1), False),
        ("nan", ops(at_least=0), False),
        ("", ops(at_most=0), False),
        ("true", True, True),
        ("FALSE", ops(equals=False), True),
        (True, "true", True),
        (1, True, False),
        (True, 1, False),
        ("1", ops(equals=True), False),
    ],
)
def test_numbers_and_booleans_written_as_text_compare_as_such(
    value: Any, condition: Any, expected: bool
) -> None:
    """CSV and form data send `"12"` and `"true"`; they compare as 12 and true,
    while 1 and true stay different."""
    actual = matches({"account.size": condition}, account={"size": value})

    assert actual == expected


def test_a_path_reaches_into_nested_data_and_dotted_keys() -> None:
    """`account.company.size` reads a nested mapping or a key holding a dot."""
    nested = {"company": {"size": 40, "name": "Acme"}}
    dotted = {"company.size": 40}
    condition = {"account.company.size": ops(at_least=40)}

    assert matches(condition, account=nested)
    assert matches(condition, account=dotted)
    assert not matches({"account.company.size.x": 40}, account=nested)
    assert not matches({"account.company.name.first": "A"}, account=nested)


def test_contains_looks_into_text_and_lists() -> None:
    """`contains` is a substring test on text and a member test on a list."""
    tags = {"user.tags": ops(contains="legal")}
    number_tag = {"user.tags": ops(contains="7")}
    text = {"event.name": ops(contains="pack")}

    assert matches(tags, user=USER)
    assert matches(number_tag, user=USER)
    assert matches(text, event={"name": "document_pack_uploaded"})
    assert not matches(text, event={"name": 7})
    assert not matches({"user.seats": ops(contains="1")}, user=USER)


def test_every_condition_must_hold_across_user_account_and_event() -> None:
    """Conditions on the user, the account and the event all have to hold."""
    conditions: dict[str, Condition] = {
        "user.role": "admin",
        "account.plan": ["pro", "enterprise"],
        "event.document_count": ops(at_least=5),
    }
    account = {"plan": "pro"}

    assert matches(conditions, user=USER, account=account, event={"document_count": 9})
    assert not matches(
        conditions, user=USER, account=account, event={"document_count": 2}
    )
    assert not matches(conditions, user=USER, account=account)
    assert matches({}, user=None)


ODD_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=6)
    | st.sampled_from(["12", "1e999999", "-0", ".5", "true", " nan ", "1_000"])
)
ODD_DATA = st.recursive(
    ODD_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "a.b", ""]), inner, max_size=3)
    ),
    max_leaves=12,
)
SCALARS = (
    st.integers()
    | st.text(max_size=8)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False)
OPERATORS = st.fixed_dictionaries(
    {},
    optional={
        "equals": SCALARS,
        "not": SCALARS,
        "in": st.lists(SCALARS, max_size=3),
        "not_in": st.lists(SCALARS, max_size=3),
        "at_least": NUMBERS,
        "at_most": NUMBERS,
        "more_than": NUMBERS,
        "less_than": NUMBERS,
        "exists": st.booleans(),
        "contains": st.text(max_size=4),
    },
).filter(bool)
CONDITIONS = (
    SCALARS | st.lists(SCALARS, max_size=3) | OPERATORS.map(Operators.model_validate)
)
FIELDS = st.sampled_from(
    ["user.a", "user.a.b", "account.b", "event.a", "event.", "x.a"]
)


@EXAMPLES
@given(
    conditions=st.dictionaries(FIELDS, CONDITIONS, max_size=3),
    user=ODD_DATA,
    account=st.dictionaries(st.sampled_from(["a", "b"]), ODD_DATA, max_size=2),
    event=st.dictionaries(st.sampled_from(["a", "a.b"]), ODD_DATA, max_size=2),
)
def test_conditions_never_raise_on_odd_data(
    conditions: dict[str, Any], user: Any, account: Any, event: Any
) -> None:
    """Product data of any shape (bytes, NaN, sets, nesting, non-mappings) gives
    an answer, never an exception."""
    answer = matches(conditions, user=user, account=account, event=event)

    assert isinstance(answer, bool)


# --- holdout ----------------------------------------------------------------------


def test_the_holdout_gives_the_same_answer_every_time() -> None:
    """The same playbook and user are always on the same side, and a fresh
    interpreter (another hash seed, another worker) agrees."""
    users = [f"u_{n}" for n in range(200)]
    here = [in_holdout("pack-reviewers", user, 50) for user in users]
    again = [in_holdout("pack-reviewers", user, 50) for user in users]
    code = (
        "from orchestrator.guardrails import in_holdout; "
        f"print(''.join('1' if in_holdout('pack-reviewers', u, 50) else '0' "
        f"for u in {users!r}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )

    assert here == again
    assert run.stdout.strip() == "".join("1" if held else "0" for held in here)


@pytest.mark.parametrize(
    ("percent", "low", "high"),
    [
        (10, 900, 1100),
        (25, 2400, 2600),
        (0.5, 0, 150),
        (0, 0, 0),
        (100, 10_000, 10_000),
    ],
)
def test_the_holdout_is_within_a_point_of_its_percentage(
    percent: float, low: int, high: int
) -> None:
    """Over 10,000 users the share held out is within one percentage point."""
    held = sum(in_holdout("pack-reviewers", f"u_{n}", percent) for n in range(10_000))

    assert low <= held <= high


def test_holdouts_of_two_playbooks_are_independent() -> None:
    """Being held out of one playbook says nothing about another: 10% of 10%."""
    users = [f"u_{n}" for n in range(10_000)]
    both = sum(
        in_holdout("pack-reviewers", user, 10) and in_holdout("task-owners", user, 10)
        for user in users
    )

    assert 50 <= both <= 150


# --- the recipient's clock --------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "now", "expected"),
    [
        # London springs forward at 01:00 GMT: 08:00 is BST (+1), 07:00 UTC.
        ("Europe/London", "2026-03-28T22:00", "2026-03-29T07:00"),
        # London falls back at 01:00 GMT: 08:00 is GMT again, 08:00 UTC.
        ("Europe/London", "2026-10-24T22:00", "2026-10-25T08:00"),
        # New York springs forward at 02:00 EST: 08:00 is EDT (-4), 12:00 UTC.
        ("America/New_York", "2026-03-08T03:00", "2026-03-08T12:00"),
        # New York falls back at 02:00 EDT: 08:00 is EST (-5), 13:00 UTC.
        ("America/New_York", "2026-11-01T03:00", "2026-11-01T13:00"),
        # The day before the change, the old offset still holds.
        ("America/New_York", "2026-03-07T03:00", "2026-03-07T13:00"),
    ],
)
def test_quiet_hours_defer_to_the_local_morning_across_a_clock_change(
    zone: str, now: str, expected: str
) -> None:
    """A nudge in the recipient's night waits until 08:00 on their clock, on the
    nights the clocks change too."""
    until = next_allowed(utc(now), zone, "UTC", NIGHT, None)

    assert until == utc(expected)


def test_a_time_that_never_shows_is_reached_when_the_clocks_jump() -> None:
    """Quiet until 02:30 in New York on 2026-03-08, when 02:00 EST becomes 03:00
    EDT: the nudge goes at the jump, 07:00 UTC, not an hour later."""
    quiet = parse_clock_range("00:00-02:30")

    until = next_allowed(
        utc("2026-03-08T05:30"), "America/New_York", "UTC", quiet, None
    )

    assert until == utc("2026-03-08T07:00")


def test_a_time_that_shows_twice_is_reached_at_its_first_showing() -> None:
    """Quiet until 01:30 in New York on 2026-11-01, when 01:00-02:00 is lived
    twice: the nudge goes at the first 01:30 (EDT), 05:30 UTC."""
    quiet = parse_clock_range("22:00-01:30")

    until = next_allowed(
        utc("2026-11-01T03:00"), "America/New_York", "UTC", quiet, None
    )

    assert until == utc("2026-11-01T05:30")


def test_the_repeated_hour_is_judged_by_the_clock_again() -> None:
    """After falling back, 01:00-01:30 EST shows on the clock again and is quiet
    again; 01:30 EST (06:30 UTC) is allowed."""
    quiet = parse_clock_range("22:00-01:30")

    until = next_allowed(
        utc("2026-11-01T06:10"), "America/New_York", "UTC", quiet, None
    )

    assert until == utc("2026-11-01T06:30")


def test_a_nudge_allowed_now_goes_now() -> None:
    """Outside quiet hours and inside the window, `now` itself comes back."""
    now = datetime(2026, 1, 7, 14, 3, 27, 123, tzinfo=UTC)

    until = next_allowed(now, "Europe/London", "UTC", NIGHT, OFFICE)

    assert until is now


def test_friday_evening_waits_for_monday_morning() -> None:
    """Friday 18:00 with a Monday-to-Friday 09:00-17:00 window goes on Monday at
    09:00 local."""
    friday_evening = utc("2026-01-09T18:00")

    until = next_allowed(friday_evening, "Europe/London", "UTC", None, OFFICE)

    assert until == utc("2026-01-12T09:00")


def test_the_window_opens_on_local_monday_after_the_clocks_change() -> None:
    """Friday 18:00 EST before the spring change goes on Monday 09:00 EDT."""
    friday_evening = utc("2026-03-06T23:00")

    until = next_allowed(friday_evening, "America/New_York", "UTC", NIGHT, OFFICE)

    assert until == utc("2026-03-09T13:00")


def test_before_the_window_opens_the_same_day_is_used() -> None:
    """Tuesday 07:30 in Tokyo with a 09:00 window opens at 09:00 JST."""
    tuesday_early = utc("2026-01-05T22:30")

    until = next_allowed(tuesday_early, "Asia/Tokyo", "UTC", None, OFFICE)

    assert until == utc("2026-01-06T00:00")


@pytest.mark.parametrize("zone", [None, "", "Mars/Olympus_Mons", "../etc/passwd"])
def test_a_missing_or_unknown_zone_falls_back_to_the_workspace(
    zone: str | None,
) -> None:
    """Without a usable zone for the recipient, the workspace's zone decides."""
    now = utc("2026-01-07T02:00")

    until = next_allowed(now, zone, "America/New_York", NIGHT, None)

    assert until == utc("2026-01-07T13:00")


@given(zone=st.text(max_size=40))
def test_any_text_as_a_zone_gives_a_zone(zone: str) -> None:
    """The recipient's zone comes from product data: any text is either a zone or
    falls back, never an error."""
    found = recipient_zone(zone, "Europe/London")

    assert isinstance(found, ZoneInfo)


@pytest.mark.parametrize(
    "window",
    [
        SendWindow.model_validate({"days": [], "hours": "09:00-17:00"}),
        SendWindow.model_validate({"hours": "21:00-23:00"}),
    ],
)
def test_a_window_that_never_opens_is_an_error(window: SendWindow) -> None:
    """A window with no days, or inside quiet hours, cannot be waited for."""
    with pytest.raises(ValueError, match="nothing is allowed"):
        next_allowed(utc("2026-01-07T12:00"), "UTC", "UTC", NIGHT, window)


def test_a_naive_now_is_an_error() -> None:
    """Without a zone `now` means nothing; refuse it rather than guess."""
    with pytest.raises(ValueError, match="aware"):
        next_allowed(datetime(2026, 1, 7, 12), "UTC", "UTC", NIGHT, None)


ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/Santiago",
]
CLOCK_RANGES = st.builds(
    lambda start, length: parse_clock_range(
        f"{start // 60:02}:{start % 60:02}-"
        f"{(start + length) % 1440 // 60:02}:{(start + length) % 1440 % 60:02}"
    ),
    st.integers(0, 1439),
    st.integers(1, 1439),
)
WINDOWS = st.builds(
    lambda days, hours: SendWindow(days=days, hours=hours),
    st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])),
    st.none() | CLOCK_RANGES,
)


@settings(max_examples=60, deadline=None)
@given(
    now=st.datetimes(
        min_value=datetime(2026, 1, 1),
        max_value=datetime(2027, 12, 31),
        timezones=st.just(UTC),
    ),
    zone=st.sampled_from(ZONES),
    quiet=st.none() | CLOCK_RANGES,
    window=st.none() | WINDOWS,
)
def test_next_allowed_agrees_with_a_minute_by_minute_search(
    now: datetime, zone: str, quiet: ClockRange | None, window: SendWindow | None
) -> None:
    """Whatever the zone (half-hour and 45-minute offsets, southern summers), the
    answer is the first allowed minute that a slow search finds."""
    local_zone = ZoneInfo(zone)
    expected = _search_by_minute(now, local_zone, quiet, window)

    try:
        actual: datetime | None = next_allowed(now, zone, "UTC", quiet, window)
    except ValueError:
        actual = None

    assert actual == expected


def _search_by_minute(
    now: datetime, zone: ZoneInfo, quiet: ClockRange | None, window: SendWindow | None
) -> datetime | None:
    if is_allowed(now.astimezone(zone), quiet, window):
        return now
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for step in range(8 * 1440):
        candidate = minute + timedelta(minutes=step)
        if is_allowed(candidate.astimezone(zone), quiet, window):
            return candidate
    return None


def test_the_clock_verdict_says_why_it_defers() -> None:
    """A night-time nudge is deferred for quiet hours, a weekend one for the send
    window, and a Wednesday-afternoon one is sent."""
    night = clock_verdict(utc("2026-01-07T23:00"), "UTC", "UTC", NIGHT, OFFICE)
    weekend = clock_verdict(utc("2026-01-10T12:00"), "UTC", "UTC", NIGHT, OFFICE)
    afternoon = clock_verdict(utc("2026-01-07T14:00"), "UTC", "UTC", NIGHT, OFFICE)

    assert night == Verdict.defer(QUIET_HOURS, utc("2026-01-08T09:00"))
    assert weekend == Verdict.defer(SEND_WINDOW, utc("2026-01-12T09:00"))
    assert afternoon == Verdict.send()


# --- verdicts ---------------------------------------------------------------------


def test_verdicts_carry_their_reason_codes() -> None:
    """A verdict not to send always says why; only a deferral has an `until`."""
    cap = parse_cap("1 per 14d")

    assert Verdict.hold(cap_reason("per_user", cap)).reason == "cap:per_user:1 per 14d"
    assert excluded_reason("mixpanel:123") == "excluded:mixpanel:123"
    assert Verdict.send().sends
    with pytest.raises(ValueError, match="reason"):
        Verdict("hold")
    with pytest.raises(ValueError, match="until"):
        Verdict("hold", "holdout", utc("2026-01-01T00:00"))
    with pytest.raises(ValueError, match="until"):
        Verdict("defer", "quiet_hours")


# --- caps -------------------------------------------------------------------------


def test_a_user_cap_holds_across_playbooks_and_channels(store: Store) -> None:
    """The workspace's `2 per 7d` per user counts nudges of every playbook on every
    channel: a Braze nudge and an Intercom nudge use it up for a third."""
    caps = Caps(store)
    per_user = [parse_cap("2 per 7d")]
    reviewers = [("user:u_1", per_user), ("user:u_1:playbook:pack-reviewers", [])]
    owners = [("user:u_1", per_user), ("user:u_1:playbook:task-owners", [])]

    by_braze = caps.take(reviewers, "dk_reviewers_braze", T0_MS)
    by_intercom = caps.take(owners, "dk_owners_intercom", T0_MS + 1)
    third = caps.take(reviewers, "dk_reviewers_again", T0_MS + 2)

    assert (by_braze, by_intercom) == (None, None)
    assert third == per_user[0]


def test_the_first_full_cap_is_named_and_nothing_is_taken(store: Store) -> None:
    """When the account's cap is full, the user's and the playbook's caps are
    left as they were: a take is all or nothing."""
    caps = Caps(store)
    per_account = parse_cap("1 per 7d")
    caps.take([("account:acct_1", [per_account])], "dk_colleague", T0_MS)
    claims = [
        ("user:u_1", [parse_cap("3 per 7d")]),
        ("account:acct_1", [parse_cap("10 per 30d"), per_account]),
        ("user:u_1:playbook:pack-reviewers", [ONE_PER_DAY]),
    ]

    blocked = caps.take(claims, "dk_mine", T0_MS + 1)

    assert blocked == per_account
    assert caps.used("user:u_1", parse_cap("3 per 7d"), T0_MS + 1) == 0
    assert caps.used("user:u_1:playbook:pack-reviewers", ONE_PER_DAY, T0_MS + 1) == 0


def test_taking_the_same_token_twice_counts_once(store: Store) -> None:
    """A redelivered message takes its delivery key again: still one use, and it
    is not held by its own earlier take."""
    caps = Caps(store)
    claims = [("user:u_1", [ONE_PER_DAY])]

    first = caps.take(claims, "dk_1", T0_MS)
    again = caps.take(claims, "dk_1", T0_MS + 5)

    assert (first, again) == (None, None)
    assert caps.used("user:u_1", ONE_PER_DAY, T0_MS + 5) == 1


def test_sixteen_workers_race_for_the_last_slot_and_one_wins(store: Store) -> None:
    """With one slot left, 16 threads taking it at once with their own delivery
    keys: exactly one gets it."""
    cap = parse_cap("3 per 7d")
    caps = Caps(store)
    caps.take([("account:acct_1", [cap])], "dk_a", T0_MS)
    caps.take([("account:acct_1", [cap])], "dk_b", T0_MS)
    start = threading.Barrier(16)
    results: list[Cap | None] = []

    def worker(n: int) -> None:
        own = Caps(store)
        start.wait()
        results.append(own.take([("account:acct_1", [cap])], f"dk_{n}", T0_MS + 1))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count(None) == 1
    assert results.count(cap) == 15
    assert caps.used("account:acct_1", cap, T0_MS + 1) == 3


def test_giving_back_frees_the_slot(store: Store) -> None:
    """A delivery that definitely failed gives its slot back for the next one."""
    caps = Caps(store)
    claims = [("user:u_1", [ONE_PER_DAY]), ("account:acct_1", [ONE_PER_DAY])]
    caps.take(claims, "dk_failed", T0_MS)
    held = caps.take(claims, "dk_next", T0_MS + 1)

    caps.give_back(["user:u_1", "account:acct_1"], "dk_failed")
    taken = caps.take(claims, "dk_next", T0_MS + 2)

    assert held == ONE_PER_DAY
    assert taken is None


def test_a_use_older_than_the_window_no_longer_counts(store: Store) -> None:
    """`1 per 1d` frees up exactly one day after the last use, not before."""
    caps = Caps(store)
    claims = [("user:u_1", [ONE_PER_DAY])]
    caps.take(claims, "dk_monday", T0_MS)

    just_before = caps.take(claims, "dk_tuesday", T0_MS + DAY_MS - 1)
    on_time = caps.take(claims, "dk_tuesday", T0_MS + DAY_MS)

    assert just_before == ONE_PER_DAY
    assert on_time is None


def test_a_cap_key_keeps_only_its_longest_window(store: Store) -> None:
    """Entries past the longest window are trimmed and the key expires with it, so
    caps leave nothing behind."""
    caps = Caps(store)
    claims = [("user:u_1", [ONE_PER_DAY, parse_cap("2 per 2d")])]
    caps.take(claims, "dk_old", T0_MS)

    caps.take(claims, "dk_new", T0_MS + 3 * DAY_MS)
    key = store.key("cap", "user:u_1")
    ttl_ms = cast(int, store.redis.pttl(key))

    assert store.redis.zrange(key, 0, -1) == ["dk_new"]
    assert 0 < ttl_ms <= 2 * DAY_MS


def test_no_claims_take_nothing(store: Store) -> None:
    """An empty claim list is a take with nothing to count."""
    assert Caps(store).take([], "dk_1", T0_MS) is None

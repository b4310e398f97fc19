"""Durations, percentages, caps and clock ranges as a marketer writes them."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.units import (
    UNIT_SECONDS,
    Cap,
    ClockRange,
    format_duration,
    parse_cap,
    parse_clock_range,
    parse_duration,
    parse_percentage,
)

# --- durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("14d", timedelta(days=14)),
        ("2w", timedelta(weeks=2)),
        ("14 days", timedelta(days=14)),
        ("1 hour", timedelta(hours=1)),
        ("90 minutes", timedelta(minutes=90)),
        (" 2H ", timedelta(hours=2)),
        ("0m", timedelta(0)),
    ],
)
def test_a_duration_is_read_in_short_or_long_units(
    written: str, expected: timedelta
) -> None:
    """`2h` and `2 hours` mean the same; case and spaces around do not matter."""
    assert parse_duration(written) == expected


@pytest.mark.parametrize(
    "written", ["2", "h", "2x", "-1d", "1.5h", "2 fortnights", "", "two hours"]
)
def test_a_duration_without_a_known_unit_is_refused(written: str) -> None:
    """The error shows the spellings that work."""
    with pytest.raises(ValueError, match="write `30m`, `2h`, `14d` or `2w`"):
        parse_duration(written)


def test_a_duration_must_be_text_not_a_bare_number() -> None:
    """`delay: 2` has no unit: refused rather than guessed."""
    with pytest.raises(ValueError, match="write a duration"):
        parse_duration(2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(weeks=2), "14d"),
        (timedelta(days=3), "3d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=45), "45s"),
        (timedelta(0), "0s"),
    ],
)
def test_a_duration_is_written_in_its_largest_whole_unit_up_to_days(
    value: timedelta, expected: str
) -> None:
    """Two weeks read back as `14d`, as written; 36 hours stay `36h`."""
    assert format_duration(value) == expected


@settings(max_examples=200)
@given(
    # 500 of the largest unit (weeks) stays under the ten-year ceiling.
    count=st.integers(min_value=0, max_value=500),
    unit=st.sampled_from(sorted(UNIT_SECONDS)),
)
def test_formatting_a_duration_reads_back_as_the_same_duration(
    count: int, unit: str
) -> None:
    """format and parse round-trip, whatever unit the author chose."""
    duration = parse_duration(f"{count}{unit}")

    assert parse_duration(format_duration(duration)) == duration


# --- percentages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [("10%", 10.0), ("12.5 %", 12.5), ("0%", 0.0), ("100%", 100.0), (10, 10.0)],
)
def test_a_percentage_is_read_with_its_sign_or_as_a_bare_number(
    written: object, expected: float
) -> None:
    """`10%` and the number 10 are both ten percent."""
    assert parse_percentage(written) == expected


@pytest.mark.parametrize("written", ["150%", "100.5%", -1, 101])
def test_a_percentage_outside_0_to_100_is_refused(written: object) -> None:
    """Holding out more than everyone is not possible."""
    with pytest.raises(ValueError, match="out of range"):
        parse_percentage(written)


@pytest.mark.parametrize("written", ["10", "ten%", "%", "1e2%", True])
def test_a_percentage_that_is_not_one_is_refused(written: object) -> None:
    """Text needs its `%`; `true` is not a number of percent."""
    with pytest.raises(ValueError, match="percentage"):
        parse_percentage(written)


# --- caps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1 per 14d", Cap(1, timedelta(days=14))),
        ("3 per 7 days", Cap(3, timedelta(days=7))),
        ("10 per 1h", Cap(10, timedelta(hours=1))),
    ],
)
def test_a_cap_is_a_count_per_window(written: str, expected: Cap) -> None:
    """`N per <duration>` with any duration spelling."""
    assert parse_cap(written) == expected


@pytest.mark.parametrize("written", ["1 every 14d", "per 14d", "1 per", "one per 1d"])
def test_a_cap_written_otherwise_is_refused(written: str) -> None:
    """The error shows how a cap is written."""
    with pytest.raises(ValueError, match="1 per 14d"):
        parse_cap(written)


def test_a_cap_is_written_back_as_the_author_wrote_it() -> None:
    """`3 per 7d` prints as `3 per 7d`, and `1 per 2w` as `1 per 14d`."""
    assert str(parse_cap("3 per 7d")) == "3 per 7d"
    assert str(parse_cap("1 per 2w")) == "1 per 14d"


@pytest.mark.parametrize(
    ("loose", "strict"),
    [
        ("5 per 1d", "2 per 7d"),
        ("2 per 7d", "1 per 14d"),
        ("3 per 7d", "3 per 7d"),
        ("4 per 7d", "2 per 7d"),
    ],
)
def test_a_cap_never_binds_beside_a_stricter_one(loose: str, strict: str) -> None:
    """No more sends over a window no longer: the stricter cap always stops first."""
    assert parse_cap(loose).never_binds_beside(parse_cap(strict))


@pytest.mark.parametrize(
    ("cap", "other"),
    [
        ("2 per 7d", "5 per 1d"),
        ("1 per 14d", "2 per 7d"),
        ("1 per 1d", "2 per 7d"),
        ("2 per 7d", "4 per 7d"),
    ],
)
def test_a_cap_that_can_hold_a_send_back_binds(cap: str, other: str) -> None:
    """Fewer sends, or a longer window, means this cap can be the one that stops."""
    assert not parse_cap(cap).never_binds_beside(parse_cap(other))


# --- clock ranges -----------------------------------------------------------------


def test_a_clock_range_may_wrap_past_midnight() -> None:
    """`20:00-08:00` covers the night: late evening and early morning."""
    quiet = parse_clock_range("20:00-08:00")

    assert quiet.wraps
    assert quiet.contains(time(23, 30))
    assert quiet.contains(time(0, 0))
    assert quiet.contains(time(7, 59))
    assert not quiet.contains(time(8, 0))
    assert not quiet.contains(time(12, 0))
    assert quiet.contains(time(20, 0))


def test_a_daytime_range_includes_its_start_and_excludes_its_end() -> None:
    """`09:00-17:00` starts at nine and is over at five."""
    window = parse_clock_range("09:00-17:00")

    assert not window.wraps
    assert window.contains(time(9, 0))
    assert window.contains(time(16, 59))
    assert not window.contains(time(17, 0))


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("20:00-08:00", ClockRange(time(20), time(8))),
        ("9:00-17:30", ClockRange(time(9), time(17, 30))),
        ("22:00 - 06:15", ClockRange(time(22), time(6, 15))),
    ],
)
def test_a_clock_range_is_read_with_or_without_leading_zeros(
    written: str, expected: ClockRange
) -> None:
    """Single-digit hours and spaces around the dash are accepted."""
    assert parse_clock_range(written) == expected


@pytest.mark.parametrize(
    "written", ["24:00-08:00", "20:60-08:00", "20:00", "20-08", "20:00-08:00-09:00"]
)
def test_a_clock_range_written_otherwise_is_refused(written: str) -> None:
    """Hours 0-23, minutes 0-59, one dash."""
    with pytest.raises(ValueError, match="not a range of hours"):
        parse_clock_range(written)


def test_an_empty_clock_range_is_refused() -> None:
    """A range from a time to itself would mean nothing or everything: refused."""
    with pytest.raises(ValueError, match="empty"):
        parse_clock_range("10:00-10:00")


def test_a_clock_range_is_written_back_with_leading_zeros() -> None:
    """What is printed is what the author would write."""
    assert str(parse_clock_range("9:05-17:00")) == "09:05-17:00"


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("20:00-08:00", "21:00-23:00"),
        ("20:00-08:00", "22:00-07:00"),
        ("20:00-08:00", "01:00-02:00"),
        ("20:00-08:00", "20:00-08:00"),
        ("09:00-17:00", "10:00-12:00"),
    ],
)
def test_a_range_covers_every_range_inside_it(outer: str, inner: str) -> None:
    """Wrapping or not, every minute of the inner range is in the outer one."""
    assert parse_clock_range(outer).covers(parse_clock_range(inner))


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("20:00-08:00", "09:00-17:00"),
        ("20:00-08:00", "19:00-21:00"),
        ("20:00-08:00", "07:00-09:00"),
        ("09:00-17:00", "16:00-18:00"),
        ("09:00-17:00", "20:00-08:00"),
    ],
)
def test_a_range_does_not_cover_one_that_reaches_outside_it(
    outer: str, inner: str
) -> None:
    """One minute outside is enough: the send window is still usable then."""
    assert not parse_clock_range(outer).covers(parse_clock_range(inner))

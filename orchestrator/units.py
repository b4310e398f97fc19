"""Durations, percentages, caps and clock ranges, written as a marketer writes them.

delay: 2h            a Duration
holdout: 10%         a Percentage
per_user: 1 per 14d  a Cap
quiet_hours: 20:00-08:00   a ClockRange (may wrap past midnight)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

MAX_DURATION = timedelta(days=3660)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_UNIT_WORDS = {
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
    "week": "w",
    "weeks": "w",
}
_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_CAP = re.compile(r"^\s*(\d+)\s+per\s+(.+?)\s*$")
_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")

_UNIT_CHOICES = "|".join(sorted([*UNIT_SECONDS, *_UNIT_WORDS], key=len, reverse=True))
DURATION_PATTERN = rf"^\s*\d+\s*({_UNIT_CHOICES})\s*$"
CAP_PATTERN = rf"^\s*\d+\s+per\s+\d+\s*({_UNIT_CHOICES})\s*$"
CLOCK_RANGE_PATTERN = r"^([01]?\d|2[0-3]):[0-5]\d-([01]?\d|2[0-3]):[0-5]\d$"


def parse_duration(value: Any) -> timedelta:
    """Read `30m`, `2h`, `14d`, `2w` (or `14 days`) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("write a duration such as `30m`, `2h`, `14d` or `2w`")
    match = _DURATION.match(value.lower())
    unit = _UNIT_WORDS.get(match.group(2), match.group(2)) if match else None
    if match is None or unit not in UNIT_SECONDS:
        raise ValueError(
            f"`{value}` is not a duration; write `30m`, `2h`, `14d` or `2w`"
        )
    seconds = int(match.group(1)) * UNIT_SECONDS[unit]
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"`{value}` is longer than ten years; write a shorter one")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A marketer's spelling of `value` in its largest whole unit up to days.

    Weeks are left out so that `14d` reads back as `14d`, as it was written.
    """
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def humanize_duration(value: timedelta) -> str:
    """`14 days`, `1 hour`, `90 minutes`: for copy that a recipient reads."""
    text = format_duration(value)
    count, unit = int(text[:-1]), text[-1]
    word = {"d": "day", "h": "hour", "m": "minute", "s": "second"}[unit]
    return f"{count} {word}" + ("" if count == 1 else "s")


def parse_percentage(value: Any) -> float:
    """Read `10%` as 10.0; a bare number is taken as already in percent."""
    if isinstance(value, bool):
        raise ValueError("write a percentage such as `10%`")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _PERCENT.match(str(value))
        if match is None:
            raise ValueError(f"`{value}` is not a percentage; write it as `10%`")
        number = float(match.group(1))
    if not 0 <= number <= 100:
        raise ValueError(f"{number:g}% is out of range; write 0% to 100%")
    return number


@dataclass(frozen=True, order=True)
class Cap:
    """At most `count` in any sliding `window`."""

    count: int
    window: timedelta

    def __str__(self) -> str:
        return f"{self.count} per {format_duration(self.window)}"

    def never_binds_beside(self, other: Cap) -> bool:
        """True when `other` always stops sends before this cap could.

        A cap over a window no longer than `other`'s that allows at least as many
        is never the one that holds a send back.
        """
        return self.window <= other.window and self.count >= other.count


def parse_cap(value: Any) -> Cap:
    """Read `3 per 7d` as Cap(3, 7 days)."""
    if isinstance(value, Cap):
        return value
    match = _CAP.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"`{value}` is not a cap; write it as `1 per 14d`")
    return Cap(int(match.group(1)), parse_duration(match.group(2)))


@dataclass(frozen=True)
class ClockRange:
    """A daily range of wall-clock time; `end` before `start` wraps past midnight."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @property
    def wraps(self) -> bool:
        return self.end <= self.start

    def contains(self, moment: time) -> bool:
        if self.wraps:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end

    def covers(self, other: ClockRange) -> bool:
        """True when every minute of `other` falls inside this range."""
        minutes = _minutes_of(other)
        return all(self.contains(time(m // 60, m % 60)) for m in minutes)


def _minutes_of(span: ClockRange) -> list[int]:
    start = span.start.hour * 60 + span.start.minute
    end = span.end.hour * 60 + span.end.minute
    length = (end - start) % 1440 or 1440
    return [(start + step) % 1440 for step in range(length)]


def parse_clock_range(value: Any) -> ClockRange:
    """Read `20:00-08:00` (quote it or not: referloop reads YAML 1.2)."""
    if isinstance(value, ClockRange):
        return value
    parts = str(value).split("-") if isinstance(value, str) else []
    clocks = [_CLOCK.match(part) for part in parts]
    if len(clocks) != 2 or not all(clocks):
        raise ValueError(f"`{value}` is not a range of hours; write `20:00-08:00`")
    start, end = (time(int(m.group(1)), int(m.group(2))) for m in clocks if m)
    if start == end:
        raise ValueError(f"`{value}` is empty; the start and end must differ")
    return ClockRange(start, end)


def _as_text(value: object) -> str:
    return str(value) if not isinstance(value, timedelta) else format_duration(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_as_text, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["2h", "14d"]}
    ),
]
Percentage = Annotated[
    float,
    BeforeValidator(parse_percentage),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$"},
                {"type": "number", "minimum": 0, "maximum": 100},
            ],
            "examples": ["10%"],
        }
    ),
]
CAP_JSON_SCHEMA = {"type": "string", "pattern": CAP_PATTERN, "examples": ["1 per 14d"]}
CapValue = Annotated[
    Cap,
    BeforeValidator(parse_cap),
    PlainSerializer(_as_text, return_type=str),
    WithJsonSchema(CAP_JSON_SCHEMA),
]
ClockRangeValue = Annotated[
    ClockRange,
    BeforeValidator(parse_clock_range),
    PlainSerializer(_as_text, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": CLOCK_RANGE_PATTERN, "examples": ["20:00-08:00"]}
    ),
]

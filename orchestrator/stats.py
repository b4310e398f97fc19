"""The statistics of lift: intervals for proportions and their differences, a
bootstrap for ratios of sums, the sample size a difference needs, and verdicts.

- A proportion gets Wilson's score interval: unlike the textbook normal
  interval, it stays inside [0, 1] and keeps its coverage with few successes.
- A difference of two proportions gets Newcombe's hybrid score interval (his
  method 10), built from the two Wilson intervals: it covers close to 95% even
  when a rate is near 0, as invite rates are.
- The K-factor is a ratio of sums over users (activated invitees per user), so
  its difference gets a percentile bootstrap that resamples users within each arm.

Closed forms on floats for the intervals; the bootstrap is seeded, so a report
is the same every time it is made from the same events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy

Z95 = NormalDist().inv_cdf(0.975)
POWER = 0.8
BOOTSTRAP_SAMPLES = 2_000
# Below this many users in an arm, or this many successes or failures, an
# interval says little: the result is flagged as a small sample.
SMALL_ARM = 100
SMALL_COUNT = 5

Verdict = Literal[
    "lift", "harm", "not distinguishable yet", "too few users yet", "no data"
]


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """Wilson's score interval for `successes` out of `trials`."""
    if trials <= 0:
        return Interval(math.nan, 0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    half /= denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return Interval(p, low, high)


def newcombe(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = Z95
) -> Interval:
    """Newcombe's hybrid score interval for p_a - p_b."""
    if trials_a <= 0 or trials_b <= 0:
        return Interval(math.nan, -1.0, 1.0)
    a, b = wilson(successes_a, trials_a, z), wilson(successes_b, trials_b, z)
    difference = a.estimate - b.estimate
    low = difference - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = difference + math.sqrt(
        (a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2
    )
    return Interval(difference, max(-1.0, low), min(1.0, high))


Units = Mapping[tuple[int, int], int]


def bootstrap_ratio_difference(
    units_a: Units,
    units_b: Units,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 20261204,
) -> Interval:
    """Percentile bootstrap of sum(num)/sum(den) in arm a minus the same in arm b.

    Each unit (a user) is a (numerator, denominator) pair; an arm is given as
    how many of its units have each pair. Units are resampled with replacement
    within their arm. Users share few distinct
    pairs (counts of invites are small numbers), so a resample of n users is a
    multinomial draw over the distinct pairs: the same distribution as drawing
    users one by one, at the cost of the pairs, not of the users.
    """
    if not units_a or not units_b:
        return Interval(math.nan, math.nan, math.nan)
    estimate = _ratio(units_a) - _ratio(units_b)
    rng = numpy.random.default_rng(seed)
    draws = _resample_ratios(rng, units_a, samples) - _resample_ratios(
        rng, units_b, samples
    )
    kept = draws[~numpy.isnan(draws)]
    if kept.size == 0:
        return Interval(estimate, math.nan, math.nan)
    low, high = numpy.quantile(kept, [0.025, 0.975])
    return Interval(estimate, float(low), float(high))


def users_needed(p_treated: float, p_control: float) -> int | None:
    """Users per arm to tell these two rates apart (two-sided 5%, 80% power).

    None when they are equal (no sample tells them apart) or not rates.
    """
    if any(math.isnan(p) for p in (p_treated, p_control)):
        return None
    difference = abs(p_treated - p_control)
    if difference == 0:
        return None
    z_power = NormalDist().inv_cdf(POWER)
    pooled = (p_treated + p_control) / 2
    spread = Z95 * math.sqrt(2 * pooled * (1 - pooled)) + z_power * math.sqrt(
        p_treated * (1 - p_treated) + p_control * (1 - p_control)
    )
    return math.ceil(spread**2 / difference**2)


def users_needed_ratio(units_a: Units, units_b: Units) -> int | None:
    """Users per arm to tell two ratios of sums apart (two-sided 5%, 80% power).

    By the delta method: a user's part in sum(num)/sum(den) varies as
    num - ratio x den does, over the mean denominator. None when the ratios are
    equal, or an arm has fewer than two users or no denominator.
    """
    spreads = []
    ratios = []
    for units in (units_a, units_b):
        users = sum(units.values())
        denominator = sum(den * n for (_, den), n in units.items())
        if users < 2 or denominator == 0:
            return None
        ratio = sum(num * n for (num, _), n in units.items()) / denominator
        mean_den = denominator / users
        squares = sum(n * (num - ratio * den) ** 2 for (num, den), n in units.items())
        spreads.append(squares / (users - 1) / mean_den**2)
        ratios.append(ratio)
    difference = abs(ratios[0] - ratios[1])
    if difference == 0:
        return None
    z_power = NormalDist().inv_cdf(POWER)
    return math.ceil((Z95 + z_power) ** 2 * sum(spreads) / difference**2)


def verdict(interval: Interval, has_data: bool, small: bool = False) -> Verdict:
    """What an interval of nudged minus holdout says, in words.

    A small sample is never called a lift or a harm: its interval is shown,
    but the verdict waits for more users.
    """
    if not has_data or math.isnan(interval.low) or math.isnan(interval.high):
        return "no data"
    if small:
        return "too few users yet"
    if interval.low > 0:
        return "lift"
    if interval.high < 0:
        return "harm"
    return "not distinguishable yet"


def is_small(trials: int, successes: int) -> bool:
    """Whether an arm is too small for its interval to mean much."""
    failures = trials - successes
    return trials < SMALL_ARM or successes < SMALL_COUNT or failures < SMALL_COUNT


def _ratio(units: Units) -> float:
    total = sum(den * n for (_, den), n in units.items())
    return sum(num * n for (num, _), n in units.items()) / total if total else math.nan


def _resample_ratios(
    rng: numpy.random.Generator, units: Units, samples: int
) -> numpy.ndarray:
    pairs = numpy.array(list(units), dtype=float)
    weights = numpy.array(list(units.values()), dtype=float)
    size = int(weights.sum())
    counts = rng.multinomial(size, weights / weights.sum(), size=samples)
    numerators = counts @ pairs[:, 0]
    denominators = counts @ pairs[:, 1]
    with numpy.errstate(invalid="ignore", divide="ignore"):
        return numpy.where(denominators > 0, numerators / denominators, numpy.nan)

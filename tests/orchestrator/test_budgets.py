"""Vendor budgets: GCRA pacing shared by every worker, and concurrent-call slots."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.budgets import (
    Budget,
    Slots,
    vendor_budgets,
    vendor_caps,
    with_headroom,
)
from orchestrator.errors import ConfigurationError
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap

FIVE_PER_SECOND = parse_cap("5 per 1s")


def _fixed_window(cap: Cap) -> Any:
    """Dramatiq-style fixed windows: a counter that resets at each boundary."""
    window_ms = int(cap.window.total_seconds() * 1000)
    counts: dict[int, int] = {}

    def acquire(now: int) -> int:
        slot = now // window_ms
        if counts.get(slot, 0) < cap.count:
            counts[slot] = counts.get(slot, 0) + 1
            return 0
        return (slot + 1) * window_ms - now

    return acquire


def _busiest_window(times: list[int], window_ms: int) -> int:
    """The most acquisitions in any window (t - window, t]."""
    return max(sum(t - window_ms < s <= t for s in times) for t in times)


def _serve(acquire: Any, arrivals: list[int]) -> list[int]:
    """Requests arriving at these times, each sent as soon as the budget says.

    A request that is told to wait comes back exactly when told, and must then go.
    """
    taken, now = [], 0
    for arrival in sorted(arrivals):
        now = max(now, arrival)
        wait = acquire(now)
        if wait:
            now += wait
            assert acquire(now) == 0, f"told to wait {wait} ms, still refused"
        taken.append(now)
    return taken


# Ten requests just before a window boundary, a trickle, then a burst at 7.999 s.
ARRIVALS = [999] * 10 + list(range(3000, 6000, 50)) + [7999] * 10


@pytest.mark.parametrize("burst", [1, 3, 5])
def test_no_window_ever_holds_more_than_the_budget(store: Store, burst: int) -> None:
    """Requests bunched at a window boundary never put more than 5 into any one
    second.

    The contrast: a fixed-window counter (Dramatiq's limiters) sends 5 at 999 ms
    and 5 more at 1000 ms, 10 within two milliseconds, twice the budget.
    """
    budget = Budget(store, "intercom", FIVE_PER_SECOND, burst=burst)

    taken = _serve(budget.acquire, ARRIVALS)
    fixed = _serve(_fixed_window(FIVE_PER_SECOND), ARRIVALS)

    assert _busiest_window(taken, 1000) <= 5
    assert _busiest_window(fixed, 1000) == 10


_BUDGET_NAMES = iter(range(1_000_000))


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    arrivals=st.lists(st.integers(0, 20_000), min_size=1, max_size=60),
    count=st.integers(1, 8),
    window_ms=st.integers(1, 5000),
    data=st.data(),
)
def test_no_window_holds_more_than_the_budget_whatever_the_traffic(
    store: Store, arrivals: list[int], count: int, window_ms: int, data: st.DataObject
) -> None:
    """For any arrivals, budget and burst, every wait is exact and no window of
    the budget's length ever holds more than its count."""
    cap = Cap(count, timedelta(milliseconds=window_ms))
    burst = data.draw(st.integers(1, count))
    budget = Budget(store, f"vendor-{next(_BUDGET_NAMES)}", cap, burst=burst)

    taken = _serve(budget.acquire, arrivals)

    assert _busiest_window(taken, window_ms) <= count


def test_an_even_pace_uses_the_whole_budget(store: Store) -> None:
    """Without bursts, `5 per 1s` sends 51 queued requests one every 200 ms."""
    budget = Budget(store, "intercom", FIVE_PER_SECOND)

    taken = _serve(budget.acquire, [0] * 51)

    assert taken == list(range(0, 10_001, 200))


def test_a_burst_goes_at_once_then_the_pace_slows(store: Store) -> None:
    """With `burst=3`, three go at once; then one per 333.334 ms (1000/3, rounded
    up to the microsecond; waits round up to the millisecond) keeps every second
    at five at most."""
    budget = Budget(store, "intercom", FIVE_PER_SECOND, burst=3)

    taken = _serve(budget.acquire, [0] * 9)

    assert taken == [0, 0, 0, 334, 667, 1001, 1334, 1667, 2001]


def test_the_wait_is_exact_and_takes_nothing(store: Store) -> None:
    """The wait says when the next request may go; asking again while waiting
    does not push it further back."""
    budget = Budget(store, "braze", FIVE_PER_SECOND, burst=3)
    burst = [budget.acquire(t) for t in (0, 0, 0)]

    first_wait = budget.acquire(50)
    second_wait = budget.acquire(50)
    early = budget.acquire(50 + first_wait - 1)
    on_time = budget.acquire(50 + first_wait)

    assert burst == [0, 0, 0]
    assert 284 == first_wait == second_wait  # 1000 / 3 = 333.334 ms, less 50
    assert early == 1
    assert on_time == 0


def test_workers_share_one_budget_by_name(store: Store) -> None:
    """Two workers holding their own `Budget` for one vendor draw on one budget."""
    first = Budget(store, "mixpanel", parse_cap("60 per 1h"))
    second = Budget(store, "mixpanel", parse_cap("60 per 1h"))

    taken = first.acquire(0)
    wait = second.acquire(1000)

    assert taken == 0
    assert wait == 59_000


def test_the_server_clock_is_used_without_a_time(store: Store) -> None:
    """Without `now_ms` the Redis server's clock decides, as for workers on many
    machines."""
    budget = Budget(store, "customerio-broadcasts", parse_cap("1 per 1h"))

    taken = budget.acquire()
    wait = budget.acquire()

    assert taken == 0
    assert 3_595_000 < wait <= 3_600_000


@pytest.mark.parametrize(
    ("cap", "burst"), [("0 per 1s", 1), ("5 per 1s", 0), ("5 per 1s", 6)]
)
def test_a_budget_that_cannot_work_is_refused(
    store: Store, cap: str, burst: int
) -> None:
    """A budget of nothing, or a burst beyond the budget, is a mistake."""
    with pytest.raises(ValueError, match="budget"):
        Budget(store, "braze", parse_cap(cap), burst=burst)


def test_reserved_slots_are_handed_out_in_order(store: Store) -> None:
    """Callers willing to wait each get their own slot, 200 ms apart, instead of
    racing for the same opening."""
    budget = Budget(store, "intercom", FIVE_PER_SECOND)

    grants = [budget.reserve(1000, now_ms=0) for _ in range(7)]

    assert [g.granted for g in grants] == [True] * 6 + [False]
    assert [g.wait_ms for g in grants] == [0, 200, 400, 600, 800, 1000, 1200]


def test_a_refused_reservation_takes_nothing(store: Store) -> None:
    budget = Budget(store, "braze", FIVE_PER_SECOND)
    budget.reserve(0, now_ms=0)

    refused = [budget.reserve(100, now_ms=0) for _ in range(3)]

    assert {(g.granted, g.wait_ms) for g in refused} == {(False, 200)}
    assert budget.reserve(0, now_ms=200).granted


def test_holding_off_makes_every_worker_wait(store: Store) -> None:
    """A 429 seen by one worker pushes the next slot back for all of them."""
    first = Budget(store, "intercom", FIVE_PER_SECOND)
    second = Budget(store, "intercom", FIVE_PER_SECOND)

    first.hold_off(2_000)
    grant = second.reserve(0)

    assert not grant.granted
    assert 1_900 < grant.wait_ms <= 2_000


def test_holding_off_never_brings_a_slot_forward(store: Store) -> None:
    budget = Budget(store, "braze", parse_cap("1 per 1h"))
    budget.reserve(0)

    budget.hold_off(10)

    assert budget.reserve(0).wait_ms > 3_500_000


def test_waiting_for_a_slot_sleeps_until_it_opens(store: Store) -> None:
    budget = Budget(store, "customerio", parse_cap("10 per 1s"))
    budget.reserve(0)

    started = time.monotonic()
    grant = budget.wait_for_slot(1_000)

    assert grant.granted
    assert time.monotonic() - started >= grant.wait_ms / 1000 >= 0.05


def test_slots_bound_calls_at_once_across_workers(store: Store) -> None:
    """Eight threads sharing five slots never hold more than five at once."""
    slots = [Slots(store, "mixpanel-query", 5, lease=timedelta(seconds=30))] * 8
    busiest, running, lock = [0], [0], threading.Lock()

    def call(holder: Slots) -> None:
        for _ in range(5):
            with holder.held(max_wait_s=5) as got:
                assert got
                with lock:
                    running[0] += 1
                    busiest[0] = max(busiest[0], running[0])
                time.sleep(0.01)
                with lock:
                    running[0] -= 1

    threads = [threading.Thread(target=call, args=(s,)) for s in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert busiest[0] == 5
    assert slots[0].in_use() == 0


def test_a_slot_left_by_a_dead_worker_comes_back_after_its_lease(store: Store) -> None:
    slots = Slots(store, "mixpanel-query", 1, lease=timedelta(milliseconds=100))
    assert slots.try_take() is not None  # never given back

    assert slots.try_take() is None
    time.sleep(0.15)
    assert slots.try_take() is not None


def test_no_slot_within_the_wait_says_so(store: Store) -> None:
    slots = Slots(store, "mixpanel-query", 1, lease=timedelta(seconds=30))
    holder = slots.try_take()

    with slots.held(max_wait_s=0.1) as got:
        assert not got
    slots.give_back(str(holder))
    with slots.held(max_wait_s=0.1) as got:
        assert got


def test_a_vendor_failing_again_and_again_pauses_every_worker(store: Store) -> None:
    """Five failures within the window, counted across workers, trip the breaker:
    no slot opens for the pause; fewer failures change nothing."""
    first = Budget(store, "braze", FIVE_PER_SECOND)
    second = Budget(store, "braze", FIVE_PER_SECOND)

    tripped = [
        budget.failed(trips_at=5, pause_ms=3_000)
        for budget in (first, second, first, second, first)
    ]
    grant = second.reserve(0)

    assert tripped == [False, False, False, False, True]
    assert not grant.granted
    assert 2_900 < grant.wait_ms <= 3_000


def test_failures_spread_wider_than_the_window_never_trip(store: Store) -> None:
    budget = Budget(store, "intercom", FIVE_PER_SECOND)

    for _ in range(4):
        assert not budget.failed(trips_at=5, window_ms=50)
    time.sleep(0.1)
    tripped = budget.failed(trips_at=5, window_ms=50)

    assert not tripped
    assert budget.reserve(0).granted


def test_a_vendors_budgets_are_its_defaults_with_overrides_laid_over() -> None:
    defaults = {
        "braze:messaging": parse_cap("250000 per 1h"),
        "braze:x": FIVE_PER_SECOND,
    }

    caps = vendor_caps("Braze", defaults, {"braze:x": parse_cap("1 per 1s")})

    assert caps == {
        "braze:messaging": parse_cap("245000 per 1h"),  # paced 2% under the limit
        "braze:x": parse_cap("1 per 1s"),
    }


def test_a_budget_the_vendor_does_not_have_is_named_with_those_it_has() -> None:
    with pytest.raises(ConfigurationError) as refused:
        vendor_caps(
            "Braze", {"braze:messaging": FIVE_PER_SECOND}, {"braze:y": FIVE_PER_SECOND}
        )

    assert (
        str(refused.value)
        == "Braze has no budget braze:y; its budgets are braze:messaging"
    )


def test_without_a_store_no_budget_is_shared(store: Store) -> None:
    defaults = {"braze:messaging": FIVE_PER_SECOND}

    assert vendor_budgets(None, "Braze", defaults, None) == {}
    shared = vendor_budgets(store, "Braze", defaults, None)
    assert shared["braze:messaging"].cap == FIVE_PER_SECOND


@pytest.mark.parametrize(
    ("limit", "paced"),
    [
        ("250000 per 1h", "245000 per 1h"),
        ("10000 per 1m", "9800 per 1m"),
        ("3000 per 3s", "2940 per 3s"),
        ("100 per 1s", "98 per 1s"),
        ("99 per 1s", "99 per 1s"),
        ("60 per 1h", "60 per 1h"),
        ("1 per 10s", "1 per 10s"),
    ],
)
def test_large_budgets_keep_a_little_headroom_below_the_limit(
    limit: str, paced: str
) -> None:
    assert with_headroom(parse_cap(limit)) == parse_cap(paced)

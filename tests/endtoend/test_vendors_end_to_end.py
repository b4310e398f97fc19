"""Playbooks to vendors and back, through a real worker process and the simulator.

A cohort is read from the simulated Mixpanel's Engage API, decided, and each
entered user is nudged through the playbook's vendor; referloop's own events then
go to Mixpanel's import. Then the hard cases: a vendor down for a minute, and a
vendor answering 429 because the workers go faster than it allows.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vendor_rig import SIGNING_KEY, members, running_workers, write_playbooks

from simulator import Fault, Limit, Received, Simulator, all_vendors
from simulator.env import vendor_env
from simulator.mixpanel import MixpanelSim

SEND_PATHS = {
    "customerio": "/api/v1/customers/{user}/events",
    "braze": "/campaigns/trigger/send",
    "intercom": "/messages",
    "webhook": "/nudges",
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(all_vendors()) as running:
        yield running


def _sends(sim: Simulator, vendor: str) -> list[Received]:
    """The requests that delivered a nudge to `vendor`, whatever their answer."""
    path = SEND_PATHS[vendor]
    if "{user}" in path:
        prefix, suffix = path.split("{user}")
        return [
            r
            for r in sim.received(vendor)
            if r.path.startswith(prefix) and r.path.endswith(suffix)
        ]
    return sim.received(vendor, path)


def _taken_by_user(sim: Simulator, vendor: str) -> collections.Counter[str]:
    """How many times `vendor` took a nudge (2xx) for each user."""
    taken: collections.Counter[str] = collections.Counter()
    for received in _sends(sim, vendor):
        if received.status is None or not 200 <= received.status < 300:
            continue
        taken[_user_of(vendor, received)] += 1
    return taken


def _user_of(vendor: str, received: Received) -> str:
    body = received.json or {}
    if vendor == "customerio":
        return received.path.split("/")[4]
    if vendor == "braze":
        return str(body["recipients"][0]["external_user_id"])
    if vendor == "intercom":
        return str(body["to"]["id"])
    return str(body["user_id"])


def test_a_playbook_per_vendor_sends_through_it_and_reports_to_mixpanel(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    """Thirty members of each of four cohorts, one playbook per vendor: every
    member is nudged once through that vendor, the ledger says sent for each,
    and Mixpanel receives one `nudge sent` event per delivery."""
    channels = ("customerio", "braze", "intercom", "webhook")
    cohorts = {channel: f"mixpanel:{801 + n}" for n, channel in enumerate(channels)}
    mixpanel = sim.vendor("mixpanel")
    assert isinstance(mixpanel, MixpanelSim)
    for channel, cohort in cohorts.items():
        mixpanel.cohorts[cohort.split(":")[1]] = members(channel, 30)
    write_playbooks(tmp_path / "playbooks", cohorts)

    with running_workers(
        redis_url, sim, tmp_path / "playbooks", log=tmp_path / "worker"
    ) as run:
        for cohort in cohorts.values():
            run.poll(cohort)
        assert run.wait_for(lambda: run.ledger.counts().get("sent") == 120, 90)
        run.declared.export_events.send("slot-1")
        assert run.wait_for(lambda: len(mixpanel.imported) >= 120, 30)

    for channel in channels:
        taken = _taken_by_user(sim, channel)
        assert len(taken) == 30, channel
        assert set(taken.values()) == {1}, channel
    names = collections.Counter(event["event"] for event in mixpanel.imported.values())
    assert names == {"referloop nudge sent": 120}
    log = "".join(path.read_text() for path in tmp_path.glob("worker.*.log"))
    for secret in (SIGNING_KEY, *vendor_env(sim).values()):
        if "http" not in secret and not secret.isdigit():
            assert secret not in log


def test_a_vendor_down_for_a_minute_delays_and_loses_nothing(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    """Braze answers 503 to everything for a minute. Every delivery waits,
    retries within its bound, and goes out once when Braze is back; none is
    dead-lettered or sent twice."""
    mixpanel = sim.vendor("mixpanel")
    assert isinstance(mixpanel, MixpanelSim)
    mixpanel.cohorts["901"] = members("down", 40)
    write_playbooks(tmp_path / "playbooks", {"braze": "mixpanel:901"})

    with running_workers(redis_url, sim, tmp_path / "playbooks") as run:
        sim.fault("braze", Fault.answer(503))
        outage_began = time.monotonic()
        run.poll("mixpanel:901")
        time.sleep(60)
        sim.clear_faults("braze")
        back = time.monotonic()
        assert run.wait_for(lambda: run.ledger.counts().get("sent") == 40, 240)
        recovered_s = time.monotonic() - back

    taken = _taken_by_user(sim, "braze")
    attempts = len(_sends(sim, "braze"))
    counts = run.ledger.counts()
    print(
        f"outage: 40 deliveries, {attempts} requests "
        f"({attempts / 40:.1f} per delivery), all sent {recovered_s:.0f} s after "
        f"Braze came back ({back - outage_began:.0f} s outage)"
    )
    assert len(taken) == 40
    assert set(taken.values()) == {1}
    assert counts.get("dead", 0) == 0
    assert run.ledger.dead_letters() == []
    assert attempts / 40 <= 6  # retries stay within the actor's bound


def test_a_429_storm_slows_the_workers_to_the_vendors_pace(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    """Intercom allows 20 calls a second, but the workspace's budget says 10,000
    a minute. Two workers answer the 429s by holding every worker's budget off,
    so the vendor is not hammered: few requests are refused, each delivery goes
    out once, and none is dead-lettered."""
    mixpanel = sim.vendor("mixpanel")
    assert isinstance(mixpanel, MixpanelSim)
    mixpanel.cohorts["902"] = members("storm", 200)
    sim.set_limits("intercom", [Limit("app", 20, 1.0)])
    write_playbooks(tmp_path / "playbooks", {"intercom": "mixpanel:902"})

    with running_workers(redis_url, sim, tmp_path / "playbooks", workers=2) as run:
        started = time.monotonic()
        run.poll("mixpanel:902")
        assert run.wait_for(lambda: run.ledger.counts().get("sent") == 200, 180)
        took_s = time.monotonic() - started

    calls = sim.received("intercom")
    refused = sum(1 for r in calls if r.status == 429)
    taken = _taken_by_user(sim, "intercom")
    print(
        f"429 storm: 200 deliveries in {took_s:.0f} s, {len(calls)} calls, "
        f"{refused} answered 429 ({refused / len(calls):.0%})"
    )
    assert len(taken) == 200
    assert set(taken.values()) == {1}
    assert run.ledger.dead_letters() == []
    # 400 calls were needed (a contact search and a message each); hammering
    # would add a 429 for every delivery every second it waited.
    assert refused <= 200

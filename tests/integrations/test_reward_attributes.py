"""Grants as profile attributes: what Customer.io and Braze receive, set and never
incremented, so a grant sent again changes nothing more."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.base import GrantRequest
from integrations.braze import BrazeSender
from integrations.customerio import CustomerIOChannel
from orchestrator.rewards import attribute_rewards
from simulator import Simulator, braze
from simulator.braze import BrazeSim
from simulator.customerio import CustomerIOSim

SEATS = GrantRequest(
    idempotency_key="gr_0123",
    playbook_id="pack-reviewers",
    user_id="u-ref",
    account_id="acct-1",
    grant="guest_seats",
    amount=2,
)
REPORTING = GrantRequest(
    idempotency_key="gr_4567",
    playbook_id="pack-reviewers",
    user_id="u-ref",
    account_id="acct-1",
    grant="advanced_reporting",
    for_s=90 * 86_400,
)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([CustomerIOSim(), BrazeSim()]) as running:
        yield running


def test_customerio_gets_the_grant_as_attributes_of_the_person(sim: Simulator):
    url = sim.url("customerio")
    sender = CustomerIOChannel(
        app_url=url,
        track_url=url,
        app_api_key=CustomerIOSim.APP_API_KEY,
        site_id=CustomerIOSim.SITE_ID,
        track_api_key=CustomerIOSim.TRACK_API_KEY,
    )
    target = attribute_rewards("customerio", sender)
    assert target is not None
    try:
        target.grant(SEATS)
        target.grant(SEATS)
        target.grant(REPORTING)
    finally:
        sender.close()

    bodies = [r.json for r in sim.received("customerio") if r.request.method == "PUT"]
    paths = {r.path for r in sim.received("customerio")}
    assert all(path.endswith("/customers/u-ref") for path in paths)
    assert (
        bodies[0]
        == bodies[1]
        == {
            "referloop_guest_seats": 2,
            "referloop_last_grant": "gr_0123",
        }
    )
    assert bodies[2]["referloop_advanced_reporting"] is True
    assert bodies[2]["referloop_advanced_reporting_until"] > 0


def test_braze_gets_the_grant_as_custom_attributes(sim: Simulator):
    sender = BrazeSender(braze.API_KEY, sim.url("braze"))
    target = attribute_rewards("braze", sender)
    assert target is not None
    try:
        target.grant(SEATS)
    finally:
        sender.close()

    (request,) = sim.received("braze", "/users/track")
    assert 200 <= (request.status or 0) < 300
    assert request.json["attributes"] == [
        {
            "external_id": "u-ref",
            "referloop_guest_seats": 2,
            "referloop_last_grant": "gr_0123",
        }
    ]

"""The simulated Mixpanel and adapters built against it, for the Mixpanel tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest

from integrations.mixpanel import MixpanelAdapter
from simulator import Simulator
from simulator.mixpanel import SIM_PROJECT_ID, SIM_SECRET, SIM_USERNAME, MixpanelSim

AdapterFactory = Callable[..., MixpanelAdapter]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([MixpanelSim()]) as running:
        yield running


@pytest.fixture
def mixpanel(sim: Simulator) -> MixpanelSim:
    """The simulated Mixpanel, with nothing received, seeded or limited yet."""
    sim.reset()
    vendor = cast(MixpanelSim, sim.vendor("mixpanel"))
    vendor.clear()
    return vendor


@pytest.fixture
def adapter_for(sim: Simulator, mixpanel: MixpanelSim) -> Iterator[AdapterFactory]:
    """Build adapters against the simulator; settings given replace the defaults."""
    built: list[MixpanelAdapter] = []

    def build(**settings: Any) -> MixpanelAdapter:
        url = sim.url("mixpanel")
        options: dict[str, Any] = {
            "query_url": url,
            "ingestion_url": url,
            "timeout": httpx.Timeout(3.0),
            **settings,
        }
        username = options.pop("username", SIM_USERNAME)
        secret = options.pop("secret", SIM_SECRET)
        project_id = options.pop("project_id", SIM_PROJECT_ID)
        adapter = MixpanelAdapter(username, secret, project_id, **options)
        built.append(adapter)
        return adapter

    yield build
    for adapter in built:
        adapter.close()

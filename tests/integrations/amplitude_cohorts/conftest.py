"""The simulated Amplitude Dashboard API and cohort sources built against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest

from integrations.amplitude_cohorts import AmplitudeCohorts
from orchestrator.state import Store
from simulator import Simulator
from simulator.amplitude_cohorts import (
    SIM_API_KEY,
    SIM_SECRET_KEY,
    AmplitudeCohortsSim,
)

SourceFactory = Callable[..., AmplitudeCohorts]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([AmplitudeCohortsSim()]) as running:
        yield running


@pytest.fixture
def amplitude(sim: Simulator) -> AmplitudeCohortsSim:
    """The simulated Amplitude, with nothing received or seeded yet."""
    sim.reset()
    vendor = cast(AmplitudeCohortsSim, sim.vendor("amplitude-dashboard"))
    vendor.clear()
    return vendor


@pytest.fixture
def source_for(
    sim: Simulator, amplitude: AmplitudeCohortsSim, store: Store
) -> Iterator[SourceFactory]:
    """Build sources against the simulator; settings given replace the defaults."""
    built: list[AmplitudeCohorts] = []

    def build(**settings: Any) -> AmplitudeCohorts:
        options: dict[str, Any] = {
            "base_url": sim.url("amplitude-dashboard"),
            "timeout": httpx.Timeout(3.0),
            "first_poll_s": 0.01,
            "poll_wait_s": 1.0,
            # Every call at once: the budget tests set their own.
            "burst": 60,
            **settings,
        }
        api_key = options.pop("api_key", SIM_API_KEY)
        secret_key = options.pop("secret_key", SIM_SECRET_KEY)
        source = AmplitudeCohorts(api_key, secret_key, store, **options)
        built.append(source)
        return source

    yield build
    for source in built:
        source.close()

"""The simulated Amplitude and sinks built against it, for the Amplitude tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest

from integrations.amplitude import AmplitudeSink
from simulator import Simulator
from simulator.amplitude import API_KEY, AmplitudeSim

SinkFactory = Callable[..., AmplitudeSink]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([AmplitudeSim()]) as running:
        yield running


@pytest.fixture
def amplitude(sim: Simulator) -> AmplitudeSim:
    """The simulated Amplitude, with nothing received or kept yet."""
    sim.reset()
    vendor = cast(AmplitudeSim, sim.vendor("amplitude"))
    vendor.clear()
    return vendor


@pytest.fixture
def sink_for(sim: Simulator, amplitude: AmplitudeSim) -> Iterator[SinkFactory]:
    """Build sinks against the simulator; settings given replace the defaults."""
    built: list[AmplitudeSink] = []

    def build(**settings: Any) -> AmplitudeSink:
        options: dict[str, Any] = {
            "base_url": sim.url("amplitude"),
            "timeout": httpx.Timeout(3.0),
            **settings,
        }
        sink = AmplitudeSink(options.pop("api_key", API_KEY), **options)
        built.append(sink)
        return sink

    yield build
    for sink in built:
        sink.close()

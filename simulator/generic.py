"""A vendor with no opinions: any path, any credentials, `200 {"id": ...}`.

The conformance suite points adapters installed from other packages at it, since
the simulator cannot know their vendor's API; faults and latency still apply, so
the suite can show how such an adapter maps them.
"""

from __future__ import annotations

import itertools

from simulator.core import SimRequest, SimResponse, VendorSim


class GenericSim(VendorSim):
    name = "generic"

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    def handle(self, request: SimRequest) -> SimResponse:
        with self.lock:
            number = next(self._ids)
        return SimResponse(200, {"id": f"generic-{number}"})

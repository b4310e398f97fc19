"""A local stand-in for the vendors, answering over real HTTP on loopback.

Tests and benchmarks point the adapters at it instead of Customer.io, Braze,
Intercom, Mixpanel and Amplitude. Each vendor answers on its own path prefix with
the vendor's paths, auth checks, bodies and rate limits; faults are switched on per
test; every request is recorded so that tests assert on what went over the wire.
"""

from simulator.core import (
    Fault,
    Limit,
    Received,
    SimRequest,
    SimResponse,
    Simulator,
    VendorSim,
)


def all_vendors() -> list[VendorSim]:
    """One simulated vendor of each kind referloop speaks to, freshly made."""
    from simulator.amplitude import AmplitudeSim
    from simulator.amplitude_cohorts import AmplitudeCohortsSim
    from simulator.braze import BrazeSim
    from simulator.customerio import CustomerIOSim
    from simulator.intercom import IntercomSim
    from simulator.mixpanel import MixpanelSim
    from simulator.product import ProductSim

    return [
        CustomerIOSim(),
        BrazeSim(),
        IntercomSim(),
        MixpanelSim(),
        AmplitudeSim(),
        AmplitudeCohortsSim(),
        ProductSim(),
    ]


__all__ = [
    "Fault",
    "Limit",
    "Received",
    "SimRequest",
    "SimResponse",
    "Simulator",
    "VendorSim",
    "all_vendors",
]

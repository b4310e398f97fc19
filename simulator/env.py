"""The environment that points a referloop process at a running simulator.

Each vendor gets the simulator's URL for it and the fake credentials the
simulated vendor accepts, under the names `integrations.vendors` reads; a test or
a benchmark passes this to a worker subprocess, or to `referloop doctor`.
"""

from __future__ import annotations

from integrations.intercom import CONFORMANCE_TOKEN
from integrations.webhook import CONFORMANCE_SECRET
from simulator import amplitude, amplitude_cohorts, braze, mixpanel
from simulator.core import Simulator
from simulator.customerio import CustomerIOSim


def vendor_env(sim: Simulator) -> dict[str, str]:
    """Every vendor the simulator runs, configured to reach it."""
    env: dict[str, str] = {}
    if "customerio" in sim.vendors:
        url = sim.url("customerio")
        env |= {
            "CUSTOMERIO_APP_API_KEY": CustomerIOSim.APP_API_KEY,
            "CUSTOMERIO_SITE_ID": CustomerIOSim.SITE_ID,
            "CUSTOMERIO_TRACK_API_KEY": CustomerIOSim.TRACK_API_KEY,
            "CUSTOMERIO_APP_URL": url,
            "CUSTOMERIO_TRACK_URL": url,
        }
    if "braze" in sim.vendors:
        env |= {"BRAZE_API_KEY": braze.API_KEY, "BRAZE_REST_URL": sim.url("braze")}
    if "intercom" in sim.vendors:
        env |= {
            "INTERCOM_ACCESS_TOKEN": CONFORMANCE_TOKEN,
            "INTERCOM_URL": sim.url("intercom"),
        }
    if "mixpanel" in sim.vendors:
        url = sim.url("mixpanel")
        env |= {
            "MIXPANEL_SERVICE_ACCOUNT": mixpanel.SIM_USERNAME,
            "MIXPANEL_SERVICE_SECRET": mixpanel.SIM_SECRET,
            "MIXPANEL_PROJECT_ID": str(mixpanel.SIM_PROJECT_ID),
            "MIXPANEL_QUERY_URL": url,
            "MIXPANEL_INGESTION_URL": url,
            "MIXPANEL_EXPORT_URL": url,
        }
    if "amplitude" in sim.vendors:
        env |= {
            "AMPLITUDE_API_KEY": amplitude.API_KEY,
            "AMPLITUDE_HTTP_URL": sim.url("amplitude"),
        }
    if "amplitude-dashboard" in sim.vendors:
        env |= {
            "AMPLITUDE_API_KEY": amplitude.API_KEY,
            "AMPLITUDE_SECRET_KEY": amplitude_cohorts.SIM_SECRET_KEY,
            "AMPLITUDE_DASHBOARD_URL": sim.url("amplitude-dashboard"),
        }
    if "webhook" in sim.vendors:
        env |= {
            "WEBHOOK_BASE_URL": sim.url("webhook"),
            "WEBHOOK_SECRETS": CONFORMANCE_SECRET,
        }
    return env

"""What the vendor benchmarks share: the settings that point referloop at some of
the simulator's vendors, and a nudge to send through an adapter."""

from __future__ import annotations

from integrations import vendors
from integrations.base import Recipient, Reference, RenderedNudge
from simulator import Simulator
from simulator.env import vendor_env as every_vendor_env

INVITE_LINK = "https://app.example.com/invite?token=bench"


def vendor_env(sim: Simulator, names: tuple[str, ...]) -> dict[str, str]:
    """The environment variables of the named vendors only, pointing at the
    running simulator with the fake credentials it accepts: a worker given
    them builds no other vendor (no Mixpanel sink, so no journal either)."""
    wanted = setting_names(names)
    return {key: value for key, value in every_vendor_env(sim).items() if key in wanted}


def setting_names(names: tuple[str, ...]) -> set[str]:
    """Every environment variable `integrations.vendors` reads for these vendors."""
    found: set[str] = set()
    for name in names:
        settings = vendors.SETTINGS[name]
        found |= {*settings.required, *settings.optional}
        found |= {setting for group in settings.alternatives for setting in group}
    return found


def nudge(reference: Reference, user_id: str = "u-bench-00001") -> RenderedNudge:
    """A rendered nudge as the engine hands it to an adapter, for `user_id`."""
    return RenderedNudge(
        delivery_key=f"bench-adapters:nudge:user:{user_id}:oc_bench",
        playbook_id="bench-adapters",
        step="nudge",
        variant="a",
        recipient=Recipient(user_id=user_id, account_id="acct-bench-001"),
        subject="Who should review Project Falcon?",
        body=f"Hi Priya, Project Falcon has no reviewer yet: {INVITE_LINK}",
        data={
            "invite_link": INVITE_LINK,
            "share": "review_request",
            "trust": "Reviewers see this pack only, read-only.",
        },
        reference=reference,
    )

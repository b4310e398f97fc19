"""Shared samples for the channel tests: a rendered nudge and the vendors' own specs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integrations.base import Recipient, Reference, RenderedNudge

# ../shared/specs next to the repository (DESIGN.md forbids copying them in), or
# wherever REFERLOOP_SPECS_DIR points for a clone kept elsewhere.
SPECS_DIR = Path(
    os.environ.get("REFERLOOP_SPECS_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "specs"
)

SAMPLE_EMAIL = "dana.reviewer@example.com"

NudgeFactory = Callable[..., RenderedNudge]


def make_nudge(
    reference: Reference | None = None,
    *,
    subject: str | None = "Invite your reviewers",
    email: str | None = SAMPLE_EMAIL,
    user_id: str = "user-42",
    delivery_key: str = "pack-reviewers:ask:user-42:2026-05-01",
) -> RenderedNudge:
    """Return a rendered nudge like the engine hands to a channel."""
    invite_link = "https://app.example.com/invite/t0k3n"
    data: dict[str, Any] = {
        "invite_link": invite_link,
        "share": "Share the Q3 pack with your reviewers",
        "trust": "Only people you invite can see the pack.",
        "pack_name": "Q3 board pack",
    }
    return RenderedNudge(
        delivery_key=delivery_key,
        playbook_id="pack-reviewers",
        step="ask",
        variant="a",
        recipient=Recipient(user_id=user_id, account_id="acct-7", email=email),
        subject=subject,
        body=f"Your pack is ready. Invite the reviewers who need it: {invite_link}",
        data=data,
        reference=reference,
    )


@pytest.fixture
def nudge() -> NudgeFactory:
    """Build sample nudges; keyword arguments vary the recipient and content."""
    return make_nudge


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    """The vendors' OpenAPI documents; their absence fails the run, never skips it."""
    if not SPECS_DIR.is_dir():
        pytest.fail(
            f"vendor specs not found at {SPECS_DIR}: the request tests check "
            "against them; put shared/specs next to the repository or set "
            "REFERLOOP_SPECS_DIR",
            pytrace=False,
        )
    return SPECS_DIR

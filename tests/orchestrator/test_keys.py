"""Delivery keys: one stable key per intended delivery."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.keys import delivery_key
from orchestrator.model import ID_PATTERN

PLAYBOOK_IDS = st.from_regex(ID_PATTERN, fullmatch=True)
STEPS = st.sampled_from(["nudge", "reinforcement:collaboration_completed"])
SUBJECTS = st.builds(
    lambda kind, key: f"{kind}:{key}", st.sampled_from(["user", "account"]), st.text()
)
OCCURRENCES = st.text(min_size=1)
DELIVERIES = st.tuples(PLAYBOOK_IDS, STEPS, SUBJECTS, OCCURRENCES)


def test_the_same_delivery_always_gets_the_same_key() -> None:
    """A redelivered trigger finds the ledger entry of its first attempt."""
    first = delivery_key("pack-reviewers", "nudge", "user:u_42", "evt_1")
    again = delivery_key("pack-reviewers", "nudge", "user:u_42", "evt_1")

    assert first == again


def test_a_key_is_a_prefix_and_32_hex_characters() -> None:
    """Short enough for every vendor's idempotency field, and recognisable."""
    key = delivery_key("pack-reviewers", "nudge", "user:u_42", "evt_1")

    assert re.fullmatch(r"dk_[0-9a-f]{32}", key)


@settings(max_examples=200)
@given(first=DELIVERIES, second=DELIVERIES)
def test_different_deliveries_get_different_keys(
    first: tuple[str, str, str, str], second: tuple[str, str, str, str]
) -> None:
    """Another playbook, step, subject or occurrence is another delivery."""
    if first == second:
        return

    assert delivery_key(*first) != delivery_key(*second)

"""Delivery keys: one deterministic key per intended delivery.

The same (playbook, step, subject, trigger occurrence) always gives the same key,
so that a redelivered message finds the ledger entry of its first attempt.
"""

from __future__ import annotations

import hashlib

KEY_PREFIX = "dk_"
KEY_HEX_CHARS = 32
_SEPARATOR = "\x1f"


def delivery_key(playbook_id: str, step: str, subject: str, occurrence: str) -> str:
    """The key of one nudge to one subject (`user:<id>` or `account:<id>`).

    Args:
        occurrence: what makes this trigger firing unique, such as the product
            event's id or the cohort snapshot in which the user entered.
    """
    parts = (playbook_id, step, subject, occurrence)
    digest = hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).hexdigest()
    return KEY_PREFIX + digest[:KEY_HEX_CHARS]

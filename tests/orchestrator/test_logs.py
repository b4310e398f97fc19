"""The redaction filter and the JSON lines of `LOG_FORMAT=json`."""

from __future__ import annotations

import json
import logging

from orchestrator.logs import MASK, JsonLines, Redact, redact


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        "referloop.test", logging.INFO, __file__, 1, message, args, None
    )


def test_emails_tokens_and_query_strings_are_masked():
    """What must never reach a log is masked even when a message carries it."""
    text = (
        "to dana.reviewer@example.com via https://app.example.com/invite?token=abc.def "
        "with Authorization: Bearer sk_live_123 and .eJxFjEEKAjEMRe-StUI.abcdef"
    )

    cleaned = redact(text)

    for secret in ("dana.reviewer@example.com", "token=abc", "sk_live_123", ".eJxFj"):
        assert secret not in cleaned
    assert cleaned.count(MASK) == 4


def test_the_filter_masks_arguments_as_well_as_the_message():
    """`%`-style arguments are joined before masking, so none slips through."""
    record = _record("Sent %s to %s.", "dk_1", "ada@example.com")

    Redact().filter(record)

    assert record.getMessage() == f"Sent dk_1 to {MASK}."


def test_ids_are_left_alone():
    """Delivery keys, playbook ids and cohorts read as they are."""
    text = "Held back delivery dk_4b2e40 of pack-reviewers: excluded:mixpanel:52114."

    assert redact(text) == text


def test_json_lines_are_one_object_each():
    """`LOG_FORMAT=json`: time, level, logger and message in one JSON object."""
    line = JsonLines().format(_record("Worker started with %d threads.", 8))

    entry = json.loads(line)

    assert (entry["level"], entry["message"]) == (
        "info",
        "Worker started with 8 threads.",
    )

"""Logging for every referloop process: one line per event, ids not people.

Log lines are written about ids (delivery key, playbook, vendor, outcome). The
redaction filter is the last line of defence should a message ever carry more:
it masks email addresses, bearer tokens, signed tokens and query strings.
`LOG_FORMAT=json` writes one JSON object per line, for log drains.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Literal

MASK = "[redacted]"
QUIET_LIBRARIES = ("httpx", "httpcore")
_PATTERNS = (
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),  # email addresses
    re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+"),  # authorization values
    re.compile(r"(?<=[?&])[^\s&#]+=[^\s&#]*"),  # query string parameters
    re.compile(r"\.eJ[\w-]{8,}\.[\w-]+"),  # compressed signed tokens
)


class Redact(logging.Filter):
    """Mask what must never reach a log, in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(MASK, text)
    return text


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(level: int, style: Literal["text", "json"] = "text") -> None:
    """Send logs to stderr in `style`, redacted, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redact())
    if style == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP libraries log every URL they call; the adapters log what matters,
    # by path and status, so theirs stay quiet unless something goes wrong.
    for chatty in QUIET_LIBRARIES:
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))

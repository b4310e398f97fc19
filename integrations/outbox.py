"""The local outbox: nudges written as JSON lines to a file instead of a vendor.

Local runs (no `REDIS_URL`) and `referloop preview` use it, so a marketer can read
every nudge that would have gone out. The file holds message bodies: it is for a
developer's machine, never for production.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

from integrations.base import Reference, RenderedNudge, Sent, VendorRequest

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("outbox/nudges.jsonl")
METHOD = "APPEND"


class OutboxChannel:
    """Append each nudge as one JSON line to a local file.

    The outbox needs no reference in the playbook: it records whatever was rendered.
    """

    name: ClassVar[str] = "outbox"
    reference_model: ClassVar[type[Reference] | None] = None

    def __init__(
        self, path: Path = DEFAULT_PATH, stands_in_for: str | None = None
    ) -> None:
        """`stands_in_for` names the vendor channel this outbox replaces in a run
        with no vendor account, so each line says where it would have gone."""
        self.path = Path(path)
        self.stands_in_for = stands_in_for
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The outbox file as a `file://` URL, absolute so that it names one file."""
        return self.path.absolute().as_uri()

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the record that `append` would write for `nudge`."""
        record = _record(nudge)
        if self.stands_in_for is not None:
            record["stands_in_for"] = self.stands_in_for
        return VendorRequest(method=METHOD, url=self.url, json=record)

    def send(self, nudge: RenderedNudge) -> Sent:
        """Write `nudge` to the outbox; the outbox has no ids of its own."""
        self.append(self.build_request(nudge))
        return Sent()

    def append(self, request: VendorRequest) -> None:
        """Write the request's record as one line, creating the folder if needed.

        Raises:
            ValueError: the request was not built by this outbox.
        """
        if (request.method, request.url) != (METHOD, self.url):
            raise ValueError(f"not a request for this outbox: {request.describe()}")

        line = json.dumps(request.json, ensure_ascii=False, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a", encoding="utf-8") as outbox:
            outbox.write(line + "\n")

        logger.info(
            "Appended delivery %s to the outbox %s.",
            request.json.get("delivery_key"),
            self.path,
        )


def _record(nudge: RenderedNudge) -> dict[str, Any]:
    recipient = nudge.recipient
    return {
        "delivery_key": nudge.delivery_key,
        "playbook": nudge.playbook_id,
        "step": nudge.step,
        "variant": nudge.variant,
        "channel": OutboxChannel.name,
        "user_id": recipient.user_id,
        "account_id": recipient.account_id,
        "subject": nudge.subject,
        "body": nudge.body,
        "data": dict(nudge.data),
    }

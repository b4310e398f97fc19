"""An adapter as another package would ship it: installed through the
`referloop.adapters` entry point, built on referloop's HTTP layer and budgets.

It stands for a paging service that takes a short text for a user. The
conformance suite finds it the way a worker would, and holds it to the same
promises as the built-in adapters.
"""

from __future__ import annotations

from typing import Any, ClassVar

from integrations.base import (
    SECURE,
    Check,
    ConformanceCase,
    Recipient,
    Reference,
    RenderedNudge,
    Sent,
    VendorRequest,
)
from integrations.http import VendorHttp, json_or_none
from orchestrator.budgets import Budget
from orchestrator.errors import VendorError
from orchestrator.state import Store
from orchestrator.units import Cap

TOKEN = "pager-token-for-conformance-0001"


class PagerChannel:
    name: ClassVar[str] = "pager"
    reference_model: ClassVar[type[Reference] | None] = None

    def __init__(
        self, base_url: str, token: str, *, budget: Budget | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = VendorHttp(
            self.name,
            self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            budget=budget,
        )

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        body = {"user": nudge.recipient.user_id, "text": nudge.body}
        headers = {"Authorization": SECURE}
        return VendorRequest("POST", f"{self.base_url}/pages", body, headers)

    def send(self, nudge: RenderedNudge) -> Sent:
        request = self.build_request(nudge)
        response = self._http.request("POST", "/pages", json=request.json)
        answer: Any = json_or_none(response)
        vendor_id = answer.get("id") if isinstance(answer, dict) else None
        return Sent(vendor_id=str(vendor_id) if vendor_id else None)

    def check(self) -> list[Check]:
        try:
            self._http.request("GET", "/me")
        except VendorError as exc:
            return [Check(self.name, "token", False, str(exc))]
        return [Check(self.name, "token", True, "works")]

    def close(self) -> None:
        self._http.close()

    @classmethod
    def conformance_cases(
        cls, base_url: str, store: Store, budget: Cap
    ) -> list[ConformanceCase]:
        sender = cls(base_url, TOKEN, budget=Budget(store, "pager:pages", budget))
        nudge = RenderedNudge(
            delivery_key="dk_pager_conformance",
            playbook_id="pager-example",
            step="ask",
            variant="a",
            recipient=Recipient("user-1", "acct-1", email="pat@example.com"),
            subject=None,
            body="Invite a reviewer to your pack.",
            data={},
        )
        return [ConformanceCase("page", sender, nudge, (TOKEN,))]

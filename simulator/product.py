"""The simulated product: the endpoints a product exposes to referloop's webhooks.

`POST /grants` and `POST /nudges` take signed JSON. Each request is verified with
`integrations.webhook.verify`, as a product would verify it, and refused with 401
and the reason when that fails. Each `Idempotency-Key` is applied once: a repeat
with the same body gets the first answer again (marked `Idempotent-Replayed`), a
repeat with another body a 422. What was applied is recorded in `grants` and
`nudges`. `GET /health` answers a signed request, for `check()`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from integrations.webhook import (
    CONFORMANCE_SECRET,
    DEFAULT_TOLERANCE_S,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    secret_list,
    verify,
)
from simulator.core import Limit, SimRequest, SimResponse, VendorSim

BUCKET = "api"
GRANT_FIELDS = ("idempotency_key", "playbook_id", "user_id", "account_id", "grant")
NUDGE_FIELDS = ("delivery_key", "playbook_id", "topic", "user_id", "account_id", "body")
REPLAYED_HEADER = "Idempotent-Replayed"

Apply = Callable[[dict[str, Any]], SimResponse]


@dataclass(frozen=True)
class _Answer:
    """The first answer to one idempotency key, and the body it answered."""

    body_sha256: str
    response: SimResponse


class ProductSim(VendorSim):
    """A product that takes referloop's grants and nudges.

    `signing_secrets` are the secrets it verifies with (any may match);
    `tolerance_s` how far a signature's time may be from its clock.
    """

    name = "webhook"

    def __init__(
        self,
        signing_secrets: str | Sequence[str] = (CONFORMANCE_SECRET,),
        tolerance_s: float = DEFAULT_TOLERANCE_S,
    ) -> None:
        self.signing_secrets = secret_list(signing_secrets)
        self.tolerance_s = tolerance_s
        self.grants: list[dict[str, Any]] = []
        self.nudges: list[dict[str, Any]] = []
        self._answers: dict[tuple[str, str], _Answer] = {}
        super().__init__()

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {
            ("POST", "/grants"): self._grant,
            ("POST", "/nudges"): self._nudge,
            ("GET", "/health"): self._health,
        }

    def authorized(self, request: SimRequest) -> bool:
        return self.refusal(request) is None

    def unauthorized(self, request: SimRequest) -> SimResponse:
        refusal = self.refusal(request)
        reason = refusal.reason if refusal is not None else "no_match"
        detail = str(refusal) if refusal is not None else ""
        return SimResponse(
            401, {"error": "signature", "reason": reason, "detail": detail}
        )

    def refusal(self, request: SimRequest) -> SignatureError | None:
        """Why the request's signature fails, or None when it verifies."""
        header = request.header(SIGNATURE_HEADER)
        try:
            verify(
                self.signing_secrets,
                header,
                request.body,
                time.time(),
                self.tolerance_s,
            )
        except SignatureError as exc:
            return exc
        return None

    def limits(self) -> list[Limit]:
        # A product documents no limit; this one takes the adapter's default pace.
        return [Limit(BUCKET, count=100, window_s=1.0)]

    def bucket(self, request: SimRequest) -> str | None:
        return BUCKET

    def clear(self) -> None:
        """Forget what was applied and every idempotency key, between tests."""
        with self.lock:
            self.grants.clear()
            self.nudges.clear()
            self._answers.clear()

    def _grant(self, request: SimRequest) -> SimResponse:
        return self._once(request, GRANT_FIELDS, self._apply_grant)

    def _nudge(self, request: SimRequest) -> SimResponse:
        return self._once(request, NUDGE_FIELDS, self._apply_nudge)

    def _health(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, {"status": "ok"})

    def _apply_grant(self, body: dict[str, Any]) -> SimResponse:
        self.grants.append(body)
        return SimResponse(
            201, {"id": f"grant-{len(self.grants)}", "status": "granted"}
        )

    def _apply_nudge(self, body: dict[str, Any]) -> SimResponse:
        self.nudges.append(body)
        return SimResponse(202, {"id": f"nudge-{len(self.nudges)}", "status": "queued"})

    def _once(
        self, request: SimRequest, required: Sequence[str], apply: Apply
    ) -> SimResponse:
        """Apply a request's idempotency key once; a repeat gets the first answer."""
        key = request.header(IDEMPOTENCY_HEADER)
        if not key:
            return _refused(400, f"missing {IDEMPOTENCY_HEADER}")
        body = request.json
        problem = _body_problem(body, required)
        if problem:
            return _refused(400, problem)

        digest = hashlib.sha256(request.body).hexdigest()
        with self.lock:
            first = self._answers.get((request.path, key))
            if first is not None:
                return _replayed(first, digest)
            response = apply(body)
            self._answers[(request.path, key)] = _Answer(digest, response)
        return response


def _body_problem(body: Any, required: Sequence[str]) -> str:
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    missing = [name for name in required if not isinstance(body.get(name), str)]
    return f"missing {', '.join(missing)}" if missing else ""


def _replayed(first: _Answer, digest: str) -> SimResponse:
    if first.body_sha256 != digest:
        return _refused(422, f"{IDEMPOTENCY_HEADER} reused with another body")
    headers = {**first.response.headers, REPLAYED_HEADER: "true"}
    return replace(first.response, headers=headers)


def _refused(status: int, message: str) -> SimResponse:
    return SimResponse(status, {"error": message})

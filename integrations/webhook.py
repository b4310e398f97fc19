"""The product's own API, reached with signed webhooks: grants and nudges.

A product keeps its entitlements (guest seats, extra projects) and, often, its in-app
surfaces to itself. referloop reaches them at endpoints the product exposes below
one base URL:

- `POST /grants`: one reward for one user (`WebhookRewards`);
- `POST /nudges`: one nudge for the product to show (`WebhookChannel`);
- `GET /health`: answered 2xx to a signed request, for `referloop doctor`.

Every request is signed: `Referloop-Signature: t=<unix seconds>,v1=<hex>`, the hex
being HMAC-SHA256 over `<t>.<body>` with a secret both sides hold. During a
rotation referloop holds the new and the old secret and signs with each, one `v1=`
per secret, so the product may switch to the new one whenever it likes while both
are held; `verify` accepts any `v1` that matches any of its own secrets.

Every POST carries `Idempotency-Key` (the grant's key, or the delivery key) and the
product applies a key once, answering a repeat with its first answer. Both posts are
therefore safe to repeat: an unanswered one is retried and becomes a
`TransientError`, never an `AmbiguousError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from integrations.base import (
    SECURE,
    Check,
    ConformanceCase,
    GrantRequest,
    Reference,
    RenderedNudge,
    Sent,
    VendorRequest,
    conformance_nudge,
    expect_reference,
)
from integrations.http import Call, VendorHttp, json_or_none
from orchestrator.budgets import Budget, vendor_caps
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    ReferloopError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

VENDOR = "webhook"
SIGNATURE_HEADER = "Referloop-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
JSON_TYPE = "application/json"
DEFAULT_TOLERANCE_S = 300
# The longest header `verify` reads: room for a timestamp and a dozen signatures,
# so that a flood of `v1=` entries costs the product no more than that.
MAX_HEADER_CHARS = 1_024
# `secrets.token_urlsafe(32)` gives 43 characters; anything much shorter is a
# password, not a key.
MIN_SECRET_CHARS = 32

# Shown by `referloop preview` before a base URL is set; `.invalid` never resolves.
PLACEHOLDER_BASE_URL = "https://product.invalid"
DEFAULT_GRANTS_PATH = "/grants"
DEFAULT_NUDGES_PATH = "/nudges"
DEFAULT_HEALTH_PATH = "/health"

# The settings, as `referloop doctor` and the errors name them.
URL_SETTING = "WEBHOOK_BASE_URL"
SECRETS_SETTING = "WEBHOOK_SECRETS"
HEALTH_SETTING = "WEBHOOK_HEALTH_PATH"

GRANTS_BUDGET = "webhook:grants"
NUDGES_BUDGET = "webhook:nudges"
# The product documents no limit of its own; these keep a burst of grants or nudges
# from landing on it all at once, and a team lowers them to what its API takes.
DEFAULT_BUDGETS: dict[str, Cap] = {
    GRANTS_BUDGET: Cap(100, timedelta(seconds=1)),
    NUDGES_BUDGET: Cap(100, timedelta(seconds=1)),
}

# The secret the conformance suite signs with; the simulated product verifies with
# it by default. It is public and signs nothing real.
CONFORMANCE_SECRET = "conformance-only-4f1c9a7e2b6d8053c1e7a9b4d2f60e38"  # noqa: S105

_SAFE = Call(safe_to_repeat=True)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Printable ASCII without spaces: what a header value can carry unchanged.
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")

SignatureProblem = Literal["missing", "malformed", "too_old", "too_new", "no_match"]


class SignatureError(ReferloopError):
    """A request's `Referloop-Signature` does not show that referloop sent it.

    `reason` is `missing`, `malformed`, `too_old`, `too_new` or `no_match`; the
    message says what is wrong and never holds a secret or a signature.
    """

    def __init__(self, reason: SignatureProblem, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


# --- signing ---------------------------------------------------------------


def secret_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """The signing secrets in `value`, in order, blanks dropped.

    A string is read as `WEBHOOK_SECRETS` is written, comma-separated, so that a
    single secret passed as a string stays one secret and is never taken apart
    character by character.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def sign(signing_secrets: str | Sequence[str], body: bytes | str, now: float) -> str:
    """The `Referloop-Signature` value for `body` sent at `now` (Unix seconds).

    One `v1=` per secret, in the order given. Sign the exact bytes that are sent.

    Raises:
        ConfigurationError: no secret was given.
    """
    keys = _required(signing_secrets)
    timestamp = int(now)

    message = _signed_message(timestamp, body)
    digests = [f"v1={_digest(key, message)}" for key in keys]
    return ",".join([f"t={timestamp}", *digests])


def verify(
    signing_secrets: str | Sequence[str],
    header: str | None,
    body: bytes | str,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Check that `header` signs `body` with one of the secrets, recently enough.

    For the receiving side: the product's endpoints, and referloop's own. Pass the
    raw body as it arrived, before parsing it. Returns the signed timestamp.

    Raises:
        SignatureError: the header is missing or malformed, no signature matches,
            or it was signed more than `tolerance_s` before or after `now`.
        ConfigurationError: no secret was given.
    """
    keys = _required(signing_secrets)
    timestamp, signatures = _parse(header)

    message = _signed_message(timestamp, body)
    expected = [_digest(key, message) for key in keys]
    matched = [hmac.compare_digest(e, s) for e in expected for s in signatures]
    if not any(matched):
        raise SignatureError("no_match", "no v1 signature matches a secret held here")

    _check_age(timestamp, now, tolerance_s)
    return timestamp


def _required(signing_secrets: str | Sequence[str]) -> tuple[str, ...]:
    keys = secret_list(signing_secrets)
    if not keys:
        raise ConfigurationError(f"no signing secret: set {SECRETS_SETTING}")
    return keys


def _signed_message(timestamp: int, body: bytes | str) -> bytes:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return f"{timestamp}.".encode("ascii") + raw


def _digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _parse(header: str | None) -> tuple[int, list[str]]:
    """Read `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`; other schemes are skipped."""
    if header is None or not header.strip():
        raise SignatureError("missing", f"the request has no {SIGNATURE_HEADER}")
    if len(header) > MAX_HEADER_CHARS:
        raise SignatureError("malformed", f"longer than {MAX_HEADER_CHARS} characters")

    fields: dict[str, list[str]] = {"t": [], "v1": []}
    for item in header.split(","):
        scheme, equals, value = item.strip().partition("=")
        if not equals:
            raise SignatureError("malformed", "expected `t=<unix seconds>,v1=<hex>`")
        if scheme in fields:
            fields[scheme].append(value.strip().lower())

    stamps, signatures = fields["t"], fields["v1"]
    if len(stamps) != 1 or not _TIMESTAMP.fullmatch(stamps[0]):
        raise SignatureError("malformed", "expected one `t=` with Unix seconds")
    if not signatures or not all(_HEX_DIGEST.fullmatch(s) for s in signatures):
        raise SignatureError("malformed", "expected `v1=` with 64 hex digits")
    return int(stamps[0]), signatures


def _check_age(timestamp: int, now: float, tolerance_s: float) -> None:
    age_s = now - timestamp
    if age_s > tolerance_s:
        raise SignatureError(
            "too_old",
            f"signed {age_s:.0f} s ago, more than the {tolerance_s:g} s accepted; "
            "a replayed request, a queue that held it, or a slow clock",
        )
    if -age_s > tolerance_s:
        raise SignatureError(
            "too_new",
            f"signed {-age_s:.0f} s ahead of this clock, more than the "
            f"{tolerance_s:g} s accepted; one of the two clocks is wrong",
        )


# --- the product's API -------------------------------------------------------


class _ProductApi:
    """The product's endpoints as both adapters reach them: signed JSON over
    `VendorHttp`. The HTTP client is built on the first call, so a channel
    built only to preview a nudge opens nothing and needs no settings."""

    def __init__(
        self,
        base_url: str | None,
        signing_secrets: str | Sequence[str],
        health_path: str,
        timeout: httpx.Timeout | None,
    ) -> None:
        self.base_url = (base_url or "").strip().rstrip("/") or None
        self.secrets = secret_list(signing_secrets)
        self.health_path = _as_path(health_path)
        self._timeout = timeout
        self._http: VendorHttp | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The base URL, or a placeholder that shows where it goes."""
        return self.base_url or PLACEHOLDER_BASE_URL

    def post(
        self, path: str, payload: Any, idempotency_key: str, budget: Budget | None
    ) -> httpx.Response:
        """Sign and post `payload`; the product applies `idempotency_key` once.

        Raises:
            ConfigurationError: the base URL or the secrets are not set.
            TransientError, PermanentError: as `VendorHttp.request`.
        """
        if not _TOKEN.fullmatch(idempotency_key):
            raise PermanentError(
                VENDOR, f"POST {path}: the idempotency key is not a header token"
            )
        http = self._client()

        body = _encoded(payload)
        headers = {
            "Content-Type": JSON_TYPE,
            SIGNATURE_HEADER: sign(self.secrets, body, time.time()),
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        try:
            return http.request(
                "POST", path, call=_SAFE, budget=budget, content=body, headers=headers
            )
        except PermanentError as exc:
            raise _with_hint(exc, f"POST {path}") from None

    def check(self) -> list[Check]:
        """The settings, then one signed `GET` of the health path per secret."""
        problems = self._setting_problems()
        if problems:
            return problems

        refusals = [self._probe(secret) for secret in self.secrets]
        any_accepted = any(refusal is None for refusal in refusals)
        count = len(self.secrets)
        return [
            _secret_check(index, count, refusal, any_accepted, self.health_path)
            for index, refusal in enumerate(refusals, start=1)
        ]

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _client(self) -> VendorHttp:
        with self._lock:
            if self._http is not None:
                return self._http
            if self.base_url is None:
                raise ConfigurationError(f"no product API URL: set {URL_SETTING}")
            if not self.secrets:
                raise ConfigurationError(f"no signing secret: set {SECRETS_SETTING}")
            self._http = VendorHttp(VENDOR, self.base_url, timeout=self._timeout)
            return self._http

    def _probe(self, secret: str) -> VendorError | None:
        """Ask the health path with a request signed by `secret` alone."""
        headers = {SIGNATURE_HEADER: sign([secret], b"", time.time())}
        try:
            self._client().request("GET", self.health_path, call=_SAFE, headers=headers)
        except VendorError as exc:
            return exc
        return None

    def _setting_problems(self) -> list[Check]:
        problems = []
        url_problem = _url_problem(self.base_url)
        if url_problem:
            problems.append(Check(VENDOR, URL_SETTING, False, url_problem))
        if not self.secrets:
            detail = "not set: the secrets shared with the product, comma-separated"
            problems.append(Check(VENDOR, SECRETS_SETTING, False, detail))
        for index, secret in enumerate(self.secrets, start=1):
            if len(secret) < MIN_SECRET_CHARS:
                detail = (
                    f"secret {index} is shorter than {MIN_SECRET_CHARS} characters; "
                    "make one with `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`"
                )
                problems.append(Check(VENDOR, SECRETS_SETTING, False, detail))
        return problems


def _url_problem(base_url: str | None) -> str:
    if base_url is None:
        return "not set: the base URL of the product's endpoints for referloop"
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "not a URL: write it as https://host/path"
    if parts.query or parts.fragment:
        return "holds a query or fragment: give the base URL alone"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "use https: the requests carry user ids and message content"
    return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret_check(
    index: int,
    count: int,
    refusal: VendorError | None,
    any_accepted: bool,
    health_path: str,
) -> Check:
    what = f"{SECRETS_SETTING} secret {index} of {count}"
    if refusal is None:
        return Check(VENDOR, what, True, f"GET {health_path} accepted its signature")
    if getattr(refusal, "status", None) != 401:
        return Check(VENDOR, what, False, _unanswered_detail(refusal, health_path))
    if any_accepted:
        detail = (
            "refused (401) while another secret is accepted: expected during a "
            f"rotation; otherwise remove it from {SECRETS_SETTING}"
        )
        return Check(VENDOR, what, True, detail)
    detail = (
        "the product refused the signature (401): give it the same secret "
        f"as {SECRETS_SETTING}"
    )
    return Check(VENDOR, what, False, detail)


def _unanswered_detail(error: VendorError, health_path: str) -> str:
    status = getattr(error, "status", None)
    if status is None:
        return f"unreachable or failing: {error}; check {URL_SETTING}"
    return (
        f"GET {health_path} answered {status}: set {HEALTH_SETTING} to a path "
        "the product answers with 2xx to a signed GET"
    )


def _with_hint(error: PermanentError, where: str) -> PermanentError:
    """Name the setting to fix when the product refused the signature (401).

    A 403 keeps the shared wording: the product verified the request and does
    not permit it, which no setting of ours changes.
    """
    if error.status != 401:
        return error
    return PermanentError(
        VENDOR,
        f"{where}: the product refused the signature (401); check "
        f"{SECRETS_SETTING} and both clocks",
        error.status,
    )


def _as_path(path: str) -> str:
    return "/" + path.strip().lstrip("/")


def _encoded(payload: Any) -> bytes:
    """The exact bytes that are signed and sent: compact, keys sorted."""
    text = json.dumps(
        payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    return text.encode("utf-8")


def _product_id(response: httpx.Response) -> str | None:
    """The product's own id for what it took, when its answer gives one as `id`."""
    answer = json_or_none(response)
    found = answer.get("id") if isinstance(answer, dict) else None
    return str(found) if isinstance(found, str | int) else None


# --- grants ------------------------------------------------------------------


class WebhookRewards:
    """Give grants in the product: a signed `POST` of each grant to its API.

    The grant's idempotency key goes in `Idempotency-Key`, so a repeated grant is
    applied once and an unanswered one may be sent again.
    """

    name: ClassVar[str] = VENDOR

    def __init__(
        self,
        base_url: str | None = None,
        signing_secrets: str | Sequence[str] = (),
        *,
        grants_path: str = DEFAULT_GRANTS_PATH,
        health_path: str = DEFAULT_HEALTH_PATH,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        """`signing_secrets` is a sequence or a comma-separated string; each
        signs every request. Without a `store` no budget paces the grants;
        without a `timeout` the shared one applies."""
        caps = vendor_caps("webhook", DEFAULT_BUDGETS, budgets)
        self.grants_path = _as_path(grants_path)
        self.budget = _budget(store, GRANTS_BUDGET, caps)
        self._api = _ProductApi(base_url, signing_secrets, health_path, timeout)

    def grant(self, request: GrantRequest) -> Sent:
        """Post the grant; the product's `id` for it, if it answers one, comes back.

        Raises:
            ConfigurationError: the base URL or the secrets are not set.
            TransientError: try again later; the product applies the key once.
            PermanentError: the product refused the grant.
        """
        payload = dataclasses.asdict(request)
        key = request.idempotency_key

        response = self._api.post(self.grants_path, payload, key, self.budget)

        logger.info(
            "Grant %s of playbook %s went to the product (POST %s, %s).",
            key,
            request.playbook_id,
            self.grants_path,
            response.status_code,
        )
        return Sent(vendor_id=_product_id(response))

    def check(self) -> list[Check]:
        """The settings, then a signed `GET` of the health path with each secret."""
        return self._api.check()

    def close(self) -> None:
        self._api.close()


# --- nudges ------------------------------------------------------------------


class WebhookReference(Reference):
    """What a playbook writes under `nudge.webhook`."""

    topic: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description=(
            "What the product shows, such as `invite-reviewers`: the product "
            "chooses the in-app surface for each topic it knows."
        ),
    )


class WebhookChannel:
    """Hand nudges to the product, which shows them itself: a signed `POST` each.

    The delivery key goes in `Idempotency-Key`, so the product shows a nudge once
    however often it is sent.
    """

    name: ClassVar[str] = VENDOR
    reference_model: ClassVar[type[Reference] | None] = WebhookReference

    def __init__(
        self,
        base_url: str | None = None,
        signing_secrets: str | Sequence[str] = (),
        *,
        nudges_path: str = DEFAULT_NUDGES_PATH,
        health_path: str = DEFAULT_HEALTH_PATH,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        """Every setting may be left out to preview nudges; sending needs
        `base_url` and `signing_secrets` (a sequence or a comma-separated string;
        each signs every request). Without a `store` no budget paces the sends;
        without a `timeout` the shared one applies."""
        caps = vendor_caps("webhook", DEFAULT_BUDGETS, budgets)
        self.nudges_path = _as_path(nudges_path)
        self.budget = _budget(store, NUDGES_BUDGET, caps)
        self._api = _ProductApi(base_url, signing_secrets, health_path, timeout)

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the `POST` that hands `nudge` to the product, signature `[secure]`.

        Raises:
            ConfigurationError: the nudge has no `nudge.webhook` reference.
        """
        reference = expect_reference(nudge, WebhookReference, self.name)
        headers = {
            "Content-Type": JSON_TYPE,
            SIGNATURE_HEADER: SECURE,
            IDEMPOTENCY_HEADER: nudge.delivery_key,
        }
        url = f"{self._api.url}{self.nudges_path}"
        body = _nudge_payload(nudge, reference)
        return VendorRequest(method="POST", url=url, json=body, headers=headers)

    def send(self, nudge: RenderedNudge) -> Sent:
        """Sign and post the nudge; the product's `id` for it comes back, if any.

        Raises:
            ConfigurationError: no `nudge.webhook` reference, or a setting is missing.
            TransientError: try again later; the product shows the delivery once.
            PermanentError: the product refused the nudge.
        """
        request = self.build_request(nudge)
        key = nudge.delivery_key

        response = self._api.post(self.nudges_path, request.json, key, self.budget)

        logger.info(
            "Delivery %s went to the product (POST %s, %s).",
            key,
            self.nudges_path,
            response.status_code,
        )
        return Sent(vendor_id=_product_id(response))

    def check(self) -> list[Check]:
        """The settings, then a signed `GET` of the health path with each secret.

        A product API has no read-only call in common, so the product answers one
        path (`WEBHOOK_HEALTH_PATH`, default `/health`) with 2xx when the signature
        verifies; that tests the URL and every secret at once.
        """
        return self._api.check()

    def close(self) -> None:
        self._api.close()

    @classmethod
    def conformance_cases(
        cls, base_url: str, store: Store, budget: Cap
    ) -> list[ConformanceCase]:
        """One kind of send: a nudge for the product to show, deduped by its key."""
        sender = cls(
            base_url,
            [CONFORMANCE_SECRET],
            store=store,
            budgets={NUDGES_BUDGET: budget},
        )
        nudge = conformance_nudge(WebhookReference(topic="invite-reviewers"))
        case = ConformanceCase(
            label="nudge",
            sender=sender,
            nudge=nudge,
            secrets=(CONFORMANCE_SECRET,),
            dedupes=True,
        )
        return [case]


def _nudge_payload(nudge: RenderedNudge, reference: WebhookReference) -> Any:
    """Ids and rendered content: the product knows its users, so no email goes."""
    return {
        "delivery_key": nudge.delivery_key,
        "playbook_id": nudge.playbook_id,
        "step": nudge.step,
        "variant": nudge.variant,
        "topic": reference.topic,
        "user_id": nudge.recipient.user_id,
        "account_id": nudge.recipient.account_id,
        "subject": nudge.subject,
        "body": nudge.body,
        "data": dict(nudge.data),
    }


def _budget(store: Store | None, name: str, caps: Mapping[str, Cap]) -> Budget | None:
    return None if store is None else Budget(store, name, caps[name])

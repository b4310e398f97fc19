"""Intercom: an in-app message or an email from an admin, through `POST /messages`.

The body follows `create_message_request` of Intercom's API 2.14. Intercom addresses
the recipient by its own contact id, not by our user id, so the channel takes a
`contact_id` resolver (our user id in, Intercom contact id out). Without one, the
request carries a placeholder, `contact:external_id=<user id>`, which the sending half
must replace with the contact id it looks up; Intercom would refuse it as it stands.

`IntercomSender` is the sending half, on Intercom's official SDK (`python-intercom`
5) with `Intercom-Version` set, the SDK's own retries off and our own httpx client:

- the contact is found by `external_id` (`POST /contacts/search`), then kept in
  Redis (shared by every worker) and in the process;
- the message goes out through `POST /messages`; Intercom takes no idempotency key,
  so an unanswered send is ambiguous;
- `record` submits referloop's events as data events (`POST /events`);
- every call takes a slot of the app's budget (`intercom:api`).

The SDK raises `ApiError` for a non-2xx answer and httpx's exceptions when the
exchange fails; both are mapped here, once, to the errors of `orchestrator.errors`
and never passed on, since their text carries the vendor's body.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import tenacity
from intercom import (
    CreateDataEventRequestWithUserId,
    Intercom,
    SingleFilterSearchRequest,
    StartingAfterPaging,
)
from intercom.core.api_error import ApiError
from intercom.core.request_options import RequestOptions
from pydantic import Field, model_validator

from integrations.base import (
    SECURE,
    Check,
    ConformanceCase,
    LoopEvent,
    Reference,
    RenderedNudge,
    Sent,
    VendorRequest,
    conformance_nudge,
    expect_reference,
)
from integrations.http import (
    DEFAULT_BUDGET_WAIT_MS,
    default_timeout,
    error_for_status,
    error_for_transport,
    note_failure,
    quick_retries,
    reset_epoch_after,
    retry_after_of,
    take_budget,
)
from orchestrator.budgets import vendor_budgets
from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    PermanentError,
    TransientError,
    VendorError,
)
from orchestrator.state import Store
from orchestrator.units import Cap, parse_cap

logger = logging.getLogger(__name__)

BASE_URLS = {
    "us": "https://api.intercom.io",
    "eu": "https://api.eu.intercom.io",
    "au": "https://api.au.intercom.io",
}
API_VERSION = "2.14"
HEADERS = {"Authorization": SECURE, "Intercom-Version": API_VERSION}
CONTACT_PLACEHOLDER_PREFIX = "contact:external_id="

# Intercom allows 10,000 calls per minute per app (counted in 10-second windows),
# whatever the endpoint: one budget paces them all.
API_BUDGET = "intercom:api"
DEFAULT_BUDGETS: dict[str, Cap] = {API_BUDGET: parse_cap("10000 per 1m")}
# A contact id rarely changes (a merge, a deletion); a send that meets a contact
# gone since forgets it at once.
CONTACT_TTL_S = 7 * 86_400
LOCAL_CONTACTS = 10_000
# Intercom keeps the first 10 metadata keys of an event and ignores the rest.
EVENT_METADATA_KEYS = 10
SEARCH_PAGE = 5
# The conformance suite's fake credential and sample ids: never a real account's.
CONFORMANCE_TOKEN = "fake-intercom-token-5c1d7e-do-not-send"  # noqa: S105
SAMPLE_ADMIN_ID = 394051
SAMPLE_CONTACT_ID = "6762f2341bb69f9f2193bc17"

Region = Literal["us", "eu", "au"]
ContactResolver = Callable[[str], str]
Result = TypeVar("Result")

_reset_after = reset_epoch_after("X-RateLimit-Reset")


class IntercomReference(Reference):
    """What a playbook writes under `nudge.intercom`."""

    message_type: Literal["in_app", "email"] = Field(
        default="in_app",
        description="`in_app` shows the nudge in the product; `email` mails it.",
    )
    from_admin: int = Field(
        gt=0,
        description="The Intercom admin id the message is sent from.",
    )
    template: Literal["plain", "personal"] = Field(
        default="personal",
        description=(
            "The style of an email: `personal` looks written by the admin, `plain` "
            "has no styling. Only for `message_type: email`."
        ),
    )

    @model_validator(mode="after")
    def _template_only_for_email(self) -> IntercomReference:
        if "template" in self.model_fields_set and self.message_type != "email":
            raise ValueError("`template` applies only to `message_type: email`")
        return self


class IntercomChannel:
    """Build Intercom admin-initiated message requests for nudges.

    `base_url` replaces the region's base URL, for a simulated vendor.
    """

    name: ClassVar[str] = "intercom"
    reference_model: ClassVar[type[Reference] | None] = IntercomReference

    def __init__(
        self,
        region: Region = "us",
        base_url: str | None = None,
        contact_id: ContactResolver | None = None,
    ) -> None:
        self.base_url = (base_url or BASE_URLS[region]).rstrip("/")
        self.contact_id = contact_id or placeholder_contact_id

    def build_request(self, nudge: RenderedNudge) -> VendorRequest:
        """Return the `POST /messages` request for `nudge`.

        Raises:
            ConfigurationError: the nudge has no `nudge.intercom` reference.
            PermanentError: an email, but the nudge rendered no subject.
        """
        reference = expect_reference(nudge, IntercomReference, self.name)
        contact = self.contact_id(nudge.recipient.user_id)

        body: dict[str, Any] = {
            "message_type": reference.message_type,
            "body": nudge.body,
            "from": {"type": "admin", "id": reference.from_admin},
            "to": {"type": "user", "id": contact},
        }
        if reference.message_type == "email":
            body |= self._email_fields(nudge, reference)

        url = f"{self.base_url}/messages"
        return VendorRequest(method="POST", url=url, json=body, headers=dict(HEADERS))

    def _email_fields(
        self, nudge: RenderedNudge, reference: IntercomReference
    ) -> dict[str, str]:
        if nudge.subject is None:
            raise PermanentError(
                self.name,
                f"playbook `{nudge.playbook_id}` step `{nudge.step}` sends an email "
                "but rendered no subject; Intercom requires one",
            )
        return {"subject": nudge.subject, "template": reference.template}


def placeholder_contact_id(user_id: str) -> str:
    """Return the marked stand-in for a contact id not looked up yet."""
    return f"{CONTACT_PLACEHOLDER_PREFIX}{user_id}"


def is_placeholder(contact_id: str) -> bool:
    """Tell whether a request's `to.id` still waits for the real contact id."""
    return contact_id.startswith(CONTACT_PLACEHOLDER_PREFIX)


class IntercomSender(IntercomChannel):
    """Send Intercom messages and data events through the official SDK.

    `token` is the app's access token. `base_url` replaces the region's base URL
    (the simulator); `timeout` defaults to the shared one. With a `store`,
    contact ids are cached in Redis for every worker and the budget in `budgets`
    (default `DEFAULT_BUDGETS`) paces every call; without one, contacts are
    cached in this process only and nothing is paced. Safe to share between
    threads.
    """

    name: ClassVar[str] = "intercom"

    def __init__(
        self,
        token: str,
        *,
        region: Region = "us",
        base_url: str | None = None,
        store: Store | None = None,
        budgets: Mapping[str, Cap] | None = None,
        timeout: httpx.Timeout | None = None,
        budget_wait_ms: int = DEFAULT_BUDGET_WAIT_MS,
    ) -> None:
        if not token:
            raise ConfigurationError(
                "the Intercom access token (INTERCOM_ACCESS_TOKEN) is empty"
            )
        super().__init__(region=region, base_url=base_url)
        self._store = store
        self._budget = vendor_budgets(store, "Intercom", DEFAULT_BUDGETS, budgets).get(
            API_BUDGET
        )
        self._budget_wait_ms = budget_wait_ms
        self._contacts = _RecentContacts(LOCAL_CONTACTS)
        self._http = _OwnTimeouts(
            timeout=timeout or default_timeout(), follow_redirects=False
        )
        self._sdk = Intercom(
            base_url=self.base_url,
            token=token,
            headers={"Intercom-Version": API_VERSION},
            httpx_client=self._http,
        )

    def close(self) -> None:
        self._http.close()

    # --- sending ----------------------------------------------------------------

    def send(self, nudge: RenderedNudge) -> Sent:
        """Send `nudge` to the user's Intercom contact; Intercom's message id back.

        Raises:
            ConfigurationError: the nudge has no `nudge.intercom` reference.
            PermanentError: the user has no Intercom contact, or Intercom refused
                the message; an email without a subject is refused unsent.
            TransientError: try later (429, 5xx, budget used up, no connection).
            AmbiguousError: the message went out and no answer came back.
        """
        request = self.build_request(nudge)
        user_id = nudge.recipient.user_id
        body = {**request.json, "to": {"type": "user", "id": self.contact_of(user_id)}}

        try:
            message = self._call(
                "POST /messages",
                lambda: self._post("messages", body),
                safe_to_repeat=False,
            )
        except _Unread:
            logger.warning(
                "Intercom took delivery %s; its answer had no readable message id.",
                nudge.delivery_key,
            )
            return Sent()
        except PermanentError as exc:
            if exc.status == 404:
                self._forget(user_id)
            raise

        message_id = message.get("id")
        logger.debug(
            "Intercom took delivery %s as message %s.", nudge.delivery_key, message_id
        )
        return Sent(vendor_id=str(message_id) if message_id else None)

    def record(self, events: Sequence[LoopEvent]) -> None:
        """Submit `events` as Intercom data events, one `POST /events` each.

        Intercom ignores a repeat of the same user, event name and second, so a
        batch cut short may be submitted again whole. An event about a user that
        Intercom does not know is left out, with a warning.

        Raises:
            TransientError: try the batch again later.
            PermanentError: Intercom refused an event (not for an unknown user).
        """
        for event in events:
            try:
                self._record_one(event)
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                logger.warning(
                    "Intercom knows no user %s; event %s was left out.",
                    event.user_id,
                    event.insert_id,
                )

    def _record_one(self, event: LoopEvent) -> None:
        request = CreateDataEventRequestWithUserId(
            user_id=event.user_id,
            event_name=event.name,
            created_at=int(event.time.timestamp()),
            metadata=_metadata(event) or None,
        )
        self._call(
            "POST /events",
            lambda: self._sdk.events.create(
                request=request, request_options=_no_retries()
            ),
            safe_to_repeat=True,
        )

    # --- contacts ---------------------------------------------------------------

    def contact_of(self, user_id: str) -> str:
        """The Intercom contact id of our user `user_id`, from a cache or a search.

        Raises:
            PermanentError: Intercom has no contact with that `external_id`.
            TransientError: the search failed; try later.
        """
        cached = self._contacts.get(user_id) or self._cached_in_store(user_id)
        if cached is not None:
            self._contacts.put(user_id, cached)
            return cached

        found = self._search(user_id)
        if found is None:
            raise PermanentError(
                self.name,
                f"user {user_id} has no Intercom contact (no contact has that "
                "external_id)",
                404,
            )
        self.remember_contact(user_id, found)
        return found

    def remember_contact(self, user_id: str, contact_id: str) -> None:
        """Cache `contact_id` as the contact of `user_id`, for every worker.

        For contact ids known from elsewhere too (an Intercom export or webhook):
        sends to that user then need no search.
        """
        self._contacts.put(user_id, contact_id)
        if self._store is not None:
            key = self._contact_key(self._store, user_id)
            self._store.redis.set(key, contact_id, ex=CONTACT_TTL_S)

    def _forget(self, user_id: str) -> None:
        self._contacts.drop(user_id)
        if self._store is not None:
            self._store.redis.delete(self._contact_key(self._store, user_id))

    def _cached_in_store(self, user_id: str) -> str | None:
        if self._store is None:
            return None
        cached = self._store.redis.get(self._contact_key(self._store, user_id))
        return str(cached) if cached else None

    @staticmethod
    def _contact_key(store: Store, user_id: str) -> str:
        return store.key("intercom", "contact", user_id)

    def _search(self, user_id: str) -> str | None:
        query = SingleFilterSearchRequest(
            field="external_id", operator="=", value=user_id
        )
        try:
            page = self._call(
                "POST /contacts/search",
                lambda: self._sdk.contacts.search(
                    query=query,
                    pagination=StartingAfterPaging(per_page=SEARCH_PAGE),
                    request_options=_no_retries(),
                ),
                safe_to_repeat=True,
            )
        except _Unread:
            raise TransientError(
                self.name, "POST /contacts/search: the answer could not be read"
            ) from None

        # Only the first page is read: the SDK's pager would fetch the next
        # pages outside the budget, and an external_id names one user. A lead
        # with that id is not the product's user, whom the message addresses.
        for contact in page.items or []:
            if contact.external_id == user_id and contact.role in (None, "user"):
                return str(contact.id)
        return None

    # --- doctor -----------------------------------------------------------------

    def check(self) -> list[Check]:
        """Whether the access token works, by `GET /me` (which changes nothing)."""
        what = "access token"
        try:
            admin = self._call(
                "GET /me",
                lambda: self._sdk.admins.identify(request_options=_no_retries()),
                safe_to_repeat=True,
            )
        except _Unread:
            detail = f"{self.base_url} did not answer as Intercom does; check the URL"
            return [Check(self.name, what, False, detail)]
        except PermanentError as exc:
            return [Check(self.name, what, False, _hint(exc))]
        except VendorError as exc:
            detail = f"{exc}; is {self.base_url} reachable from here?"
            return [Check(self.name, what, False, detail)]

        app = getattr(admin, "app", None)
        workspace = getattr(app, "id_code", None)
        detail = f"works for workspace `{workspace}`" if workspace else "works"
        return [Check(self.name, what, True, detail)]

    # --- conformance --------------------------------------------------------------

    @classmethod
    def conformance_cases(
        cls, base_url: str, store: Store, budget: Cap
    ) -> list[ConformanceCase]:
        """An in-app message and an email, each sent to the Intercom at `base_url`.

        The sample user's contact is cached as a search would leave it, so that
        each case's only request is the send: a fault the suite switches on meets
        `POST /messages` itself.
        """
        references = {
            "in-app message": IntercomReference(from_admin=SAMPLE_ADMIN_ID),
            "email": IntercomReference(
                message_type="email", from_admin=SAMPLE_ADMIN_ID
            ),
        }
        cases = []
        for label, reference in references.items():
            sender = cls(
                CONFORMANCE_TOKEN,
                base_url=base_url,
                store=store,
                budgets={API_BUDGET: budget},
            )
            nudge = conformance_nudge(reference, f"conformance:intercom:{label}")
            sender.remember_contact(nudge.recipient.user_id, SAMPLE_CONTACT_ID)
            case = ConformanceCase(
                label=f"intercom {label}",
                sender=sender,
                nudge=nudge,
                secrets=(CONFORMANCE_TOKEN,),
                dedupes=False,
            )
            cases.append(case)
        return cases

    # --- calls ------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` as it is through the SDK's own HTTP client (its auth, base
        URL and `Intercom-Version`), and return the answer's JSON object.

        Sends take this path rather than `messages.create` for two reasons: the
        SDK's models spell the in-app type `inapp` where the 2.14 request schema
        allows only `in_app`, and turning bodies into models and back costs about
        1.5 ms of CPU a send, which 16 threads pay again in waiting for the GIL.
        A non-2xx answer raises the SDK's own `ApiError`, mapped as any other.
        """
        http = self._sdk._client_wrapper.httpx_client
        response = http.request(
            path, method="POST", json=body, request_options=_no_retries()
        )
        if not 200 <= response.status_code < 300:
            headers = dict(response.headers)
            raise ApiError(status_code=response.status_code, headers=headers)
        try:
            answer = response.json()
        except ValueError:
            raise _Unread() from None
        return answer if isinstance(answer, dict) else {}

    def _call(
        self, where: str, action: Callable[[], Result], *, safe_to_repeat: bool
    ) -> Result:
        """Make one SDK call under the budget and map how it ended.

        As `VendorHttp` does: a call that never reached Intercom is tried again
        at once, a few times, and so is a 5xx or a lost answer to a call that is
        safe to repeat; everything else is for the engine's retries.
        """
        retried = quick_retries(tenacity.retry_if_exception_type(_Again))
        try:
            result: Result = retried(self._once, where, action, safe_to_repeat)
        except _Again as exc:
            raise exc.error from None
        return result

    def _once(
        self, where: str, action: Callable[[], Result], safe_to_repeat: bool
    ) -> Result:
        self._wait_for_budget(where)
        started = time.monotonic()
        try:
            result = action()
        except ApiError as exc:
            raise self._refusal(where, exc, safe_to_repeat) from None
        except httpx.HTTPError as exc:
            note_failure(self.name, self._budget)
            raise _failure(self.name, where, exc, safe_to_repeat) from None
        except ValueError:
            # A body the SDK could not even decode (not UTF-8): status unknown.
            raise _unreadable(self.name, where, safe_to_repeat) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug("intercom %s answered in %.0f ms.", where, elapsed_ms)
        return result

    def _wait_for_budget(self, where: str) -> None:
        if self._budget is not None:
            take_budget(self.name, self._budget, self._budget_wait_ms, where)

    def _refusal(self, where: str, exc: ApiError, safe_to_repeat: bool) -> Exception:
        """What a non-2xx answer means, read off the SDK's error: never its body."""
        status = exc.status_code or 0
        if 200 <= status < 300:
            # The SDK raises this when a 2xx body is not JSON.
            return _Unread()
        # Every answer carries X-RateLimit-Reset; only a 429 asks us to wait for it.
        reset_after = _reset_after if status == 429 else None
        wait_s = retry_after_of(exc.headers or {}, reset_after)
        if status == 429 and self._budget is not None and wait_s:
            self._budget.hold_off(int(wait_s * 1000))
        error = error_for_status(self.name, where, status, wait_s)
        if isinstance(error, TransientError) and status != 429:
            note_failure(self.name, self._budget)
            if safe_to_repeat:
                return _Again(error)
        return error


class _OwnTimeouts(httpx.Client):
    """An httpx client that keeps its own timeouts on every request.

    The SDK passes one number per request (the client's read timeout), which
    would stretch the connect and pool timeouts to the read timeout.
    """

    def request(
        self, method: str, url: httpx.URL | str, **options: Any
    ) -> httpx.Response:
        options.pop("timeout", None)
        return super().request(method, url, **options)


class _RecentContacts:
    """The contact ids this process used last, at most `size` of them."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str) -> str | None:
        with self._lock:
            found = self._ids.get(user_id)
            if found is not None:
                self._ids.move_to_end(user_id)
            return found

    def put(self, user_id: str, contact_id: str) -> None:
        with self._lock:
            self._ids[user_id] = contact_id
            self._ids.move_to_end(user_id)
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def drop(self, user_id: str) -> None:
        with self._lock:
            self._ids.pop(user_id, None)


class _Again(Exception):
    """A failure worth a quick retry; `error` is what it means when none is left."""

    def __init__(self, error: VendorError) -> None:
        self.error = error


class _Unread(Exception):
    """A 2xx answer whose body could not be read: the call was taken."""


def _failure(
    vendor: str, where: str, exc: httpx.HTTPError, safe_to_repeat: bool
) -> Exception:
    error = error_for_transport(vendor, where, exc, safe_to_repeat=safe_to_repeat)
    never_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
    if isinstance(exc, never_sent) or safe_to_repeat:
        return _Again(error)
    return error


def _unreadable(vendor: str, where: str, safe_to_repeat: bool) -> VendorError:
    message = f"{where}: the answer could not be read"
    if safe_to_repeat:
        return TransientError(vendor, message)
    return AmbiguousError(vendor, message)


def _hint(exc: PermanentError) -> str:
    """What `doctor` says to fix; the token itself is never shown."""
    if exc.status == 401:
        return (
            "refused (401): set INTERCOM_ACCESS_TOKEN to the access token of your "
            "Intercom app, and `vendors.intercom.region` to its workspace's region"
        )
    if exc.status == 403:
        return (
            "not permitted (403): the Intercom app lacks a permission, or the "
            "workspace's plan does not include the API"
        )
    return str(exc)


def _no_retries() -> RequestOptions:
    # Our retries decide: the SDK's would repeat a send that may have been taken.
    return {"max_retries": 0}


def _metadata(event: LoopEvent) -> dict[str, str]:
    """The event's properties as Intercom metadata: strings, at most ten keys."""
    items = list(event.properties.items())
    if len(items) > EVENT_METADATA_KEYS:
        logger.warning(
            "Intercom keeps %d metadata keys; event %s has %d, the rest are left out.",
            EVENT_METADATA_KEYS,
            event.insert_id,
            len(items),
        )
    return {key: _text(value) for key, value in items[:EVENT_METADATA_KEYS]}


def _text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

"""The web process: the HTTP face of referloop, served by uvicorn.

- `GET /health`: whether Redis and the broker can be reached, for Heroku's and a
  load balancer's checks.
- `POST /webhooks/mixpanel/cohort-sync`: Mixpanel's cohort sync, a page of up to
  1,000 members at a time, behind HTTP Basic auth. A page is written to its
  snapshot and acknowledged at once; the diff and the decisions happen in
  workers. Mounted when `REFERLOOP_COHORT_SYNC_USER` and `_PASSWORD` are set.

- `POST /webhooks/amplitude/cohorts`: Amplitude's Cohort Webhook destination, a
  batch of users who entered or left a cohort, with a secret in a header the
  customer sets on the destination. Each `message_id` is applied once; only
  users it moves are judged, and the decisions happen in workers. Mounted when
  `REFERLOOP_AMPLITUDE_COHORT_SECRET` is set.

- `POST /events`: product events (a trigger such as "permissions set", or the
  invite events), one or a batch, signed with HMAC-SHA256 over timestamp and body
  (`Referloop-Signature`, as `integrations.webhook` signs), within a replay
  window, with key rotation; each event is kept once by its id. Mounted when
  `REFERLOOP_EVENT_SECRETS` is set.

It authenticates, validates and enqueues; work happens in workers. Whatever a
client sends gets a 2xx or a 4xx with a reason, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from integrations import amplitude_cohort_webhook as amplitude
from integrations.amplitude_cohort_webhook import (
    CohortWebhookError,
    CohortWebhookPage,
    parse_cohort_webhook,
)
from integrations.base import ProductEvent, Rejected
from integrations.filesource import read_event
from integrations.mixpanel import (
    DEFAULT_ACCOUNT_PROPERTY,
    CohortSyncError,
    CohortSyncPage,
    cohort_sync_answer,
    parse_cohort_sync,
)
from integrations.webhook import SignatureError, secret_list, verify
from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.engine import Engine
from orchestrator.errors import ConfigurationError
from orchestrator.loader import load
from orchestrator.settings import Settings, redis_client
from orchestrator.snapshots import Change
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
COHORT_SYNC_PATH = "/webhooks/mixpanel/cohort-sync"
EVENTS_PATH = "/events"
AMPLITUDE_COHORTS_PATH = "/webhooks/amplitude/cohorts"
DEFAULT_AMPLITUDE_HEADER = "Referloop-Amplitude-Secret"
SIGNATURE_HEADER = "Referloop-Signature"
# A signed request older or newer than this is refused, so a captured one cannot
# be replayed later; within it, event ids make a replay change nothing.
REPLAY_WINDOW_S = 300.0
MAX_EVENTS = 1_000
MAX_EVENTS_BYTES = 1024 * 1024
# Requests written together hold at most this many events.
MAX_GROUP_EVENTS = 2_000
WEB_REDIS_RETRIES = 2
WEB_REDIS_TIMEOUT_S = 2.0
# A page holds at most 1,000 members with a few properties each.
MAX_SYNC_BYTES = 8 * 1024 * 1024
# A batch of the Cohort Webhook holds users with up to 50 properties each.
MAX_AMPLITUDE_BYTES = 8 * 1024 * 1024
AMQP_PORT = 5672

Probe = Callable[[], bool]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app for `settings` (from the environment when not given)."""
    settings = settings or Settings.from_env()
    routes = [Route("/health", _health(settings), methods=["GET"])]
    takes_sync = bool(settings.cohort_sync_user and settings.cohort_sync_password)
    takes_amplitude = bool(settings.amplitude_cohort_secrets)
    if not settings.event_secrets and not takes_sync and not takes_amplitude:
        return Starlette(routes=routes)

    if settings.redis_url is None:
        raise ConfigurationError("the web endpoints need REDIS_URL")
    engine, declared = _engine(settings)
    if settings.event_secrets:
        events = EventsReceiver(engine, declared, settings.event_secrets)
        routes.append(Route(EVENTS_PATH, events.receive, methods=["POST"]))
    if takes_sync:
        receiver = CohortSyncReceiver.from_settings(settings, engine, declared)
        routes.append(Route(COHORT_SYNC_PATH, receiver.receive, methods=["POST"]))
    if takes_amplitude:
        amplitude_receiver = AmplitudeCohortReceiver.from_settings(
            settings, engine, declared
        )
        routes.append(
            Route(AMPLITUDE_COHORTS_PATH, amplitude_receiver.receive, methods=["POST"])
        )
    return Starlette(routes=routes)


def _health(settings: Settings) -> Callable[[Request], Awaitable[JSONResponse]]:
    state = _probe_client(settings)
    amqp = settings.broker_url
    probes: dict[str, Probe] = {
        "redis": lambda: state is None or _pings(state),
        # The Redis broker lives on the same Redis as the state.
        "broker": lambda: (
            _tcp_answers(amqp) if amqp else state is None or _pings(state)
        ),
    }

    async def health(request: Request) -> JSONResponse:
        checks = {name: probe() for name, probe in probes.items()}
        healthy = all(checks.values())
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return health


class CohortSyncReceiver:
    """Mixpanel's cohort-sync webhook: authenticated, validated, written, answered.

    Every answer has the shape Mixpanel expects (`action` echoed, `status`, and
    an `error.message` its UI shows). Mixpanel pauses a sync on a 4xx and retries
    a 5xx, so a page that could not be stored (Redis down) gets a 503.
    """

    def __init__(
        self,
        engine: Engine,
        declared: actors.Actors,
        user: str,
        password: str,
        account_property: str | None = DEFAULT_ACCOUNT_PROPERTY,
    ) -> None:
        self.engine = engine
        self.declared = declared
        self._credentials = (user.encode(), password.encode())
        self.account_property = account_property

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, declared: actors.Actors
    ) -> CohortSyncReceiver:
        user, password = settings.cohort_sync_user, settings.cohort_sync_password
        if not user or not password:
            raise ConfigurationError(
                "set REFERLOOP_COHORT_SYNC_USER and REFERLOOP_COHORT_SYNC_PASSWORD"
            )
        account = (
            os.environ.get("MIXPANEL_ACCOUNT_PROPERTY") or DEFAULT_ACCOUNT_PROPERTY
        )
        return cls(engine, declared, user, password, account)

    async def receive(self, request: Request) -> JSONResponse:
        if not self._authorized(request.headers.get("authorization")):
            return _sync_answer("", "the user name or password is wrong", 401)
        body = await _read_capped(request, MAX_SYNC_BYTES)
        if body is None:
            limit = MAX_SYNC_BYTES // (1024 * 1024)
            return _sync_answer("", f"the page is larger than {limit} MB", 413)
        try:
            page = parse_cohort_sync(body, account_property=self.account_property)
        except CohortSyncError as exc:
            return _sync_answer(exc.action or "", str(exc), 400)
        try:
            rejected = await run_in_threadpool(self._apply, page)
        except (redis.RedisError, OSError):
            logger.warning("Cohort sync page of %s not stored: Redis.", page.cohort)
            return _sync_answer(page.action, "referloop cannot store it now", 503)
        logger.info(
            "Cohort sync of %s: %s page %d of %d, %d members, %d rejected.",
            page.cohort,
            page.action,
            page.page,
            page.total_pages,
            len(page.members) - len(rejected),
            len(rejected),
        )
        return JSONResponse(cohort_sync_answer(page.action))

    def _apply(self, page: CohortSyncPage) -> list[Rejected]:
        push_id = f"sync-{page.session_id}"
        rejected = self.engine.apply_push(
            page.cohort,
            push_id,
            page.action,
            page.page,
            page.members,
            self.declared.decide_all,
        )
        if page.action == "members" and page.is_last:
            self.declared.finish_push.send(page.cohort, push_id)
        return rejected

    def _authorized(self, header: str | None) -> bool:
        given = _basic_credentials(header)
        if given is None:
            return False
        user_ok = hmac.compare_digest(given[0], self._credentials[0])
        password_ok = hmac.compare_digest(given[1], self._credentials[1])
        return user_ok and password_ok


class AmplitudeCohortReceiver:
    """Amplitude's Cohort Webhook: authenticated, validated, applied once, answered.

    Amplitude retries a batch it has no answer to within a second or two, and
    may send the batches of a sync in any order: each batch is applied in one
    Redis script and its decisions are enqueued, never made here. A batch whose
    `message_id` was applied before is answered 200 and changes nothing.
    """

    def __init__(
        self,
        engine: Engine,
        declared: actors.Actors,
        secrets: str,
        header: str = DEFAULT_AMPLITUDE_HEADER,
        account_property: str | None = amplitude.DEFAULT_ACCOUNT_PROPERTY,
    ) -> None:
        self.engine = engine
        self.declared = declared
        self._secrets = [item.encode() for item in secret_list(secrets)]
        self.header = header
        self.account_property = account_property

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, declared: actors.Actors
    ) -> AmplitudeCohortReceiver:
        if not settings.amplitude_cohort_secrets:
            raise ConfigurationError("set REFERLOOP_AMPLITUDE_COHORT_SECRET")
        header = (
            os.environ.get("REFERLOOP_AMPLITUDE_COHORT_HEADER")
            or DEFAULT_AMPLITUDE_HEADER
        )
        account = (
            os.environ.get("AMPLITUDE_ACCOUNT_PROPERTY")
            or amplitude.DEFAULT_ACCOUNT_PROPERTY
        )
        return cls(engine, declared, settings.amplitude_cohort_secrets, header, account)

    async def receive(self, request: Request) -> JSONResponse:
        if not self._authorized(request.headers.get(self.header)):
            return _refusal(f"the `{self.header}` header is missing or wrong", 401)
        body = await _read_capped(request, MAX_AMPLITUDE_BYTES)
        if body is None:
            limit = MAX_AMPLITUDE_BYTES // (1024 * 1024)
            return _refusal(f"the batch is larger than {limit} MB", 413)
        try:
            page = parse_cohort_webhook(body, account_property=self.account_property)
        except CohortWebhookError as exc:
            return _refusal(str(exc), 400)
        try:
            change = await run_in_threadpool(self._apply, page)
        except (redis.RedisError, OSError):
            logger.warning("Cohort webhook batch of %s not stored: Redis.", page.cohort)
            return _refusal("referloop cannot store it now; send it again", 503)
        return self._answer(page, change)

    def _apply(self, page: CohortWebhookPage) -> Change:
        return self.engine.apply_change(
            page.cohort,
            page.message_id,
            entered=page.entered,
            computed_ms=page.computed_ms,
            members=page.members,
            decide=self.declared.decide_all,
        )

    def _answer(self, page: CohortWebhookPage, change: Change) -> JSONResponse:
        rejected = [m for m in page.members if isinstance(m, Rejected)]
        direction = "entered" if page.entered else "left"
        logger.info(
            "Cohort webhook batch of %s: %d users %s%s, %d rejected.",
            page.cohort,
            len(change.moved),
            direction,
            " (a repeat; nothing changed)" if change.is_repeat else "",
            len(rejected),
        )
        return JSONResponse(
            {
                "message_id": page.message_id,
                "repeat": change.is_repeat,
                direction: 0 if change.is_repeat else len(change.moved),
                "rejected": [
                    {"where": item.where, "reason": item.reason} for item in rejected
                ],
            }
        )

    def _authorized(self, given: str | None) -> bool:
        if given is None:
            return False
        candidate = given.strip().encode()
        # Every secret is compared, so the time taken says nothing of which
        # one matched.
        matches = [hmac.compare_digest(candidate, secret) for secret in self._secrets]
        return any(matches)


class EventsReceiver:
    """Product events, signed by the product: verified, read, kept, answered.

    The answer says how many events were accepted and, for each refused one, its
    index and why. A request none of whose events can be used is a 400; one whose
    signature does not verify is a 401 that says what is wrong with it.
    """

    def __init__(
        self,
        engine: Engine,
        declared: actors.Actors,
        signing_secrets: str,
        tolerance_s: float = REPLAY_WINDOW_S,
    ) -> None:
        self.engine = engine
        self.declared = declared
        self.signing_secrets = secret_list(signing_secrets)
        self.tolerance_s = tolerance_s
        self.writer = GroupWriter(self._store)

    async def receive(self, request: Request) -> JSONResponse:
        body = await _read_capped(request, MAX_EVENTS_BYTES)
        if body is None:
            limit = MAX_EVENTS_BYTES // 1024
            return _refusal(f"the body is larger than {limit} KB", 413)
        try:
            verify(
                self.signing_secrets,
                request.headers.get(SIGNATURE_HEADER),
                body,
                time.time(),
                self.tolerance_s,
            )
        except SignatureError as exc:
            logger.warning("Refused product events: %s.", exc.reason)
            return _refusal(f"the signature does not verify: {exc}", 401)
        read = _read_events(body)
        if isinstance(read, str):
            return _refusal(read, 400)
        events = [item for item in read if isinstance(item, ProductEvent)]
        refused = [
            {"index": index, "reason": item.reason}
            for index, item in enumerate(read)
            if isinstance(item, Rejected)
        ]
        if not events:
            return JSONResponse(
                {"accepted": 0, "rejected": refused, "error": "no event can be used"},
                status_code=400,
            )
        try:
            await self.writer.write(events)
        except (redis.RedisError, OSError):
            logger.warning("Product events not stored: Redis.")
            return _refusal("referloop cannot store them now; send them again", 503)
        if refused:
            logger.info(
                "Took %d product events, refused %d.", len(events), len(refused)
            )
        else:
            logger.debug("Took %d product events.", len(events))
        return JSONResponse({"accepted": len(events), "rejected": refused})

    def _store(self, events: list[ProductEvent]) -> None:
        self.engine.ingest_events(events, self.declared.decide_all)


class GroupWriter:
    """Store the events of requests that arrive together in one round of writes.

    Each request waits until its events are stored, so an answer still means
    "kept"; but while one group is being written, the requests that arrive join
    the next, which is written in one pipeline and one enqueue. Under load the
    Redis round trips and the hand-offs to a thread are shared by the group.
    A failed write fails every request of its group, and each may be sent again.
    """

    def __init__(self, store: Callable[[list[ProductEvent]], None]) -> None:
        self._store = store
        self._pending: list[tuple[list[ProductEvent], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, events: list[ProductEvent]) -> None:
        """Return once `events` are stored; raise what storing them raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((events, done))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                # Requests already read in this turn of the loop join the group.
                await asyncio.sleep(0)
                group = self._take()
                events = [event for part, _ in group for event in part]
                try:
                    await run_in_threadpool(self._store, events)
                except Exception as exc:
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flushing = None

    def _take(self) -> list[tuple[list[ProductEvent], asyncio.Future[None]]]:
        """The oldest requests, up to MAX_GROUP_EVENTS events (at least one)."""
        taken: list[tuple[list[ProductEvent], asyncio.Future[None]]] = []
        count = 0
        while self._pending and (
            not taken or count + len(self._pending[0][0]) <= MAX_GROUP_EVENTS
        ):
            item = self._pending.pop(0)
            taken.append(item)
            count += len(item[0])
        return taken


def _read_events(body: bytes) -> list[ProductEvent | Rejected] | str:
    """The events of a body: one event object, or `{"events": [...]}`; or why
    the body cannot be read at all."""
    try:
        loaded = json.loads(body)
    except (ValueError, RecursionError):
        return "the body is not JSON"
    if isinstance(loaded, dict) and "events" in loaded:
        records = loaded["events"]
        if not isinstance(records, list):
            return "`events` is not a list"
    elif isinstance(loaded, dict):
        records = [loaded]
    else:
        return "the body is not a JSON object"
    if not records:
        return "`events` is empty"
    if len(records) > MAX_EVENTS:
        return f"at most {MAX_EVENTS} events a request"
    return [
        read_event(f"events[{index}]", record) for index, record in enumerate(records)
    ]


def _refusal(error: str, status: int) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


def _engine(settings: Settings) -> tuple[Engine, actors.Actors]:
    """An engine that stores what arrives and enqueues the work, as the clock's."""
    # A client waiting out a Redis outage would hold the answer until the vendor
    # gives up on it: the web fails fast with a 503, and the sender retries.
    assert settings.redis_url is not None
    client = redis_client(
        settings.redis_url,
        decode_responses=True,
        retry=Retry(EqualJitterBackoff(cap=0.5, base=0.1), WEB_REDIS_RETRIES),
        socket_timeout=WEB_REDIS_TIMEOUT_S,
        socket_connect_timeout=WEB_REDIS_TIMEOUT_S,
    )
    store = Store(client, settings.namespace)
    declared = actors.declare(build_broker(settings))
    catalog = load([settings.playbooks])
    engine = Engine(store, catalog, InviteSigner.throwaway(), {}, declared.schedule)
    return engine, declared


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    if header is None or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (ValueError, binascii.Error):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it proves longer than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _sync_answer(action: str, error: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="referloop"'} if status == 401 else None
    return JSONResponse(
        cohort_sync_answer(action, error=error, code=status),
        status_code=status,
        headers=headers,
    )


def _probe_client(settings: Settings) -> redis.Redis | None:
    """A client that answers at once: a health check must not ride out an outage."""
    if settings.redis_url is None:
        return None
    no_retry = Retry(NoBackoff(), 0)
    return redis_client(
        settings.redis_url, retry=no_retry, socket_timeout=PROBE_TIMEOUT_S
    )


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        logger.warning("Health check: Redis does not answer.")
        return False


def _tcp_answers(url: str) -> bool:
    """Whether the broker's host takes a connection (RabbitMQ)."""
    parts = urlsplit(url)
    address = (parts.hostname or "localhost", parts.port or AMQP_PORT)
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        logger.warning("Health check: the broker does not answer.")
        return False

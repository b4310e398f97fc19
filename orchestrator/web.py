"""The web process: the HTTP face of referloop, served by uvicorn.

- `GET /health`: whether Redis and the broker can be reached, for Heroku's and a
  load balancer's checks.
- `POST /webhooks/mixpanel/cohort-sync`: Mixpanel's cohort sync, a page of up to
  1,000 members at a time, behind HTTP Basic auth. A page is written to its
  snapshot and acknowledged at once; the diff and the decisions happen in
  workers. Mounted when `REFERLOOP_COHORT_SYNC_USER` and `_PASSWORD` are set.

It authenticates, validates and enqueues; work happens in workers. Whatever a
client sends gets a 2xx or a 4xx with a reason, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from integrations.base import Rejected
from integrations.mixpanel import (
    DEFAULT_ACCOUNT_PROPERTY,
    CohortSyncError,
    CohortSyncPage,
    cohort_sync_answer,
    parse_cohort_sync,
)
from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.engine import Engine
from orchestrator.errors import ConfigurationError
from orchestrator.loader import load
from orchestrator.settings import Settings, redis_client
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
COHORT_SYNC_PATH = "/webhooks/mixpanel/cohort-sync"
# A page holds at most 1,000 members with a few properties each.
MAX_SYNC_BYTES = 8 * 1024 * 1024
AMQP_PORT = 5672

Probe = Callable[[], bool]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app for `settings` (from the environment when not given)."""
    settings = settings or Settings.from_env()
    routes = [Route("/health", _health(settings), methods=["GET"])]
    if settings.cohort_sync_user and settings.cohort_sync_password:
        if settings.redis_url is None:
            raise ConfigurationError("the cohort-sync endpoint needs REDIS_URL")
        receiver = CohortSyncReceiver.from_settings(settings)
        routes.append(Route(COHORT_SYNC_PATH, receiver.receive, methods=["POST"]))
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
    def from_settings(cls, settings: Settings) -> CohortSyncReceiver:
        store = Store.from_settings(settings)
        declared = actors.declare(build_broker(settings))
        catalog = load([settings.playbooks])
        engine = Engine(store, catalog, InviteSigner.throwaway(), {}, declared.schedule)
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

"""The web process: the HTTP face of referloop, served by uvicorn.

Today it answers `GET /health` with whether Redis and the broker can be reached,
for Heroku's and a load balancer's checks. It authenticates, validates and
enqueues; work happens in workers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.settings import Settings, redis_client

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
AMQP_PORT = 5672

Probe = Callable[[], bool]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app for `settings` (from the environment when not given)."""
    settings = settings or Settings.from_env()
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

    return Starlette(routes=[Route("/health", health, methods=["GET"])])


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

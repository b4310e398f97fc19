"""The web process: the HTTP face of referloop, served by uvicorn.

Today it answers `GET /health` with whether Redis and the broker can be reached,
for Heroku's and a load balancer's checks. It authenticates, validates and
enqueues; work happens in workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dramatiq
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.broker import build_broker
from orchestrator.settings import Settings
from orchestrator.state import Store

logger = logging.getLogger(__name__)

Probe = Callable[[], bool]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app for `settings` (from the environment when not given)."""
    settings = settings or Settings.from_env()
    store = Store.from_settings(settings)
    broker = build_broker(settings)
    probes: dict[str, Probe] = {
        "redis": lambda: _pings(store.redis),
        "broker": lambda: _broker_answers(broker),
    }

    async def health(request: Request) -> JSONResponse:
        checks = {name: probe() for name, probe in probes.items()}
        healthy = all(checks.values())
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return Starlette(routes=[Route("/health", health, methods=["GET"])])


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        logger.warning("Health check: Redis does not answer.")
        return False


def _broker_answers(broker: dramatiq.Broker) -> bool:
    client = getattr(broker, "client", None)
    if client is None:  # the in-process broker, or RabbitMQ: reachable if built
        return True
    return _pings(client)

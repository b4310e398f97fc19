"""The Dramatiq broker that carries referloop's actors, chosen from the settings.

`DRAMATIQ_BROKER_URL` (amqp) gives a RabbitMQ broker, `REDIS_URL` a Redis broker,
and neither the in-process stub broker of the embedded default. Every broker gets
the same middleware, chosen on purpose and in this order:

- `AgeLimit`: no default age; an actor sets `max_age` when a stale message is
  worth nothing (a nudge deferred by quiet hours may wait for hours).
- `TimeLimit`: five minutes per message; one actor does one step.
- `ShutdownNotifications`: off by default, so a stopping worker lets in-flight
  messages finish instead of interrupting them.
- `Callbacks` and `Pipelines`: for `on_success`/`on_failure` and pipes.
- `Retries`: at most `MAX_RETRIES`, exponential backoff between
  `MIN_BACKOFF_MS` and `MAX_BACKOFF_MS`. Actors raise `dramatiq.Retry(delay=ms)`
  themselves to honour a vendor's `Retry-After`, and declare `throws=` for
  permanent errors, which are not retried.
- `CurrentMessage`: so an actor can log the id of the message it runs.

Prometheus is left out: a Heroku worker dyno takes no inbound HTTP to scrape.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from orchestrator.settings import Settings, redis_client

TIME_LIMIT_MS = 5 * 60 * 1000
MAX_RETRIES = 8
MIN_BACKOFF_MS = 15 * 1000
MAX_BACKOFF_MS = 60 * 60 * 1000

# A SIGKILLed worker leaves its fetched messages in its ack set. Another worker
# puts them back when one of its broker commands runs a maintenance pass (chance
# MAINTENANCE_CHANCE / MAINTENANCE_SCALE per command, and only for that command's
# queue) after the dead worker's last heartbeat is HEARTBEAT_TIMEOUT_MS old.
#
# A live worker's consumers fetch each queue and its delay queue at least once a
# second when idle (Dramatiq's worker_timeout, 1,000 ms), and every fetch is a
# heartbeat. So:
# - 15 s without a heartbeat is 15 missed fetches: a Redis blip or a consumer
#   restart (3 s) does not make a live worker look dead and run its work twice.
# - 200,000 in 1,000,000 is one fetch in five. One surviving idle worker fetches
#   the queue at least once a second (enqueues onto it run passes too), so the
#   chance that no pass has run 30 s after the timeout is 0.8 ** 30 = 0.1 %,
#   and the mean wait is 5 s or less.
# - Worst likely case: 15 s + 30 s = 45 s, inside the minute; typically 20 s.
# A pass is two range reads on sorted sets (and a KEYS scan for each dead worker
# it finds, which is rare), so running it this often is cheap. Dramatiq's
# defaults, 60 s and 1 in 1,000, mean 60 s plus about 1,000 fetches: a quarter
# of an hour.
HEARTBEAT_TIMEOUT_MS = 15 * 1000
MAINTENANCE_CHANCE = MAINTENANCE_SCALE // 5


def build_broker(settings: Settings) -> dramatiq.Broker:
    """The broker for these settings; `install` makes it the global one."""
    if settings.broker_url is not None:
        return RabbitmqBroker(url=settings.broker_url, middleware=_middleware())
    if settings.redis_url is not None:
        return _redis_broker(settings.redis_url, settings.namespace)
    return StubBroker(middleware=_middleware())


def install(broker: dramatiq.Broker) -> None:
    """Make `broker` the one that actors declared from now on are bound to."""
    dramatiq.set_broker(broker)


def _redis_broker(url: str, namespace: str) -> RedisBroker:
    # DESIGN, "Broker and state": RedisBroker(url=..., ssl_cert_reqs=None)
    # drops the keyword, so the client is built here. Dramatiq stores message
    # bodies as bytes: this client must not decode responses. RedisBroker's
    # __init__ has no annotations in Dramatiq 2.2.
    return RedisBroker(  # type: ignore[no-untyped-call]
        client=redis_client(url),
        namespace=f"{namespace}-queue",
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
        middleware=_middleware(),
    )


def _middleware() -> list[Middleware]:
    """A fresh set per broker: TimeLimit and ShutdownNotifications hold state."""
    return [
        AgeLimit(),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(notify_shutdown=False),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=MAX_RETRIES,
            min_backoff=MIN_BACKOFF_MS,
            max_backoff=MAX_BACKOFF_MS,
        ),
        CurrentMessage(),
    ]

"""A slow actor for the worker tests, and a script that runs a worker for it.

The tests run this file as a worker process:

    python tests/orchestrator/worker_actors.py REDIS_URL NAMESPACE [STOP_TIMEOUT_S]

and, in the test process, declare the same actor on a broker of their own to send
it messages. The actor leaves marker keys in Redis so the test can see how far a
message got: `<marker>:started` (a count of starts) and `<marker>:done`.
"""

from __future__ import annotations

import logging
import sys
import time

import dramatiq
import redis

from orchestrator.broker import build_broker
from orchestrator.settings import Settings
from orchestrator.worker import DEFAULT_STOP_TIMEOUT_S, run_worker

QUEUE = "slow"
SLEEP_SLICE_S = 0.05


def declare(
    broker: dramatiq.Broker, redis_url: str, queue: str = QUEUE
) -> dramatiq.Actor:
    """Declare `mark_slowly` on `broker`, writing its markers to `redis_url`."""
    client = redis.Redis.from_url(redis_url)

    def mark_slowly(marker: str, seconds: float) -> None:
        client.incr(f"{marker}:started")
        # Short sleeps: TimeLimit's exception reaches a thread between them.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(SLEEP_SLICE_S)
        client.set(f"{marker}:done", "1")

    return dramatiq.actor(
        mark_slowly,
        broker=broker,
        queue_name=queue,
        max_retries=0,
    )


def broker_for(redis_url: str, namespace: str) -> dramatiq.Broker:
    """The Redis broker a referloop worker with these settings would use."""
    return build_broker(Settings(redis_url=redis_url, namespace=namespace))


def main(argv: list[str]) -> int:
    redis_url, namespace = argv[0], argv[1]
    stop_timeout_s = float(argv[2]) if len(argv) > 2 else DEFAULT_STOP_TIMEOUT_S
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")

    broker = broker_for(redis_url, namespace)
    declare(broker, redis_url)
    return run_worker(broker, threads=1, stop_timeout_s=stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

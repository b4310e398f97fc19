"""What the benchmarks share: the Redis database they may flush, or one clear line,
and what Redis says it has spent."""

from __future__ import annotations

import sys
from typing import Any, cast

import redis

URL = "redis://127.0.0.1:6379/14"


def connect() -> redis.Redis:
    """A client on the benchmarks' database; exits with one line if none answers."""
    client = redis.Redis.from_url(URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"error: no Redis answers at {URL}: {exc}", file=sys.stderr)
        sys.exit(1)
    return client


def redis_spent(client: redis.Redis) -> tuple[float, int]:
    """Redis's CPU seconds (user and system) and commands processed so far, as
    INFO reports them; a difference of two readings is what a run cost it."""
    cpu = cast(dict[str, Any], client.info("cpu"))
    stats = cast(dict[str, Any], client.info("stats"))
    seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return seconds, int(stats["total_commands_processed"])

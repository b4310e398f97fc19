"""What the benchmarks share: the Redis database they may flush, or one clear line."""

from __future__ import annotations

import sys

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

"""Where referloop keeps its state: Redis keys under one namespace.

All state (ledger, caps, snapshots, triggers) goes through a `Store`, which names
keys `<namespace>:<part>:<part>`. The embedded default gives it an in-process
Redis-compatible store instead of a server; nothing in it outlives the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.settings import Settings, redis_client


@dataclass(frozen=True)
class Store:
    """A Redis client (decoding to `str`) and the namespace of referloop's keys."""

    redis: redis.Redis
    namespace: str = "referloop"

    def key(self, *parts: Any) -> str:
        return ":".join([self.namespace, *(str(part) for part in parts)])

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        if settings.redis_url is None:
            return cls.in_memory(settings.namespace)
        client = redis_client(settings.redis_url, decode_responses=True)
        return cls(client, settings.namespace)

    @classmethod
    def in_memory(cls, namespace: str = "referloop") -> Store:
        """An in-process store for the embedded default and quick runs."""
        # Imported here: only local runs need it, and it costs every process
        # half a second to import.
        import fakeredis

        server = fakeredis.FakeServer()
        client = fakeredis.FakeRedis(server=server, decode_responses=True)
        return cls(client, namespace)

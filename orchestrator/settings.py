"""Settings from the environment, and the Redis clients they call for.

Every setting has a default that suits a laptop; none is read anywhere else. An
error names the setting, never its value (a URL may carry a password).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from orchestrator.errors import ConfigurationError

DEFAULT_NAMESPACE = "referloop"
DEFAULT_THREADS = 8
DEFAULT_POLL_MINUTES = 30
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# A Redis that restarts or fails over is back within seconds; a client retries a
# command for about half a minute (12 tries, backoff 0.25 s doubling to 5 s, with
# jitter) before an error reaches the code. Every write is safe to repeat.
REDIS_RETRIES = 12
REDIS_BACKOFF_BASE_S = 0.25
REDIS_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class Settings:
    """What a referloop process needs to know about where it runs."""

    redis_url: str | None = None
    broker_url: str | None = None
    playbooks: Path = Path("playbooks")
    namespace: str = DEFAULT_NAMESPACE
    worker_threads: int = DEFAULT_THREADS
    log_format: Literal["text", "json"] = "text"
    outbox: Path | None = None
    source_file: Path | None = None
    poll_minutes: int = DEFAULT_POLL_MINUTES
    cohort_sync_user: str | None = None
    cohort_sync_password: str | None = None
    event_secrets: str | None = None
    amplitude_cohort_secrets: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        redis_url = source.get("REDIS_URL") or None
        if redis_url is not None and not redis_url.startswith(REDIS_SCHEMES):
            raise ConfigurationError("REDIS_URL must start with redis://, rediss://")
        broker_url = source.get("DRAMATIQ_BROKER_URL") or None
        if broker_url is not None and not broker_url.startswith("amqp"):
            raise ConfigurationError("DRAMATIQ_BROKER_URL must be an amqp:// URL")
        if broker_url is not None and redis_url is None:
            raise ConfigurationError("DRAMATIQ_BROKER_URL needs REDIS_URL for state")
        return cls(
            redis_url=redis_url,
            broker_url=broker_url,
            playbooks=Path(source.get("REFERLOOP_PLAYBOOKS", "playbooks")),
            namespace=source.get("REFERLOOP_NAMESPACE", DEFAULT_NAMESPACE),
            worker_threads=_positive_int(
                source, "REFERLOOP_WORKER_THREADS", DEFAULT_THREADS
            ),
            poll_minutes=_positive_int(
                source, "REFERLOOP_POLL_MINUTES", DEFAULT_POLL_MINUTES
            ),
            source_file=_path(source, "REFERLOOP_SOURCE_FILE"),
            log_format="json" if source.get("LOG_FORMAT") == "json" else "text",
            outbox=_path(source, "REFERLOOP_OUTBOX"),
            cohort_sync_user=source.get("REFERLOOP_COHORT_SYNC_USER") or None,
            cohort_sync_password=source.get("REFERLOOP_COHORT_SYNC_PASSWORD") or None,
            event_secrets=source.get("REFERLOOP_EVENT_SECRETS") or None,
            amplitude_cohort_secrets=(
                source.get("REFERLOOP_AMPLITUDE_COHORT_SECRET") or None
            ),
        )

    @property
    def is_embedded(self) -> bool:
        """True with no REDIS_URL: one process, in-memory state, nothing durable."""
        return self.redis_url is None


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client for `url`; `rediss://` accepts Heroku's self-signed certificate.

    Commands are retried through a short outage (see `REDIS_RETRIES`); pass
    `retry=` to change that, as a health check that must answer at once does.

    Heroku Key-Value Store serves TLS with a self-signed certificate, so the
    certificate is not verified; the connection is still encrypted.
    """
    if url.startswith("rediss://"):
        options.setdefault("ssl_cert_reqs", None)
    options.setdefault("health_check_interval", 30)
    backoff = EqualJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S)
    options.setdefault("retry", Retry(backoff, REDIS_RETRIES))
    options.setdefault("socket_keepalive", True)
    return redis.Redis.from_url(url, **options)


def _path(source: Mapping[str, str], name: str) -> Path | None:
    raw = source.get(name)
    return Path(raw) if raw else None


def _positive_int(source: Mapping[str, str], name: str, default: int) -> int:
    raw = source.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"{name} must be a whole number of 1 or more")
    return int(raw)

"""The web process over real HTTP on loopback: the health check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from web_rig import free_port, serving

from orchestrator.settings import Settings
from orchestrator.web import create_app


@contextmanager
def _serving(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings)) as base:
        yield base


def test_health_says_ok_when_redis_and_the_broker_answer(redis_url):
    """Both reachable: 200 and each check true."""
    with _serving(Settings(redis_url=redis_url)) as base:
        answer = httpx.get(f"{base}/health", timeout=5)

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "checks": {"redis": True, "broker": True}}


def test_health_says_unavailable_when_redis_does_not_answer():
    """Redis unreachable: 503, so that the platform stops routing here."""
    closed = f"redis://127.0.0.1:{free_port()}/0"

    with _serving(Settings(redis_url=closed)) as base:
        answer = httpx.get(f"{base}/health", timeout=10)

    assert answer.status_code == 503
    assert answer.json()["checks"] == {"redis": False, "broker": False}


def test_health_is_the_only_route():
    """Anything else is a 404, not a 500."""
    with _serving(Settings()) as base:
        answer = httpx.post(f"{base}/health", timeout=5)
        missing = httpx.get(f"{base}/nothing", timeout=5)

    assert (answer.status_code, missing.status_code) == (405, 404)

"""What every test may use: a real Redis, with a database of the suite's own.

Tests talk to the Redis on 127.0.0.1:6379 (database 15, flushed around each test).
When nothing answers there, a `redis-server` is started for the run on a free port;
when there is no `redis-server` either, the run fails with one line that says so.
It never skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from orchestrator.state import Store

# Property tests judge behaviour, never speed: on a shared, loaded machine the time
# a draw or an example takes says nothing about the code under test.
settings.register_profile(
    "referloop", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("referloop")

DEFAULT_URL = "redis://127.0.0.1:6379/15"
TEST_DB = 15
START_TIMEOUT_S = 10.0


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a Redis database that the tests may flush."""
    url = os.environ.get("REFERLOOP_TEST_REDIS_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            "no Redis answers on 127.0.0.1:6379 and redis-server is not installed: "
            "install it (apt-get install redis-server) or set REFERLOOP_TEST_REDIS_URL",
            pytrace=False,
        )
    port = _free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/{TEST_DB}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(url):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"redis-server did not start on port {port}", pytrace=False)
        time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    """A store on the test database, empty before and after the test."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield Store(client, "referloop-test")
    client.flushdb()
    client.close()

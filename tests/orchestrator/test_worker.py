"""The broker and the worker process: real Redis, RabbitMQ and worker processes.

Each worker test runs `worker_actors.py` as a separate process, as Heroku runs
`referloop worker`, and talks to it only through Redis and signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import dramatiq
import pika
import pytest
import worker_actors
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from redis.connection import SSLConnection

from orchestrator import broker as broker_module
from orchestrator.broker import build_broker, install
from orchestrator.settings import Settings
from orchestrator.state import Store

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(worker_actors.__file__).resolve()
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
POLL_S = 0.05
START_TIMEOUT_S = 15.0
# The redelivery promise of DESIGN, "Worker entrypoint": within a minute.
REDELIVERY_TIMEOUT_S = 60.0


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own, so no other worker takes its messages."""
    return f"referloop-test-{uuid4().hex[:8]}"


@pytest.fixture
def marker(namespace: str) -> str:
    """The prefix of the keys the slow actor leaves, in the test's namespace."""
    return f"{namespace}:marker"


@pytest.fixture
def start_worker(
    redis_url: str, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start worker processes on the test Redis; kill what is left at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(stop_timeout_s: float = 25.0) -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{len(processes)}.log"
        args = [sys.executable, str(SCRIPT), redis_url, namespace, str(stop_timeout_s)]
        with log.open("wb") as stderr:
            process = subprocess.Popen(args, cwd=ROOT, stderr=stderr)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def slow_actor(redis_url: str, namespace: str) -> dramatiq.Actor:
    """The workers' slow actor, declared here only to send it messages."""
    broker = worker_actors.broker_for(redis_url, namespace)
    return worker_actors.declare(broker, redis_url)


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Poll `predicate` until it holds; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(POLL_S)
    return time.monotonic() - started


def log_of(tmp_path: Path, index: int = 0) -> str:
    return (tmp_path / f"worker-{index}.log").read_text()


def test_sigterm_lets_the_message_in_flight_finish(
    start_worker: Callable[..., subprocess.Popen[bytes]],
    slow_actor: dramatiq.Actor,
    store: Store,
    marker: str,
    tmp_path: Path,
) -> None:
    """A worker asked to stop, twice, finishes its message and exits 0."""
    # Given a worker in the middle of a three-second message
    worker = start_worker()
    slow_actor.send(marker, 3.0)
    wait_for(lambda: store.redis.exists(f"{marker}:started") == 1, START_TIMEOUT_S)

    # When Heroku sends SIGTERM, and again half a second later
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    exit_code = worker.wait(timeout=25)

    assert exit_code == 0
    assert store.redis.get(f"{marker}:done") == "1"
    log = log_of(tmp_path)
    assert "Stopping: waiting up to 25 s for 1 messages in flight." in log
    assert "Already stopping: SIGTERM changes nothing." in log


def test_work_still_running_at_the_stop_timeout_exits_1(
    start_worker: Callable[..., subprocess.Popen[bytes]],
    slow_actor: dramatiq.Actor,
    store: Store,
    marker: str,
    tmp_path: Path,
) -> None:
    """A message longer than the stop timeout makes the worker exit 1, on time."""
    worker = start_worker(stop_timeout_s=3.0)
    slow_actor.send(marker, 30.0)
    wait_for(lambda: store.redis.exists(f"{marker}:started") == 1, START_TIMEOUT_S)

    worker.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    exit_code = worker.wait(timeout=10)
    took_s = time.monotonic() - stopping

    assert exit_code == 1
    assert took_s < 4.0
    assert store.redis.exists(f"{marker}:done") == 0
    assert "Stopped with 1 messages still in flight" in log_of(tmp_path)


def test_a_time_limit_stops_a_message_that_runs_too_long(
    start_worker: Callable[..., subprocess.Popen[bytes]],
    slow_actor: dramatiq.Actor,
    store: Store,
    marker: str,
    namespace: str,
) -> None:
    """TimeLimit works in our worker process too: it needs the process_boot signal."""
    worker = start_worker()
    slow_actor.send_with_options(args=(marker, 30.0), time_limit=1000)
    wait_for(lambda: store.redis.exists(f"{marker}:started") == 1, START_TIMEOUT_S)

    dead_letters = f"{namespace}-queue:{worker_actors.QUEUE}.XQ"
    wait_for(lambda: store.redis.zcard(dead_letters) == 1, 10.0)
    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=25) == 0
    assert store.redis.exists(f"{marker}:done") == 0


def test_a_message_of_a_killed_worker_is_delivered_again_within_a_minute(
    start_worker: Callable[..., subprocess.Popen[bytes]],
    slow_actor: dramatiq.Actor,
    store: Store,
    marker: str,
) -> None:
    """SIGKILL mid-message: another worker runs it again, with production tuning.

    Redelivery waits for the heartbeat timeout (15 s) and then for a maintenance
    pass (one fetch in five), so this test takes about 20 s.
    """
    # Given a worker killed in the middle of a message
    first = start_worker()
    slow_actor.send(marker, 2.0)
    wait_for(lambda: store.redis.get(f"{marker}:started") == "1", START_TIMEOUT_S)
    first.kill()
    first.wait()
    killed = time.monotonic()

    # When a second worker runs
    second = start_worker()
    wait_for(lambda: store.redis.exists(f"{marker}:done") == 1, REDELIVERY_TIMEOUT_S)
    took_s = time.monotonic() - killed
    second.send_signal(signal.SIGTERM)

    assert store.redis.get(f"{marker}:started") == "2"
    assert took_s >= broker_module.HEARTBEAT_TIMEOUT_MS / 1000
    assert second.wait(timeout=25) == 0


def test_the_embedded_default_gets_a_stub_broker() -> None:
    """No REDIS_URL: an in-process broker, nothing durable."""
    broker = build_broker(Settings())

    assert isinstance(broker, StubBroker)


def test_a_redis_url_gets_a_redis_broker_tuned_for_redelivery(redis_url: str) -> None:
    """The Redis broker has our namespace, heartbeat tuning and bytes client."""
    broker = build_broker(Settings(redis_url=redis_url, namespace="rl"))

    assert isinstance(broker, RedisBroker)
    assert broker.namespace == "rl-queue"
    assert broker.heartbeat_timeout == broker_module.HEARTBEAT_TIMEOUT_MS
    assert broker.maintenance_chance == broker_module.MAINTENANCE_CHANCE
    kwargs = broker.client.connection_pool.connection_kwargs
    assert kwargs["health_check_interval"] == 30
    assert kwargs.get("decode_responses", False) is False


def test_a_rediss_url_accepts_a_self_signed_certificate() -> None:
    """Heroku's rediss:// URL: TLS, certificate not verified; nothing connects."""
    url = "rediss://:secret@redis.invalid:6380/0"

    broker = build_broker(Settings(redis_url=url))

    pool = broker.client.connection_pool
    assert pool.connection_class is SSLConnection
    assert "ssl_cert_reqs" in pool.connection_kwargs
    assert pool.connection_kwargs["ssl_cert_reqs"] is None


def test_the_broker_retries_within_bounds() -> None:
    """Retries are bounded: a vendor outage ends in the dead-letter queue."""
    broker = build_broker(Settings())

    retries = next(m for m in broker.middleware if isinstance(m, Retries))
    assert retries.max_retries == broker_module.MAX_RETRIES
    assert retries.min_backoff == broker_module.MIN_BACKOFF_MS
    assert retries.max_backoff == broker_module.MAX_BACKOFF_MS
    names = [type(m).__name__ for m in broker.middleware]
    assert "Prometheus" not in names
    assert "CurrentMessage" in names


def test_install_makes_the_broker_global() -> None:
    """Actors declared after `install` bind to the installed broker."""
    previous = dramatiq.broker.global_broker
    broker = build_broker(Settings())
    try:
        install(broker)

        assert dramatiq.get_broker() is broker
    finally:
        dramatiq.broker.global_broker = previous


def test_an_amqp_url_carries_a_message_through_rabbitmq(
    redis_url: str, store: Store, namespace: str, marker: str
) -> None:
    """DRAMATIQ_BROKER_URL: one message through the RabbitMQ on this machine."""
    settings = Settings(redis_url=redis_url, broker_url=RABBITMQ_URL)
    broker = build_broker(settings)
    assert isinstance(broker, RabbitmqBroker)
    actor = worker_actors.declare(broker, redis_url, queue=namespace)
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        actor.send(marker, 0.0)

        wait_for(lambda: store.redis.exists(f"{marker}:done") == 1, 15.0)
    finally:
        worker.stop()
        broker.close()
        _delete_rabbitmq_queues(namespace)


def _delete_rabbitmq_queues(queue: str) -> None:
    """Leave nothing behind: the queue, its delay and dead-letter queues."""
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        channel.queue_delete(name)
    connection.close()

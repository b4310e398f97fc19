"""The worker process: one Dramatiq worker that finishes its work on SIGTERM.

Heroku sends SIGTERM to every process of a dyno, may send it again, and sends
SIGKILL 30 s after the first. Dramatiq's own CLI forwards the signal to forked
children, which then abandon in-flight messages (DESIGN, "Worker entrypoint").
`run_worker` runs the worker threads in this one process instead: the first
SIGTERM or SIGINT stops it starting new messages (fetched ones go back to the
queue) and waits for those in flight, while its consumers keep sending the
heartbeats that keep those messages its own. Later signals change nothing, so a
repeated SIGTERM cannot cut that wait short.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import dramatiq

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_STOP_TIMEOUT_S = 25.0
# Consumer threads notice a stop within one idle poll (Dramatiq's worker_timeout,
# 1 s); this much of the stop timeout is kept back for them.
CONSUMER_STOP_S = 2.0


def run_worker(
    broker: dramatiq.Broker,
    *,
    threads: int,
    queues: set[str] | None = None,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
) -> int:
    """Consume `queues` (all declared ones by default) until SIGTERM or SIGINT.

    Must run in the main thread, which owns signal handlers. The handlers stay
    installed after the return: Heroku may repeat SIGTERM until the process ends.

    Returns:
        0 when every message in flight finished within `stop_timeout_s`, 1 when
        some were still running; the broker delivers those again.
    """
    stop_requested = _catch_stop_signals()
    # Dramatiq's CLI emits this once per process; TimeLimit starts its timer on it.
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=threads, queues=queues)
    worker.start()
    names = ", ".join(sorted(queues or broker.get_declared_queues()))
    logger.info("Worker started with %d threads on queues %s.", threads, names)

    stop_requested.wait()
    return _stop(worker, broker, stop_timeout_s)


def _catch_stop_signals() -> threading.Event:
    """An event set by the first stop signal; later ones are only logged."""
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            logger.info("Already stopping: %s changes nothing.", name)
            return
        logger.info("Received %s: stopping.", name)
        stop_requested.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    return stop_requested


def _stop(worker: dramatiq.Worker, broker: dramatiq.Broker, timeout_s: float) -> int:
    """Stop taking messages, wait for those in flight, then close the broker."""
    in_flight = _in_flight(worker)
    logger.info(
        "Stopping: waiting up to %d s for %d messages in flight.",
        timeout_s,
        in_flight,
    )

    # Worker.stop waits for worker threads and then for consumers, each with the
    # full timeout; a thread of its own holds the whole stop to `timeout_s`.
    join_ms = int(max(timeout_s - CONSUMER_STOP_S, 0.0) * 1000)
    stopper = threading.Thread(
        target=worker.stop,
        kwargs={"timeout": join_ms},
        name="worker-stop",
        daemon=True,
    )
    stopper.start()
    stopper.join(timeout_s)
    still_running = sum(thread.is_alive() for thread in worker.workers)

    broker.close()
    return _report(still_running)


def _in_flight(worker: dramatiq.Worker) -> int:
    """Messages taken by a worker thread and not yet acknowledged."""
    work_queue = worker.work_queue
    return max(work_queue.unfinished_tasks - work_queue.qsize(), 0)


def _report(still_running: int) -> int:
    if still_running:
        logger.warning(
            "Stopped with %d messages still in flight; they will be delivered again.",
            still_running,
        )
        return 1

    logger.info("Worker stopped with no message in flight.")
    return 0

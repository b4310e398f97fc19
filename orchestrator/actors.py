"""The Dramatiq actors: each does one step and hands the next on, carrying ids only.

    poll(cohort, slot)      read a cohort as the snapshot of a clock slot, diff it
    decide(occurrence_id)   judge each playbook the occurrence fires
    deliver(delivery_key)   send one delivery, once in effect
    dead_letter(message)    record a delivery whose retries ran out

Actors are declared on a given broker (`declare`), so that the worker, the embedded
run and the tests each bind them to their own; they find the engine of their
process through `install`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dramatiq

from orchestrator.engine import Engine, Retry

logger = logging.getLogger(__name__)

SOURCES_QUEUE = "sources"
TRIGGERS_QUEUE = "triggers"
POLL_TIME_LIMIT_MS = 15 * 60_000
# A poll older than this is worth nothing: the next slot reads the cohort anew.
POLL_MAX_AGE_MS = 30 * 60_000
DELIVERIES_QUEUE = "deliveries"
DECIDE_TIME_LIMIT_MS = 60_000
DELIVER_TIME_LIMIT_MS = 120_000
DELIVER_MAX_RETRIES = 8
DELIVER_MIN_BACKOFF_MS = 15_000
DELIVER_MAX_BACKOFF_MS = 30 * 60_000

_engine: Engine | None = None


def install(engine: Engine | None) -> None:
    """Give this process's actors the engine they work with."""
    global _engine
    _engine = engine


def _current() -> Engine:
    if _engine is None:
        raise RuntimeError("no engine installed in this process")
    return _engine


@dataclass(frozen=True)
class Actors:
    """The actors as declared on one broker."""

    poll: dramatiq.Actor[[str, str], None]
    decide: dramatiq.Actor[[str], None]
    deliver: dramatiq.Actor[[str], None]
    dead_letter: dramatiq.Actor[[dict[str, Any], dict[str, Any]], None]

    def schedule(self, key: str, delay_ms: int) -> None:
        """Hand a delivery to the deliver step, now or after `delay_ms`."""
        self.deliver.send_with_options(args=(key,), delay=delay_ms or None)


def declare(broker: dramatiq.Broker) -> Actors:
    """Declare the actors on `broker` and return them."""

    def decide(occurrence_id: str) -> None:
        _current().decide(occurrence_id)

    def poll(cohort: str, slot: str) -> None:
        _current().poll(cohort, slot, send_decide)

    def send_decide(occurrence_id: str) -> None:
        decide_actor.send(occurrence_id)

    def deliver(key: str) -> None:
        try:
            _current().deliver(key)
        except Retry as exc:
            logger.info(
                "Delivery %s retries in %d ms: %s.", key, exc.delay_ms, exc.reason
            )
            raise dramatiq.Retry(exc.reason, delay=exc.delay_ms or None) from exc

    def dead_letter(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
        args = message.get("args") or [""]
        key = str(args[0])
        retries = retry_info.get("retries", "?")
        _current().bury(key, f"retries exhausted after {retries} attempts")
        logger.warning("Delivery %s is dead after %s retries.", key, retries)

    dead = dramatiq.actor(
        broker=broker, actor_name="dead_letter", queue_name=DELIVERIES_QUEUE
    )(dead_letter)
    decide_actor = dramatiq.actor(
        broker=broker,
        actor_name="decide",
        queue_name=TRIGGERS_QUEUE,
        time_limit=DECIDE_TIME_LIMIT_MS,
        max_retries=3,
    )(decide)
    return Actors(
        poll=dramatiq.actor(
            broker=broker,
            actor_name="poll",
            queue_name=SOURCES_QUEUE,
            time_limit=POLL_TIME_LIMIT_MS,
            max_age=POLL_MAX_AGE_MS,
            max_retries=3,
        )(poll),
        decide=decide_actor,
        deliver=dramatiq.actor(
            broker=broker,
            actor_name="deliver",
            queue_name=DELIVERIES_QUEUE,
            time_limit=DELIVER_TIME_LIMIT_MS,
            max_retries=DELIVER_MAX_RETRIES,
            min_backoff=DELIVER_MIN_BACKOFF_MS,
            max_backoff=DELIVER_MAX_BACKOFF_MS,
            on_retry_exhausted="dead_letter",
        )(deliver),
        dead_letter=dead,
    )

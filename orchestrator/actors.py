"""The Dramatiq actors: each does one step and hands the next on, carrying ids only.

    poll(cohort, slot)          read a cohort as the snapshot of a clock slot, diff it
    decide(occurrence_ids)      judge each playbook the occurrences fire
    deliver(delivery_keys)      send each delivery, once in effect
    dead_letter(message)        record deliveries whose retries ran out
    export_events(slot)         send the journal's loop events to the analytics sink
    finish_push(cohort, id)     diff a snapshot a vendor pushed, page by page
    grants_due(slot)            judge the grants whose hold ended, hand on the good
    grant(grant_id)             give one grant through the reward target, once
    grant_dead_letter(message)  record grants whose retries ran out

`decide` and `deliver` take up to BATCH ids, so that a message's own cost and
the engine's round trips are shared by the batch. Each key keeps its own fate:
one that must wait is sent on alone, as `deliver([key])`, with its delay. A
message of the older form, one id, is still understood.

Actors are declared on a given broker (`declare`), so that the worker, the embedded
run and the tests each bind them to their own; they find the engine of their
process through `install`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from orchestrator.engine import CHUNK_MAX, Engine, Retry
from orchestrator.errors import NotDue, TransientError
from orchestrator.rewards import GrantRetry

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
# Waits that are not failures (a vendor's 429, a budget used up for now) do not
# use up retries; past this much waiting in all, they count again, so that
# nothing waits forever.
DELIVER_MAX_WAIT_MS = 24 * 3_600_000
BATCH = CHUNK_MAX
# Loop events go to the analytics vendor once a minute; an export that fails is
# not retried: the next minute's export takes the same events.
EXPORT_EVERY_MS = 60_000
EXPORT_TIME_LIMIT_MS = 60_000
# An export drains batch after batch for this long, then leaves the rest to the
# next minute's.
EXPORT_RUN_MS = 45_000
REWARDS_QUEUE = "rewards"
GRANTS_DUE_EVERY_MS = 60_000
GRANT_TIME_LIMIT_MS = 60_000
# A grant is retried until the target takes it: 20 retries, backing off to six
# hours between them, span about four days of outage.
GRANT_MAX_RETRIES = 20
GRANT_MIN_BACKOFF_MS = 30_000
GRANT_MAX_BACKOFF_MS = 6 * 3_600_000

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
    decide: dramatiq.Actor[[list[str]], None]
    deliver: dramatiq.Actor[[list[str]], None]
    dead_letter: dramatiq.Actor[[dict[str, Any], dict[str, Any]], None]
    export_events: dramatiq.Actor[[str], None]
    finish_push: dramatiq.Actor[[str, str], None]
    grants_due: dramatiq.Actor[[str], None]
    grant: dramatiq.Actor[[str], None]
    grant_dead_letter: dramatiq.Actor[[dict[str, Any], dict[str, Any]], None]

    def decide_all(self, occurrence_ids: Sequence[str]) -> None:
        """Hand occurrences to the decide step, BATCH to a message."""
        for chunk in _chunks(occurrence_ids):
            self.decide.send(chunk)

    def schedule(self, keys: Sequence[str], delay_ms: int) -> None:
        """Hand deliveries to the deliver step, now or after `delay_ms`."""
        for chunk in _chunks(keys):
            self.deliver.send_with_options(args=(chunk,), delay=delay_ms or None)


def declare(broker: dramatiq.Broker) -> Actors:
    """Declare the actors on `broker` and return them."""

    def decide(occurrence_ids: list[str] | str) -> None:
        _current().decide_many(_listed(occurrence_ids))

    def poll(cohort: str, slot: str) -> None:
        try:
            _current().poll(cohort, slot, declared.decide_all)
        except NotDue as exc:
            # Nothing was asked of the vendor: the snapshot stands until a poll
            # finds the cohort recomputed (Amplitude's downloads are few).
            logger.info("Poll of %s skipped: %s.", cohort, exc.reason)
        except TransientError as exc:
            # The source asked for time (its budget, a 429): a planned retry,
            # after the wait it gave, not an error.
            delay_ms = int((exc.retry_after_s or 0) * 1000) or None
            logger.info("Poll of %s waits: %s.", cohort, exc)
            raise dramatiq.Retry(str(exc), delay=delay_ms) from None

    def deliver(keys: list[str] | str) -> None:
        listed = _listed(keys)
        results = _current().deliver_many(listed)
        retries = [(k, r) for k, r in results.items() if isinstance(r, Retry)]
        for key, retry in retries:
            if (
                not retry.counts
                and _waited_ms() + retry.delay_ms <= DELIVER_MAX_WAIT_MS
            ):
                _wait_alone(key, retry)
            elif len(listed) == 1:
                logger.info(
                    "Delivery %s retries in %d ms: %s.",
                    key,
                    retry.delay_ms,
                    retry.reason,
                )
                raise dramatiq.Retry(
                    retry.reason, delay=retry.delay_ms or None
                ) from retry
            else:
                _retry_alone(key, retry)

    def _retry_alone(key: str, retry: Retry) -> None:
        # As Dramatiq's own retry would: counted, and after a backoff at least.
        options = _options()
        delay_ms = retry.delay_ms or DELIVER_MIN_BACKOFF_MS
        logger.info("Delivery %s retries in %d ms: %s.", key, delay_ms, retry.reason)
        declared.deliver.send_with_options(
            args=([key],),
            delay=delay_ms,
            retries=options.get("retries", 0) + 1,
            waited_ms=options.get("waited_ms", 0),
        )

    def _wait_alone(key: str, retry: Retry) -> None:
        # Not a failure: the retries stay as they were; the waiting adds up.
        options = _options()
        logger.debug("Delivery %s waits %d ms: %s.", key, retry.delay_ms, retry.reason)
        declared.deliver.send_with_options(
            args=([key],),
            delay=retry.delay_ms or None,
            retries=options.get("retries", 0),
            waited_ms=_waited_ms() + retry.delay_ms,
        )

    def dead_letter(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
        args = message.get("args") or [""]
        retries = retry_info.get("retries", "?")
        for key in _listed(args[0]):
            _current().bury(key, f"retries exhausted after {retries} attempts")
            logger.warning("Delivery %s is dead after %s retries.", key, retries)

    def finish_push(cohort: str, push_id: str) -> None:
        engine = _current()
        triggers = engine.cohorts().get(cohort, False)
        engine.finish_snapshot(
            cohort, push_id, declared.decide_all if triggers else None
        )

    def grants_due(slot: str) -> None:
        for grant_id in _current().grants_due():
            declared.grant.send(grant_id)

    def grant(grant_id: str) -> None:
        try:
            fired = _current().give(grant_id)
        except GrantRetry as retry:
            # Waiting is not failing: a grant waits for its target as long as it
            # takes (grants are few), and only failures use up its retries.
            options = _options()
            waited = int(options.get("waited_ms", 0))
            if not retry.counts:
                declared.grant.send_with_options(
                    args=(grant_id,),
                    delay=retry.delay_ms or None,
                    retries=options.get("retries", 0),
                    waited_ms=waited + retry.delay_ms,
                )
                return
            logger.info("Grant %s retries: %s.", grant_id, retry.reason)
            raise dramatiq.Retry(retry.reason, delay=retry.delay_ms or None) from None
        declared.decide_all(fired)

    def grant_dead_letter(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
        args = message.get("args") or [""]
        retries = retry_info.get("retries", "?")
        _current().loop.rewards.bury(
            str(args[0]), f"retries exhausted after {retries} attempts"
        )
        logger.warning("Grant %s is dead after %s retries.", args[0], retries)

    def export_events(slot: str) -> None:
        try:
            _current().export_journal(EXPORT_RUN_MS)
        except TransientError as exc:
            # The events stay in the journal; the next minute's export takes them.
            logger.warning("Loop events wait for the next export: %s.", exc)

    dead = dramatiq.actor(
        broker=broker, actor_name="dead_letter", queue_name=DELIVERIES_QUEUE
    )(dead_letter)
    dead_grant = dramatiq.actor(
        broker=broker, actor_name="grant_dead_letter", queue_name=REWARDS_QUEUE
    )(grant_dead_letter)
    declared = Actors(
        poll=dramatiq.actor(
            broker=broker,
            actor_name="poll",
            queue_name=SOURCES_QUEUE,
            time_limit=POLL_TIME_LIMIT_MS,
            max_age=POLL_MAX_AGE_MS,
            max_retries=3,
        )(poll),
        decide=dramatiq.actor(
            broker=broker,
            actor_name="decide",
            queue_name=TRIGGERS_QUEUE,
            time_limit=DECIDE_TIME_LIMIT_MS,
            max_retries=3,
        )(decide),
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
        finish_push=dramatiq.actor(
            broker=broker,
            actor_name="finish_push",
            queue_name=SOURCES_QUEUE,
            time_limit=POLL_TIME_LIMIT_MS,
            max_retries=3,
        )(finish_push),
        export_events=dramatiq.actor(
            broker=broker,
            actor_name="export_events",
            queue_name=SOURCES_QUEUE,
            time_limit=EXPORT_TIME_LIMIT_MS,
            max_age=EXPORT_EVERY_MS,
            max_retries=0,
        )(export_events),
        grants_due=dramatiq.actor(
            broker=broker,
            actor_name="grants_due",
            queue_name=REWARDS_QUEUE,
            time_limit=GRANT_TIME_LIMIT_MS,
            max_age=GRANTS_DUE_EVERY_MS,
            max_retries=0,
        )(grants_due),
        grant=dramatiq.actor(
            broker=broker,
            actor_name="grant",
            queue_name=REWARDS_QUEUE,
            time_limit=GRANT_TIME_LIMIT_MS,
            max_retries=GRANT_MAX_RETRIES,
            min_backoff=GRANT_MIN_BACKOFF_MS,
            max_backoff=GRANT_MAX_BACKOFF_MS,
            on_retry_exhausted="grant_dead_letter",
        )(grant),
        grant_dead_letter=dead_grant,
    )
    return declared


def _options() -> dict[str, Any]:
    message = CurrentMessage.get_current_message()
    return dict(message.options) if message is not None else {}


def _waited_ms() -> int:
    return int(_options().get("waited_ms", 0))


def _listed(ids: list[str] | str) -> list[str]:
    """A message's ids as a list: one id is the form of messages sent before."""
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[at : at + BATCH]) for at in range(0, len(ids), BATCH)]

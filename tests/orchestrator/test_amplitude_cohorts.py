"""Amplitude's Cohort Webhook, received by the web process over real HTTP.

Batches are authenticated by a header secret, validated, applied once and
acknowledged; an in-process worker then decides and delivers to an outbox, so
each test ends in the ledger: one nudge per user who entered, however often and
in whatever order Amplitude sent the batches.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route
from web_rig import free_port, serving

from integrations.outbox import OutboxChannel
from orchestrator import actors, web
from orchestrator.engine import Engine
from orchestrator.ledger import Ledger
from orchestrator.loader import load
from orchestrator.settings import Settings
from orchestrator.snapshots import Snapshots
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.web import (
    AMPLITUDE_COHORTS_PATH,
    DEFAULT_AMPLITUDE_HEADER,
    AmplitudeCohortReceiver,
    create_app,
)

SECRET = "amplitude-secret-5d1c8e27a9b4"
COHORT_ID = "7khm89cz"
COHORT = f"amplitude:{COHORT_ID}"
PLAYBOOK_ID = "pack-reviewers"
COMPUTED = 1_764_000_000

WORKSPACE = """\
name: amplitude cohorts
activation:
  property: user.activated_at
fields:
  user:
    first_name: Ada
    activated_at: "2026-01-01"
"""

PLAYBOOK = """\
id: pack-reviewers
description: Ask pack owners to invite a reviewer.
owner: growth
trigger:
  cohort: COHORT
holdout: 0%
limits:
  reentry: REENTRY
nudge:
  channel: outbox
  invite: {share: review_request}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{ user.first_name }}, invite a reviewer: {{ invite.link }}"
"""


@dataclass
class Rig:
    url: str
    engine: Engine
    broker: StubBroker

    def push(
        self, body: Any, *, secret: str | None = SECRET, header: str | None = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[header or DEFAULT_AMPLITUDE_HEADER] = secret
        return httpx.post(
            self.url + AMPLITUDE_COHORTS_PATH,
            content=content,
            headers=headers,
            timeout=10,
        )

    def settle(self) -> None:
        """Let the worker finish every decision and delivery enqueued so far."""
        for _ in range(3):
            self.broker.join(actors.TRIGGERS_QUEUE)
            self.broker.join(actors.DELIVERIES_QUEUE)

    def outcomes(self) -> Counter[tuple[str, str]]:
        """(user, outcome) of every delivery of the playbook, counted."""
        ledger = Ledger(self.engine.store)
        entries = ledger.entries(ledger.keys_for_playbook(PLAYBOOK_ID))
        return Counter((e.fields["user"], e.outcome) for e in entries)

    def nudged(self) -> list[str]:
        """The users sent a nudge, once per nudge."""
        counted = self.outcomes()
        return sorted(
            user
            for (user, outcome), times in counted.items()
            if outcome == "sent"
            for _ in range(times)
        )


def write_folder(folder: Path, reentry: str = "once") -> None:
    (folder / "referloop.yaml").write_text(WORKSPACE)
    text = PLAYBOOK.replace("COHORT", COHORT).replace("REENTRY", reentry)
    (folder / f"{PLAYBOOK_ID}.yaml").write_text(text)


@contextmanager
def running(store: Store, folder: Path, reentry: str = "once") -> Iterator[Rig]:
    write_folder(folder, reentry)
    catalog = load([folder])
    assert not catalog.has_errors, catalog.problems
    broker = StubBroker()
    broker.emit_after("process_boot")
    declared = actors.declare(broker)
    outbox = OutboxChannel(folder / "outbox.jsonl")
    engine = Engine(
        store, catalog, InviteSigner(["k" * 40]), {"outbox": outbox}, declared.schedule
    )
    actors.install(engine)
    receiver = AmplitudeCohortReceiver(engine, declared, SECRET)
    route = Route(AMPLITUDE_COHORTS_PATH, receiver.receive, methods=["POST"])
    queues = {actors.TRIGGERS_QUEUE, actors.DELIVERIES_QUEUE}
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=2)
    worker.start()
    try:
        with serving(Starlette(routes=[route])) as url:
            yield Rig(url, engine, broker)
    finally:
        worker.stop()
        actors.install(None)


@pytest.fixture
def rig(store: Store, tmp_path: Path) -> Iterator[Rig]:
    with running(store, tmp_path) as built:
        yield built


def batch(
    users: list[str],
    *,
    entered: bool = True,
    message_id: str | None = None,
    computed: int = COMPUTED,
) -> dict[str, Any]:
    """A batch as Amplitude's default template sends it, with user properties."""
    direction = "enter" if entered else "exit"
    return {
        "cohort_name": "Pack owners",
        "cohort_id": COHORT_ID,
        "in_cohort": entered,
        "computed_time": str(computed),
        "message_id": message_id or f"{uuid.uuid4()}::{direction}::0",
        "users": [
            {
                "user_id": user,
                "email": f"{user}@example.com",
                "first_name": "Ada",
                "activated_at": "2026-01-01",
                "account_id": "acct-1",
            }
            for user in users
        ],
    }


def users(first: int, last: int) -> list[str]:
    return [f"user-{n}" for n in range(first, last)]


def test_users_who_enter_are_nudged_once(rig: Rig) -> None:
    """A batch with `in_cohort: true` adds its users and nudges each of them."""
    answer = rig.push(batch(users(0, 3)))
    rig.settle()

    assert answer.status_code == 200
    assert answer.json()["entered"] == 3
    assert answer.json()["repeat"] is False
    assert rig.nudged() == users(0, 3)
    assert Snapshots(rig.engine.store).members(COHORT) == 3


def test_a_replayed_message_is_answered_and_changes_nothing(rig: Rig) -> None:
    """Amplitude retries a batch whose answer was slow: same `message_id`."""
    sent = batch(users(0, 3), message_id="m-1::enter::0")
    rig.push(sent)
    rig.settle()
    before = rig.outcomes()

    again = rig.push(sent)
    rig.settle()

    assert again.status_code == 200
    assert again.json()["repeat"] is True
    assert again.json()["entered"] == 0
    assert rig.outcomes() == before


def test_the_same_users_in_a_new_message_fire_nothing_new(rig: Rig) -> None:
    """A later sync that reports members who are in already moves nobody."""
    rig.push(batch(users(0, 3)))
    rig.settle()
    before = rig.outcomes()

    answer = rig.push(batch(users(0, 3)))
    rig.settle()

    assert answer.json() == {
        "message_id": answer.json()["message_id"],
        "repeat": False,
        "entered": 0,
        "rejected": [],
    }
    assert rig.outcomes() == before


def test_users_who_leave_are_taken_out_and_nobody_is_nudged(rig: Rig) -> None:
    """A batch with `in_cohort: false` takes its users out and fires nothing."""
    rig.push(batch(users(0, 3)))
    answer = rig.push(batch(users(0, 2), entered=False, computed=COMPUTED + 60))
    rig.settle()

    assert answer.json()["left"] == 2
    snapshots = Snapshots(rig.engine.store)
    assert snapshots.members(COHORT) == 1
    assert snapshots.is_member(COHORT, "user-2")
    assert rig.nudged() == users(0, 3)


@pytest.mark.parametrize(
    ("reentry", "expected"),
    [
        ("once", {("user-0", "sent"): 1, ("user-0", "held"): 1}),
        ("every time", {("user-0", "sent"): 2}),
    ],
)
def test_leaving_then_entering_again_follows_the_reentry_rule(
    store: Store, tmp_path: Path, reentry: str, expected: dict[tuple[str, str], int]
) -> None:
    """In, out, then in again: a second entry, judged by `limits.reentry`."""
    with running(store, tmp_path, reentry) as rig:
        rig.push(batch(["user-0"], computed=COMPUTED))
        rig.settle()
        rig.push(batch(["user-0"], entered=False, computed=COMPUTED + 60))
        rig.push(batch(["user-0"], computed=COMPUTED + 120))
        rig.settle()

        assert rig.outcomes() == Counter(expected)


def test_a_late_retry_of_an_older_batch_does_not_undo_a_newer_one(rig: Rig) -> None:
    """The user left at minute 2; minute 1's entry, retried late, is stale."""
    rig.push(batch(["user-0"], entered=False, computed=COMPUTED + 120))
    answer = rig.push(batch(["user-0"], computed=COMPUTED + 60))
    rig.settle()

    assert answer.json()["entered"] == 0
    assert not Snapshots(rig.engine.store).is_member(COHORT, "user-0")
    assert rig.nudged() == []


@pytest.mark.parametrize(
    ("secret", "header"),
    [
        (None, None),
        ("wrong-" + SECRET, None),
        (SECRET, "X-Some-Other-Header"),
        ("", None),
    ],
)
def test_a_batch_without_the_right_secret_is_refused(
    rig: Rig, secret: str | None, header: str | None
) -> None:
    """No header, a wrong or empty secret, or the secret in another header."""
    answer = rig.push(batch(users(0, 3)), secret=secret, header=header)

    assert answer.status_code == 401
    assert DEFAULT_AMPLITUDE_HEADER in answer.json()["error"]
    assert Snapshots(rig.engine.store).members(COHORT) == 0


def without(key: str) -> dict[str, Any]:
    body = batch(users(0, 1))
    del body[key]
    return body


def with_value(key: str, value: Any) -> dict[str, Any]:
    return {**batch(users(0, 1)), key: value}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body is not a JSON object"),
        (without("message_id"), "`message_id` is missing"),
        (without("cohort_id"), "`cohort_id` is missing"),
        (without("computed_time"), "`computed_time` is missing"),
        (with_value("in_cohort", "yes"), "`in_cohort`"),
        (with_value("users", {"user_id": "u"}), "`users`"),
        (with_value("cohort_id", "7khm/89cz"), "`cohort_id` is not a cohort id"),
        (with_value("computed_time", "yesterday"), "`computed_time` is not a time"),
        (with_value("message_id", "  "), "`message_id` is not an id"),
    ],
)
def test_a_malformed_batch_is_refused_with_the_reason(
    rig: Rig, body: Any, reason: str
) -> None:
    """The answer names the field that is wrong, never its value."""
    answer = rig.push(body)

    assert answer.status_code == 400
    assert reason in answer.json()["error"]


def test_a_user_without_an_id_is_rejected_and_the_others_are_taken(rig: Rig) -> None:
    """One bad user does not refuse its batch: Amplitude would retry it forever."""
    body = batch(users(0, 2))
    body["users"].insert(1, {"email": "nobody@example.com"})

    answer = rig.push(body)
    rig.settle()

    assert answer.status_code == 200
    assert answer.json()["entered"] == 2
    assert answer.json()["rejected"] == [
        {"where": "users[1]", "reason": "no usable `user_id`"}
    ]
    assert rig.nudged() == users(0, 2)


def test_an_oversized_batch_is_refused_before_it_is_read(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body past the cap gets a 413 without being read whole."""
    monkeypatch.setattr(web, "MAX_AMPLITUDE_BYTES", 1024)

    answer = rig.push(batch(users(0, 50)))

    assert answer.status_code == 413


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {
                "cohort_id": st.text(max_size=10) | st.integers(),
                "in_cohort": st.booleans() | st.none(),
                "computed_time": st.text(max_size=12) | st.floats() | st.integers(),
                "message_id": st.text(max_size=20) | st.integers(),
                "users": st.lists(
                    st.dictionaries(
                        st.sampled_from(["user_id", "account_id", "user_properties"]),
                        st.none() | st.integers() | st.text(max_size=8),
                    ),
                    max_size=3,
                ),
            }
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_whatever_a_client_sends_gets_no_500(rig: Rig, body: bytes) -> None:
    """Any bytes, any JSON, and near-batches with wrong types: a 2xx or a 4xx."""
    answer = rig.push(body)

    assert answer.status_code in (200, 400, 413)


def test_a_replayed_stream_with_duplicates_and_retries_nudges_each_entrant_once(
    rig: Rig,
) -> None:
    """A first sync of 40 users in four batches, then a minute later 10 more in,
    5 out; every batch sent twice or three times (retries), the replays
    interleaved and shuffled as Amplitude's batches may arrive.

    Everyone still in is nudged exactly once; the 5 who left are nudged at most
    once (not at all when their exit came before their older entry)."""
    first = [
        batch(users(10 * n, 10 * n + 10), message_id=f"sync-1::enter::{n}")
        for n in range(4)
    ]
    later = COMPUTED + 60
    second = [
        batch(users(40, 50), message_id="sync-2::enter::0", computed=later),
        batch(users(0, 5), entered=False, message_id="sync-2::exit::0", computed=later),
        # A new sync reporting users who are in already.
        batch(users(5, 10), message_id="sync-3::enter::0", computed=later + 60),
    ]
    stream = [*first, *first[:2], *second, *second, first[3], second[0]]
    random.Random(7).shuffle(stream)

    answers = [rig.push(body) for body in stream]
    rig.settle()

    nudged = rig.nudged()
    assert {answer.status_code for answer in answers} == {200}
    assert len(nudged) == len(set(nudged))
    assert set(users(5, 50)) <= set(nudged) <= set(users(0, 50))
    assert {outcome for _, outcome in rig.outcomes()} == {"sent"}
    assert Snapshots(rig.engine.store).members(COHORT) == 45


def test_no_secret_or_email_reaches_the_log(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The logs say ids and counts, never the secret or a user's email."""
    caplog.set_level("DEBUG")
    rig.push(batch(users(0, 3)))
    rig.push(batch(users(0, 3)), secret="guess-" + uuid.uuid4().hex)
    rig.settle()

    said = caplog.text
    assert SECRET not in said
    assert "@example.com" not in said


def test_the_web_process_mounts_the_endpoint_when_its_secret_is_set(
    redis_url: str, tmp_path: Path
) -> None:
    """Either of two secrets works (a rotation); without one, no endpoint."""
    write_folder(tmp_path)
    namespace = f"referloop-test-{uuid.uuid4().hex[:8]}"
    configured = Settings(
        redis_url=redis_url,
        namespace=namespace,
        playbooks=tmp_path,
        amplitude_cohort_secrets=f"an-older-secret,{SECRET}",
    )
    plain = Settings(redis_url=redis_url, namespace=namespace, playbooks=tmp_path)
    body = json.dumps(batch(users(0, 2))).encode()
    headers = {DEFAULT_AMPLITUDE_HEADER: SECRET}

    with serving(create_app(configured)) as url:
        taken = httpx.post(url + AMPLITUDE_COHORTS_PATH, content=body, headers=headers)
    with serving(create_app(plain)) as url:
        absent = httpx.post(url + AMPLITUDE_COHORTS_PATH, content=body, headers=headers)

    assert taken.status_code == 200
    assert absent.status_code == 404


def test_a_batch_that_cannot_be_stored_gets_a_503_for_amplitude_to_retry(
    tmp_path: Path,
) -> None:
    """Redis down: a 503, which Amplitude retries, never a 500."""
    write_folder(tmp_path)
    closed = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        playbooks=tmp_path,
        amplitude_cohort_secrets=SECRET,
    )
    body = json.dumps(batch(users(0, 2))).encode()

    with serving(create_app(closed)) as url:
        answer = httpx.post(
            url + AMPLITUDE_COHORTS_PATH,
            content=body,
            headers={DEFAULT_AMPLITUDE_HEADER: SECRET},
            timeout=30,
        )

    assert answer.status_code == 503
    assert "send it again" in answer.json()["error"]

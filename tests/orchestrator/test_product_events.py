"""Product events, signed by the product, received by the web process over HTTP.

An in-process worker decides what each event fires, so each test ends in the
ledger: one delivery per event, however often the request came.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route
from web_rig import free_port, serving

from integrations.base import ProductEvent
from integrations.filesource import read_event
from integrations.webhook import sign
from orchestrator import actors, web
from orchestrator.engine import Engine
from orchestrator.ledger import Ledger
from orchestrator.loader import load
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.web import (
    EVENTS_PATH,
    MAX_GROUP_EVENTS,
    SIGNATURE_HEADER,
    EventsReceiver,
    GroupWriter,
    create_app,
)

NEW_SECRET = "events-secret-new-0123456789abcdefghij"
OLD_SECRET = "events-secret-old-0123456789abcdefghij"
PLAYBOOK_ID = "room-reviewers"

WORKSPACE = """\
name: product events
activation:
  property: user.activated_at
fields:
  user:
    first_name: Ada
    activated_at: "2026-01-01"
  events:
    permissions_set:
      room_name: Buyer room
"""

PLAYBOOK = f"""\
id: {PLAYBOOK_ID}
description: Ask who set permissions to invite the buyer's team.
owner: growth
trigger:
  event: permissions_set
holdout: 0%
nudge:
  channel: outbox
  invite: {{share: secure_link}}
  trust: They see this room only.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite the buyer: {{{{ invite.link }}}}"
"""


def event(event_id: str, user: str = "user-1", **extra: Any) -> dict[str, Any]:
    return {
        "event": "permissions_set",
        "id": event_id,
        "time": "2026-12-01T09:30:00Z",
        "user": {"id": user, "first_name": "Ada", "activated_at": "2026-01-01"},
        "account": {"id": "acct-1"},
        "properties": {"room_name": "Buyer room"},
        **extra,
    }


@dataclass
class Rig:
    url: str
    engine: Engine
    broker: StubBroker

    def post(
        self,
        body: Any,
        *,
        secret: str | None = NEW_SECRET,
        at: float | None = None,
        header: str | None = None,
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        elif secret is not None:
            signed_at = time.time() if at is None else at
            headers[SIGNATURE_HEADER] = sign(secret, content, signed_at)
        return httpx.post(
            self.url + EVENTS_PATH, content=content, headers=headers, timeout=10
        )

    def settle(self) -> None:
        self.broker.join(actors.TRIGGERS_QUEUE)

    def delivered_users(self) -> list[str]:
        ledger = Ledger(self.engine.store)
        entries = ledger.entries(ledger.keys_for_playbook(PLAYBOOK_ID))
        return sorted(entry.fields["user"] for entry in entries)


@pytest.fixture
def rig(store: Store, tmp_path: Path) -> Iterator[Rig]:
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    catalog = load([tmp_path])
    assert not catalog.has_errors, catalog.problems
    broker = StubBroker()
    broker.emit_after("process_boot")
    declared = actors.declare(broker)
    engine = Engine(store, catalog, InviteSigner(["k" * 40]), {}, lambda keys, ms: None)
    actors.install(engine)
    receiver = EventsReceiver(engine, declared, f"{NEW_SECRET},{OLD_SECRET}")
    app = Starlette(routes=[Route(EVENTS_PATH, receiver.receive, methods=["POST"])])
    worker = dramatiq.Worker(broker, queues={actors.TRIGGERS_QUEUE}, worker_threads=2)
    worker.start()
    try:
        with serving(app) as url:
            yield Rig(url, engine, broker)
    finally:
        worker.stop()
        actors.install(None)


def test_a_signed_event_is_taken_and_decided(rig: Rig) -> None:
    answer = rig.post(event("evt-1"))
    rig.settle()

    assert answer.status_code == 200
    assert answer.json() == {"accepted": 1, "rejected": []}
    assert rig.delivered_users() == ["user-1"]


def test_a_batch_takes_the_good_events_and_says_why_others_are_not(rig: Rig) -> None:
    bad = event("evt-2", user="user-2")
    del bad["time"]
    body = {"events": [event("evt-1"), bad, event("evt-3", user="user-3")]}

    answer = rig.post(body)
    rig.settle()

    assert answer.status_code == 200
    assert answer.json()["accepted"] == 2
    assert answer.json()["rejected"] == [
        {"index": 1, "reason": "missing `time`: events need one"}
    ]
    assert rig.delivered_users() == ["user-1", "user-3"]


def test_a_replayed_request_changes_nothing(rig: Rig) -> None:
    """The same signed request three times (a retry after a lost answer, or a
    replay inside the window): one delivery."""
    content = json.dumps(event("evt-1")).encode()
    header = sign(NEW_SECRET, content, time.time())

    answers = [rig.post(content, header=header) for _ in range(3)]
    rig.settle()

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert rig.delivered_users() == ["user-1"]


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ({"secret": None}, "missing"),
        ({"secret": "a-secret-nobody-here-holds-0123456789"}, "no_match"),
        ({"at": time.time() - 3600}, "too_old"),
        ({"at": time.time() + 3600}, "too_new"),
        ({"header": "t=1,v9=abc"}, "malformed"),
    ],
    ids=["unsigned", "wrong-secret", "stale", "future", "malformed"],
)
def test_a_request_that_is_not_signed_rightly_is_refused(
    rig: Rig, how: dict[str, Any], reason: str
) -> None:
    answer = rig.post(event("evt-1"), **how)
    rig.settle()

    assert answer.status_code == 401
    assert reason in answer.json()["error"]
    assert NEW_SECRET not in answer.text
    assert rig.delivered_users() == []


def test_a_tampered_body_is_refused(rig: Rig) -> None:
    content = json.dumps(event("evt-1")).encode()
    header = sign(NEW_SECRET, content, time.time())

    answer = rig.post(content.replace(b"user-1", b"user-9"), header=header)

    assert answer.status_code == 401
    assert "no_match" in answer.json()["error"]


def test_the_previous_secret_still_verifies_during_a_rotation(rig: Rig) -> None:
    answer = rig.post(event("evt-1"), secret=OLD_SECRET)

    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body is not a JSON object"),
        (b'{"events": []}', "`events` is empty"),
        (b'{"events": {"a": 1}}', "`events` is not a list"),
    ],
)
def test_a_body_that_cannot_be_read_is_refused(
    rig: Rig, body: bytes, error: str
) -> None:
    answer = rig.post(body)

    assert answer.status_code == 400
    assert answer.json()["error"] == error


def test_too_many_or_too_large_is_refused(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "MAX_EVENTS", 2)
    many = rig.post({"events": [event(f"evt-{n}") for n in range(3)]})
    monkeypatch.setattr(web, "MAX_EVENTS_BYTES", 100)
    large = rig.post(event("evt-1"))

    assert many.status_code == 400
    assert "at most 2 events" in many.json()["error"]
    assert large.status_code == 413


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
    )
)
def test_whatever_a_signed_client_sends_gets_no_500(rig: Rig, body: bytes) -> None:
    answer = rig.post(body)

    assert answer.status_code in (200, 400, 413)


def test_the_web_process_mounts_the_endpoint_when_secrets_are_set(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    namespace = f"referloop-test-{uuid.uuid4().hex[:8]}"
    configured = Settings(
        redis_url=redis_url,
        namespace=namespace,
        playbooks=tmp_path,
        event_secrets=NEW_SECRET,
    )
    plain = Settings(redis_url=redis_url, namespace=namespace, playbooks=tmp_path)
    content = json.dumps(event("evt-1")).encode()
    headers = {SIGNATURE_HEADER: sign(NEW_SECRET, content, time.time())}

    with serving(create_app(configured)) as url:
        taken = httpx.post(url + EVENTS_PATH, content=content, headers=headers)
    with serving(create_app(plain)) as url:
        absent = httpx.post(url + EVENTS_PATH, content=content, headers=headers)

    assert taken.status_code == 200
    assert absent.status_code == 404


def test_events_that_cannot_be_stored_get_a_503_to_send_again(
    tmp_path: Path,
) -> None:
    """Redis does not answer: the product is told to send the same request again,
    quickly, rather than kept waiting."""
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    closed = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        playbooks=tmp_path,
        event_secrets=NEW_SECRET,
    )
    content = json.dumps(event("evt-1")).encode()
    headers = {SIGNATURE_HEADER: sign(NEW_SECRET, content, time.time())}

    with serving(create_app(closed)) as url:
        started = time.monotonic()
        answer = httpx.post(
            url + EVENTS_PATH, content=content, headers=headers, timeout=30
        )
        took_s = time.monotonic() - started

    assert answer.status_code == 503
    assert "send them again" in answer.json()["error"]
    assert took_s < 10


def test_requests_that_arrive_together_are_each_kept_once(rig: Rig) -> None:
    """Forty requests at once, some of them the same request twice: each is
    answered only once its events are stored, and each event fires once."""
    bodies = [json.dumps(event(f"evt-{n}", user=f"user-{n:02d}")) for n in range(30)]
    bodies += bodies[:10]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=rig.url, timeout=10) as client:

            async def post(content: str) -> httpx.Response:
                header = sign(NEW_SECRET, content.encode(), time.time())
                headers = {SIGNATURE_HEADER: header}
                return await client.post(EVENTS_PATH, content=content, headers=headers)

            return await asyncio.gather(*(post(body) for body in bodies))

    answers = asyncio.run(post_all())
    rig.settle()

    assert [a.json() for a in answers] == [{"accepted": 1, "rejected": []}] * 40
    assert rig.delivered_users() == [f"user-{n:02d}" for n in range(30)]


def test_a_group_is_stored_in_one_write_and_fails_as_one() -> None:
    """Writes that wait together are stored together; when storing fails, each
    request of that group learns it, and the next group is written afresh."""
    stored: list[list[str]] = []
    failing = {"evt-boom"}

    def store(events: list[ProductEvent]) -> None:
        ids = [e.event_id for e in events]
        if failing & set(ids):
            raise redis.ConnectionError("Redis went away")
        stored.append(ids)

    writer = GroupWriter(store)

    def one(event_id: str) -> list[ProductEvent]:
        read = read_event("event", event(event_id))
        assert isinstance(read, ProductEvent)
        return [read]

    async def scenario() -> list[BaseException | None]:
        first = [writer.write(one(f"evt-{n}")) for n in range(5)]
        results = await asyncio.gather(*first, return_exceptions=True)
        second = [writer.write(one("evt-boom")), writer.write(one("evt-5"))]
        results += await asyncio.gather(*second, return_exceptions=True)
        results.append(await writer.write(one("evt-6")))
        return results

    results = asyncio.run(scenario())

    assert results[:5] == [None] * 5
    assert [type(r) for r in results[5:7]] == [redis.ConnectionError] * 2
    assert results[7] is None
    assert stored == [[f"evt-{n}" for n in range(5)], ["evt-6"]]


def test_a_group_holds_at_most_its_limit_of_events() -> None:
    sizes: list[int] = []
    writer = GroupWriter(lambda events: sizes.append(len(events)))
    big = read_event("event", event("evt-big"))
    assert isinstance(big, ProductEvent)

    async def scenario() -> None:
        batches = [[big] * 600 for _ in range(5)] + [[big] * (MAX_GROUP_EVENTS + 1)]
        await asyncio.gather(*(writer.write(batch) for batch in batches))

    asyncio.run(scenario())

    # Three of 600 fit under 2,000; the rest go on, and a request larger than
    # the limit is written alone rather than refused.
    assert sizes == [1_800, 1_200, MAX_GROUP_EVENTS + 1]
    assert sum(sizes) == 5 * 600 + MAX_GROUP_EVENTS + 1

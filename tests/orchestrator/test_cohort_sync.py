"""Mixpanel's cohort-sync webhook, received by the web process over real HTTP.

Pages are authenticated, validated, stored and acknowledged; an in-process worker
then diffs and decides, so each test ends in the ledger: one delivery per user,
however often a page came.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
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

from orchestrator import actors, web
from orchestrator.engine import Engine
from orchestrator.ledger import Ledger
from orchestrator.loader import load
from orchestrator.settings import Settings
from orchestrator.snapshots import Snapshots
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.web import COHORT_SYNC_PATH, CohortSyncReceiver, create_app

USER, PASSWORD = "mixpanel", "sync-password-7f3a9c0b1d2e"
COHORT = "mixpanel:48213"
PLAYBOOK_ID = "pack-reviewers"

WORKSPACE = """\
name: cohort sync
activation:
  property: user.activated_at
fields:
  user:
    first_name: Ada
    activated_at: "2026-01-01"
"""

PLAYBOOK = f"""\
id: {PLAYBOOK_ID}
description: Ask pack owners to invite a reviewer.
owner: growth
trigger:
  cohort: {COHORT}
holdout: 0%
nudge:
  channel: outbox
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
"""


@dataclass
class Rig:
    url: str
    engine: Engine
    broker: StubBroker
    worker: dramatiq.Worker

    def push(
        self, body: Any, *, auth: tuple[str, str] | None = (USER, PASSWORD)
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            self.url + COHORT_SYNC_PATH,
            content=content,
            auth=auth,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )

    def settle(self) -> None:
        """Let the worker finish every snapshot and decision enqueued so far."""
        for _ in range(3):
            self.broker.join(actors.SOURCES_QUEUE)
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
    receiver = CohortSyncReceiver(engine, declared, USER, PASSWORD)
    app = Starlette(
        routes=[Route(COHORT_SYNC_PATH, receiver.receive, methods=["POST"])]
    )
    worker = dramatiq.Worker(
        broker, queues={actors.SOURCES_QUEUE, actors.TRIGGERS_QUEUE}, worker_threads=2
    )
    worker.start()
    try:
        with serving(app) as url:
            yield Rig(url, engine, broker, worker)
    finally:
        worker.stop()
        actors.install(None)


def page(
    action: str,
    number: int,
    total: int,
    users: list[str],
    session: str = "session-1",
) -> dict[str, Any]:
    members = [
        {
            "mixpanel_distinct_id": user,
            "email": f"{user}@example.com",
            "first_name": "Ada",
            "activated_at": "2026-01-01",
        }
        for user in users
    ]
    return {
        "action": action,
        "parameters": {
            "mixpanel_project_id": "3141592",
            "mixpanel_cohort_id": COHORT.split(":")[1],
            "mixpanel_cohort_name": "Pack owners",
            "mixpanel_session_id": session,
            "page_info": {"total_pages": total, "page_count": number},
            "members": members,
        },
    }


def users(first: int, last: int) -> list[str]:
    return [f"user-{n}" for n in range(first, last)]


def test_a_page_is_acknowledged_in_the_shape_mixpanel_expects(rig: Rig) -> None:
    answer = rig.push(page("members", 1, 1, users(0, 3)))

    assert answer.status_code == 200
    assert answer.json() == {"action": "members", "status": "success"}


@pytest.mark.parametrize(
    "auth", [None, (USER, "wrong-password"), ("someone", PASSWORD)]
)
def test_a_request_without_the_right_credentials_is_refused(
    rig: Rig, auth: tuple[str, str] | None
) -> None:
    answer = rig.push(page("members", 1, 1, users(0, 3)), auth=auth)

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert answer.json()["status"] == "failure"
    assert "password" in answer.json()["error"]["message"]
    assert Snapshots(rig.engine.store).members(COHORT) == 0


def test_a_bad_page_is_refused_with_the_field_to_fix(rig: Rig) -> None:
    body = page("members", 1, 1, users(0, 3))
    del body["parameters"]["mixpanel_session_id"]

    answer = rig.push(body)

    assert answer.status_code == 400
    assert answer.json()["action"] == "members"
    assert "mixpanel_session_id" in answer.json()["error"]["message"]


def test_a_body_that_is_not_json_is_refused(rig: Rig) -> None:
    answer = rig.push(b"{not json")

    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "the body is not JSON"


def test_an_oversized_page_is_refused_before_it_is_read(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "MAX_SYNC_BYTES", 1024)

    answer = rig.push(page("members", 1, 1, users(0, 50)))

    assert answer.status_code == 413
    assert answer.json()["status"] == "failure"


def test_every_page_is_applied_once_when_pages_repeat_and_the_sync_restarts(
    rig: Rig,
) -> None:
    """A sync of three pages, its second page sent twice, then the whole sync
    again from the top (as Mixpanel does after a failure): each of the 30 users
    is in the snapshot once and is decided once."""
    pages = [page("members", n + 1, 3, users(10 * n, 10 * n + 10)) for n in range(3)]
    sent = [pages[0], pages[1], pages[1], pages[2], *pages]

    answers = [rig.push(body) for body in sent]
    rig.settle()

    assert {answer.status_code for answer in answers} == {200}
    assert Snapshots(rig.engine.store).members(COHORT) == 30
    assert rig.delivered_users() == sorted(users(0, 30))


def test_entered_and_left_users_change_the_membership_and_entries_are_judged_once(
    rig: Rig,
) -> None:
    rig.push(page("members", 1, 1, users(0, 5)))
    rig.settle()
    added = page("add_members", 1, 1, users(5, 8), session="session-2")

    for _ in range(3):
        assert rig.push(added).status_code == 200
    rig.push(page("remove_members", 1, 1, users(0, 2), session="session-3"))
    rig.settle()

    snapshots = Snapshots(rig.engine.store)
    assert snapshots.members(COHORT) == 6
    assert not snapshots.is_member(COHORT, "user-0")
    assert snapshots.is_member(COHORT, "user-7")
    assert rig.delivered_users() == sorted(users(0, 8))


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
    )
)
def test_whatever_a_client_sends_gets_no_500(rig: Rig, body: bytes) -> None:
    answer = rig.push(body)

    assert answer.status_code in (200, 400, 413)
    assert answer.json()["status"] in ("success", "failure")


def test_no_password_or_email_reaches_the_log(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    rig.push(page("members", 1, 1, users(0, 3)))
    rig.push(
        page("members", 1, 1, users(0, 3)), auth=(USER, "guess-" + uuid.uuid4().hex)
    )

    said = caplog.text
    assert PASSWORD not in said
    assert "@example.com" not in said


def test_the_web_process_mounts_the_endpoint_when_its_credentials_are_set(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    namespace = f"referloop-test-{uuid.uuid4().hex[:8]}"
    configured = Settings(
        redis_url=redis_url,
        namespace=namespace,
        playbooks=tmp_path,
        cohort_sync_user=USER,
        cohort_sync_password=PASSWORD,
    )
    plain = Settings(redis_url=redis_url, namespace=namespace, playbooks=tmp_path)
    body = json.dumps(page("members", 1, 1, users(0, 2))).encode()

    with serving(create_app(configured)) as url:
        taken = httpx.post(url + COHORT_SYNC_PATH, content=body, auth=(USER, PASSWORD))
    with serving(create_app(plain)) as url:
        absent = httpx.post(url + COHORT_SYNC_PATH, content=body, auth=(USER, PASSWORD))

    assert taken.status_code == 200
    assert absent.status_code == 404


def test_a_page_that_cannot_be_stored_gets_a_503_for_mixpanel_to_retry(
    tmp_path: Path,
) -> None:
    (tmp_path / "referloop.yaml").write_text(WORKSPACE)
    (tmp_path / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    closed = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        playbooks=tmp_path,
        cohort_sync_user=USER,
        cohort_sync_password=PASSWORD,
    )
    body = json.dumps(page("members", 1, 1, users(0, 2))).encode()

    with serving(create_app(closed)) as url:
        answer = httpx.post(
            url + COHORT_SYNC_PATH, content=body, auth=(USER, PASSWORD), timeout=30
        )

    assert answer.status_code == 503
    assert answer.json()["action"] == "members"
    assert answer.json()["status"] == "failure"

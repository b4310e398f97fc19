"""The whole loop through real processes: the product's events signed over HTTP to
the web process, a worker that nudges, credits and grants, and the simulated
product that receives the nudges and the grants.

The hard case: the worker is killed (SIGKILL) after the product applied a grant
and before the answer reached it. A new worker gives the grant again, with the
same idempotency key: the product applies it once, the ledger records it once,
and the reinforcement that follows a grant goes out once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from vendor_rig import SIGNING_KEY, write_playbooks

from integrations.webhook import sign
from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.ledger import GRANTS, Ledger, Outcome
from orchestrator.rewards import grant_id
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.web import EVENTS_PATH, SIGNATURE_HEADER, create_app
from simulator import Fault, Simulator, all_vendors
from simulator.env import vendor_env
from simulator.product import ProductSim
from tests.orchestrator.web_rig import serving

EVENT_SECRET = "loop-e2e-event-secret-0123456789abcdefgh"
PLAYBOOK_ID = "pack-reviewers"

PLAYBOOK = """\
id: pack-reviewers
description: Ask for a reviewer; reward the referrer of an activated invitee.
owner: growth
trigger:
  event: pack_uploaded
holdout: 0%
nudge:
  channel: webhook
  webhook: {topic: invite-reviewers}
  invite: {share: review_request}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{ user.first_name }}, invite a reviewer: {{ invite.link }}"
reinforcement:
  - on: reward_granted
    nudge:
      channel: webhook
      webhook: {topic: reward-thanks}
      invite: {share: review_request}
      trust: Reviewers see one pack.
      message:
        body: "Your seats are on, {{ user.first_name }}. Again? {{ invite.link }}"
reward:
  earned_on: invitee_activated
  referrer: {grant: guest_seats, amount: 2}
  hold: 1s
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(all_vendors()) as running:
        yield running


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-v", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("a"),
        text=True,
    )


def _post(base: str, events: list[dict[str, object]]) -> httpx.Response:
    body = json.dumps({"events": events}).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(EVENT_SECRET, body, time.time()),
    }
    return httpx.post(base + EVENTS_PATH, content=body, headers=headers, timeout=10)


def _wait(done: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return bool(done())  # type: ignore[operator]


def test_a_worker_killed_between_grant_and_answer_gives_the_grant_once(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "playbooks"
    write_playbooks(folder, {})
    (folder / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)
    namespace = f"referloop-loop-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **vendor_env(sim),
        "REDIS_URL": redis_url,
        "REFERLOOP_NAMESPACE": namespace,
        "REFERLOOP_PLAYBOOKS": str(folder),
        "REFERLOOP_SIGNING_KEYS": SIGNING_KEY,
        "REFERLOOP_WORKER_THREADS": "2",
    }
    for name in ("REFERLOOP_OUTBOX", "REFERLOOP_SOURCE_FILE"):
        env.pop(name, None)
    product = sim.vendor("webhook")
    assert isinstance(product, ProductSim)
    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        playbooks=folder,
        event_secrets=EVENT_SECRET,
    )
    broker = build_broker(settings)
    declared = actors.declare(broker)
    grants = Ledger(Store.from_settings(settings), GRANTS)
    gid = grant_id(PLAYBOOK_ID, "referrer", "u-new")
    log = tmp_path / "worker.log"
    worker = _worker(env, log)
    try:
        with serving(create_app(settings)) as web:
            nudge = {
                "event": "pack_uploaded",
                "id": "e-1",
                "time": "2026-12-02T10:00:00Z",
                "user": {
                    "id": "u-ref",
                    "first_name": "Ada",
                    "activated_at": "2026-01-01",
                },
                "account": {"id": "acct-1"},
            }
            assert _post(web, [nudge]).status_code == 200
            assert _wait(lambda: len(product.nudges) == 1, 30), log.read_text()
            link = product.nudges[0]["data"]["invite_link"]
            token = parse_qs(urlsplit(link).query)["token"][0]

            invitee = {"id": "u-new", "first_name": "Grace"}
            accepted = [
                {
                    "event": "invite_accepted",
                    "id": "e-2",
                    "time": "2026-12-02T11:00:00Z",
                    "user": invitee,
                    "account": {"id": "acct-1"},
                    "properties": {"token": token},
                },
                {
                    "event": "invitee_activated",
                    "id": "e-3",
                    "time": "2026-12-02T12:00:00Z",
                    "user": invitee,
                    "account": {"id": "acct-1"},
                },
            ]
            # Sent twice, as a product retrying after a lost answer would.
            assert _post(web, accepted).json()["accepted"] == 2
            assert _post(web, accepted).json()["accepted"] == 2
            assert _wait(lambda: grants.get(gid) is not None, 30), log.read_text()

        # The product applies the grant and its answer never arrives; the
        # worker is killed while it waits for it.
        sim.fault("webhook", Fault.lost_answer(20), times=1)
        declared.grants_due.send("slot-1")
        assert _wait(lambda: len(product.grants) == 1, 30), log.read_text()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert grants.get(gid).outcome == Outcome.RESERVED  # type: ignore[union-attr]

        worker = _worker(env, log)
        assert _wait(
            lambda: grants.get(gid).outcome == Outcome.SENT,  # type: ignore[union-attr]
            150,
        ), log.read_text()
        assert _wait(
            lambda: any(n["topic"] == "reward-thanks" for n in product.nudges), 30
        ), log.read_text()
        time.sleep(2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        broker.close()

    sent_for_grant = [
        r
        for r in sim.received("webhook", "/grants")
        if r.request.header("idempotency-key") == gid
    ]
    assert len(sent_for_grant) >= 2, "the grant was not sent again after the kill"
    assert [g["idempotency_key"] for g in product.grants] == [gid]
    assert product.grants[0]["user_id"] == "u-ref"
    topics = [n["topic"] for n in product.nudges]
    assert topics == ["invite-reviewers", "reward-thanks"]
    assert "Grace" not in log.read_text()

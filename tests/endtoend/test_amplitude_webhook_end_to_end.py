"""Amplitude's Cohort Webhook through the web app and a real worker process.

The simulated sender posts three syncs of a cohort as Amplitude does: batches on
a few threads, duplicates, a shuffled order, and a first answer held back past
the sender's timeout so that a batch already applied is sent again. The web app
runs in this process (uvicorn on loopback, as in the loop's end-to-end test);
`referloop worker` runs as a separate process on the test Redis and writes its
nudges to the outbox. Every user who entered is nudged exactly once, and a user
who leaves and enters again is held, as `limits.reentry: once` says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vendor_rig import SIGNING_KEY

from orchestrator.ledger import Ledger
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.web import (
    AMPLITUDE_COHORTS_PATH,
    DEFAULT_AMPLITUDE_HEADER,
    create_app,
)
from simulator.amplitude_webhook import CohortWebhookSender, Sync
from tests.orchestrator.web_rig import serving

SECRET = "e2e-amplitude-secret-7c41d09b"
COHORT_ID = "9pq2tx"
PLAYBOOK_ID = "pack-reviewers"
COMPUTED_S = 1_764_000_000
TIMEOUT_S = 1.0
# Longer than the sender waits, so the first batch is retried after it was applied.
HELD_BACK_S = 1.6

WORKSPACE = """\
name: amplitude end to end
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
  cohort: amplitude:{COHORT_ID}
holdout: 0%
limits:
  reentry: once
nudge:
  channel: outbox
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
"""

Asgi = Callable[..., Any]


class FirstAnswerHeldBack:
    """The app, except that its first answer is sent `delay_s` late: the batch is
    applied at once, and only the answer is slow, as on a loaded web dyno."""

    def __init__(self, app: Asgi, delay_s: float) -> None:
        self.app = app
        self.delay_s = delay_s
        self.is_held = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.is_held:
            await self.app(scope, receive, send)
            return
        self.is_held = True

        async def late(message: Any) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(self.delay_s)
            await send(message)

        await self.app(scope, receive, late)


def member(n: int) -> dict[str, str]:
    return {
        "user_id": f"user-{n}",
        "email": f"user-{n}@example.com",
        "first_name": "Ada",
        "activated_at": "2026-01-01",
        "account_id": f"acct-{n % 3}",
    }


def members(first: int, last: int) -> list[dict[str, str]]:
    return [member(n) for n in range(first, last)]


def write_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "referloop.yaml").write_text(WORKSPACE)
    (folder / f"{PLAYBOOK_ID}.yaml").write_text(PLAYBOOK)


def start_worker(settings: Settings, outbox: Path, log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "REDIS_URL": str(settings.redis_url),
        "REFERLOOP_NAMESPACE": settings.namespace,
        "REFERLOOP_PLAYBOOKS": str(settings.playbooks),
        "REFERLOOP_SIGNING_KEYS": SIGNING_KEY,
        "REFERLOOP_WORKER_THREADS": "4",
        "REFERLOOP_OUTBOX": str(outbox),
    }
    env.pop("REFERLOOP_SOURCE_FILE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "-v", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )


def outcomes(ledger: Ledger) -> Counter[tuple[str, str]]:
    entries = ledger.entries(ledger.keys_for_playbook(PLAYBOOK_ID))
    return Counter((e.fields["user"], e.outcome) for e in entries)


def wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    return done()


def test_three_syncs_with_retries_and_duplicates_nudge_each_entrant_once(
    redis_url: str, tmp_path: Path
) -> None:
    # Given: the web app (first answer held back) and a worker on the outbox.
    folder = tmp_path / "playbooks"
    write_folder(folder)
    outbox = tmp_path / "outbox.jsonl"
    log = tmp_path / "worker.log"
    settings = Settings(
        redis_url=redis_url,
        namespace=f"referloop-amp-{uuid.uuid4().hex[:8]}",
        playbooks=folder,
        amplitude_cohort_secrets=SECRET,
    )
    ledger = Ledger(Store.from_settings(settings))
    app = FirstAnswerHeldBack(create_app(settings), HELD_BACK_S)
    syncs = [
        Sync(entered=members(0, 30), computed_s=COMPUTED_S),
        Sync(entered=members(30, 40), left=members(0, 5), computed_s=COMPUTED_S + 60),
        Sync(entered=members(0, 3) + members(40, 45), computed_s=COMPUTED_S + 120),
    ]
    # What the ledger holds once each sync is decided: Amplitude's syncs come a
    # minute or more apart, so each is decided before the next arrives.
    stages = [
        Counter({(f"user-{n}", "sent"): 1 for n in range(30)}),
        Counter({(f"user-{n}", "sent"): 1 for n in range(40)}),
    ]
    expected = Counter({(f"user-{n}", "sent"): 1 for n in range(45)})
    expected.update({(f"user-{n}", "held"): 1 for n in range(3)})
    stages.append(expected)
    worker = start_worker(settings, outbox, log)

    # When: Amplitude sends the three syncs, with duplicates, shuffled.
    try:
        with serving(app) as url:
            options: dict[str, Any] = {
                "batch_size": 8,
                "threads": 4,
                "timeout_s": TIMEOUT_S,
                "backoff_s": 0.2,
                "duplicates": 2,
                "shuffle": True,
                "seed": 11,
            }
            target = url + AMPLITUDE_COHORTS_PATH
            header = DEFAULT_AMPLITUDE_HEADER
            with CohortWebhookSender(
                target, header, SECRET, COHORT_ID, **options
            ) as amplitude:
                attempts = []
                for sync, stage in zip(syncs, stages, strict=True):
                    attempts += amplitude.send(sync)
                    decided = wait_until(lambda s=stage: outcomes(ledger) == s, 45)
                    assert decided, log.read_text()
                batches = {a.message_id for a in attempts}
                delivered = amplitude.delivered()
        # Anything more would be a second nudge arriving late.
        time.sleep(1.0)
        settled = outcomes(ledger)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)

    # Then
    assert code == 0, log.read_text()
    assert delivered == batches
    timed_out = [a for a in attempts if a.status is None]
    assert len(timed_out) == 1
    assert timed_out[0].number == 1
    retried = [a for a in attempts if a.message_id == timed_out[0].message_id]
    assert [a.status for a in retried if not a.is_replay][-1] == 200
    # Two batches replayed in each sync, but the third sync has only one.
    replays = [a for a in attempts if a.is_replay and a.number == 1]
    assert len(replays) == 2 + 2 + 1
    assert settled == expected
    nudged = Counter(json.loads(line)["user_id"] for line in outbox.open())
    assert nudged == Counter(f"user-{n}" for n in range(45))
    assert "@example.com" not in log.read_text()

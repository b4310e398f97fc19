"""A worker process wired to the simulated vendors, for end-to-end tests.

The simulator runs in the test's process; `referloop worker` runs as ops run it,
a separate process with settings from its environment, on the test Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.ledger import Ledger
from orchestrator.settings import Settings
from orchestrator.state import Store
from simulator import Simulator
from simulator.env import vendor_env

SIGNING_KEY = "e2e-signing-key-0123456789abcdefghijklmn"  # 40 characters

WORKSPACE = """\
name: end to end
time_zone: UTC
activation:
  property: user.activated_at
fields:
  user:
    first_name: Ada
    activated_at: "2026-01-01"
vendors:
  customerio:
    budget: {customerio_budget}
  braze:
    budget: {braze_budget}
  intercom:
    budget: {intercom_budget}
"""

PLAYBOOK = """\
id: {id}
description: Ask members of the cohort to invite a reviewer.
owner: growth
trigger:
  cohort: {cohort}
holdout: 0%
nudge:
  channel: {channel}
  {channel}: {reference}
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    subject: A reviewer for your pack
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
"""

REFERENCES = {
    "customerio": "{event: invite_nudge}",
    "braze": "{campaign: c-1}",
    "intercom": "{from_admin: 1}",
    "webhook": "{topic: invite-reviewers}",
}


def write_playbooks(folder: Path, cohorts: dict[str, str], **budgets: str) -> None:
    """One playbook per channel, each on its own cohort (`channel -> cohort`)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "customerio_budget": "3000 per 3s",
        "braze_budget": "250000 per 1h",
        "intercom_budget": "10000 per 1m",
        **budgets,
    }
    (folder / "referloop.yaml").write_text(WORKSPACE.format(**settings))
    for channel, cohort in cohorts.items():
        text = PLAYBOOK.format(
            id=f"invite-{channel}",
            cohort=cohort,
            channel=channel,
            reference=REFERENCES[channel],
        )
        (folder / f"invite-{channel}.yaml").write_text(text)


def members(prefix: str, count: int) -> list[dict[str, object]]:
    """Engage results for `count` activated users."""
    return [
        {
            "$distinct_id": f"{prefix}-{n}",
            "$properties": {
                "$first_name": "Ada",
                "activated_at": "2026-01-01",
                "account_id": f"acct-{n % 7}",
            },
        }
        for n in range(count)
    ]


@dataclass
class Running:
    store: Store
    declared: actors.Actors
    ledger: Ledger
    workers: list[subprocess.Popen[str]]

    def poll(self, cohort: str) -> None:
        self.declared.poll.send(cohort, f"slot-{uuid.uuid4().hex[:6]}")

    def wait_for(
        self, done: Callable[[], bool], timeout_s: float, every_s: float = 0.2
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            for worker in self.workers:
                assert worker.poll() is None, "a worker stopped on its own"
            time.sleep(every_s)
        return done()


@contextmanager
def running_workers(
    redis_url: str,
    sim: Simulator,
    playbooks: Path,
    *,
    workers: int = 1,
    threads: int = 4,
    log: Path | None = None,
) -> Iterator[Running]:
    """Start `workers` worker processes on a namespace of their own; stop them
    with SIGTERM at the end and check that they stopped cleanly."""
    namespace = f"referloop-e2e-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **vendor_env(sim),
        "REDIS_URL": redis_url,
        "REFERLOOP_NAMESPACE": namespace,
        "REFERLOOP_PLAYBOOKS": str(playbooks),
        "REFERLOOP_SIGNING_KEYS": SIGNING_KEY,
        "REFERLOOP_WORKER_THREADS": str(threads),
    }
    for name in ("REFERLOOP_OUTBOX", "REFERLOOP_SOURCE_FILE"):
        env.pop(name, None)
    logs = [
        (log.with_suffix(f".{n}.log") if log else Path(os.devnull)).open("w")
        for n in range(workers)
    ]
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "-v", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            text=True,
        )
        for out in logs
    ]
    settings = Settings(redis_url=redis_url, namespace=namespace)
    broker = build_broker(settings)
    store = Store.from_settings(settings)
    try:
        yield Running(store, actors.declare(broker), Ledger(store), started)
    finally:
        for worker in started:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=60) for worker in started]
        for out in logs:
            out.close()
        broker.close()
        assert codes == [0] * len(started), f"workers exited with {codes}"

"""`referloop worker` as ops run it: settings from the environment, Redis, a poll
from the clock's queue, nudges out, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.ledger import Ledger
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COHORT = "mixpanel:63390"  # the trigger cohort of collaboration-thanks.yaml


def test_a_worker_polls_a_cohort_and_delivers_then_stops_on_sigterm(
    store, redis_url, tmp_path
):
    """Given the example triggers standing in for Mixpanel, a poll of one cohort
    leads to deliveries in the outbox, one line per delivery the ledger calls
    sent; SIGTERM then stops the worker with exit code 0."""
    namespace = f"referloop-test-{uuid.uuid4().hex[:8]}"
    outbox = tmp_path / "nudges.jsonl"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "REFERLOOP_NAMESPACE": namespace,
        "REFERLOOP_PLAYBOOKS": str(ROOT / "playbooks"),
        "REFERLOOP_SOURCE_FILE": str(ROOT / "examples" / "triggers.jsonl"),
        "REFERLOOP_OUTBOX": str(outbox),
        "REFERLOOP_SIGNING_KEYS": "k" * 40,
        "REFERLOOP_WORKER_THREADS": "2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    settings = Settings(redis_url=redis_url, namespace=namespace)
    broker = build_broker(settings)
    declared = actors.declare(broker)
    try:
        declared.poll.send("mixpanel:61002", "slot-1")  # the activation cohort first
        declared.poll.send(COHORT, "slot-1")
        ledger = Ledger(store.__class__(store.redis, namespace))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ledger.keys_for_playbook(
            "collaboration-thanks"
        ):
            time.sleep(0.2)
        time.sleep(2)  # let the deliveries that are due now go out
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=40)
        broker.close()

    counts = ledger.counts()
    lines = outbox.read_text().splitlines() if outbox.exists() else []
    assert worker.returncode == 0, stderr[-2000:]
    assert ledger.keys_for_playbook("collaboration-thanks")
    assert len(lines) == counts.get("sent", 0)
    assert all(json.loads(line)["playbook"] == "collaboration-thanks" for line in lines)

"""Redis briefly unavailable: the worker waits and resumes, and nothing is lost.

Each test runs `referloop worker` against a `redis-server` of its own, on a free
port in the test's folder, so that it can take Redis away without disturbing
the suite's shared Redis. Redis goes away for OUTAGE_S while deliveries are
still pending, in one of two ways:

- unreachable: the server is frozen (SIGSTOP, then SIGCONT), as when the network
  drops packets; the port stays open and commands hang until it comes back.
- refusing: the server shuts down and starts again on the same port from its
  append-only file, as in a restart or failover; meanwhile connections are
  refused, and no data is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from orchestrator import actors
from orchestrator.broker import build_broker
from orchestrator.ledger import FINAL, Ledger
from orchestrator.settings import Settings
from orchestrator.state import Store

OUTAGE_S = 10.0
START_TIMEOUT_S = 10.0
FIRST_WORK_TIMEOUT_S = 20.0
# Long enough for a message that Dramatiq retries twice around the outage (15 s,
# then 30 s of backoff, as happens on a loaded machine) to run and hand on its
# work; a worker that simply waits for Redis needs a few seconds.
SETTLE_TIMEOUT_S = 100.0
STOP_TIMEOUT_S = 40.0
POLL_S = 0.05
# Deliveries settled before Redis is taken away: some, far from all.
SETTLED_BEFORE_OUTAGE = 5

NAMESPACE = "referloop-outage"
ACTIVATED = 200
NOT_ACTIVATED = 20
MEMBERS = ACTIVATED + NOT_ACTIVATED
OUTAGE_COHORT = "mixpanel:70001"
LATER_COHORT = "mixpanel:70002"
SIGNING_KEYS = "k" * 40
# The activation gate, and no quiet hours or caps: what is due is sent.
WORKSPACE = """\
name: outage test workspace
activation:
  property: user.activated_at
"""


@dataclass(frozen=True)
class LoopPlaybook:
    """A playbook that nudges every activated member of a cohort, through the
    outbox, with no holdout, quiet hours or caps: what is due is sent."""

    id: str
    cohort: str
    priority: int = 0
    delay: str | None = None

    def text(self) -> str:
        delay = f"  delay: {self.delay}\n" if self.delay else ""
        return (
            f"id: {self.id}\n"
            "description: Ask users who entered a cohort to invite a colleague.\n"
            "owner: growth\n"
            f"priority: {self.priority}\n"
            "trigger:\n"
            f"  cohort: {self.cohort}\n"
            f"{delay}"
            "holdout: 0%\n"
            "nudge:\n"
            "  channel: outbox\n"
            "  invite:\n"
            "    share: workspace_invite\n"
            "  trust: They will see the workspace you share, and nothing else.\n"
            "  message:\n"
            "    body: Invite a colleague to {{ account.id }}.\n"
        )


PLAYBOOKS = (
    # Due at once: being sent when Redis goes away.
    LoopPlaybook("outage-now", OUTAGE_COHORT, priority=1),
    # Deferred: waiting in the delay queue while Redis is away.
    LoopPlaybook("outage-later", OUTAGE_COHORT, delay="8s"),
    # Polled once Redis is back: the worker still takes new work.
    LoopPlaybook("after-outage", LATER_COHORT),
)
EXPECTED_OUTCOMES = {"sent": ACTIVATED, "held": NOT_ACTIVATED}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    """True when Redis takes commands (not while it loads its data)."""
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


class PrivateRedis:
    """A `redis-server` of one test's own, which the test may take away.

    `durable` keeps every write in an append-only file (fsynced on each write),
    so that a restart on the same port comes back with all the data.
    """

    def __init__(self, folder: Path, *, durable: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the Redis outage tests need one "
                "of their own (apt-get install redis-server)",
                pytrace=False,
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.folder = folder
        self.durable = durable
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        appendonly = "yes" if self.durable else "no"
        args = [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(self.folder), "--save", ""),
            *("--appendonly", appendonly, "--appendfsync", "always"),
        ]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)
        if not _wait_for(lambda: _answers(self.url), START_TIMEOUT_S):
            self.stop()
            problem = f"redis-server did not start on port {self.port}"
            pytest.fail(problem, pytrace=False)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def shut_down(self) -> None:
        """Stop the server as an operator would; it writes out its data first."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop whatever is left of the server, frozen or not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.terminate()
        try:
            self.process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)


@dataclass(frozen=True)
class Outage:
    """A private Redis and the way this test takes it away for OUTAGE_S."""

    kind: str
    server: PrivateRedis

    def happen(self) -> None:
        if self.kind == "unreachable":
            self.server.freeze()
            time.sleep(OUTAGE_S)
            self.server.thaw()
            return

        self.server.shut_down()
        time.sleep(OUTAGE_S)
        self.server.start()


@pytest.fixture(params=["unreachable", "refusing"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    """A running private Redis, and how it will go away."""
    kind = str(request.param)
    server = PrivateRedis(tmp_path / "redis", durable=kind == "refusing")
    server.start()
    yield Outage(kind, server)
    server.stop()


@pytest.fixture
def trigger_file(tmp_path: Path) -> Path:
    """Both cohorts' members: ACTIVATED with `activated_at`, NOT_ACTIVATED without."""
    path = tmp_path / "triggers.jsonl"
    with path.open("w", encoding="utf-8") as triggers:
        for cohort in (OUTAGE_COHORT, LATER_COHORT):
            for number in range(MEMBERS):
                triggers.write(json.dumps(_member(cohort, number)) + "\n")
    return path


def _member(cohort: str, number: int) -> dict[str, object]:
    user: dict[str, object] = {"id": f"u_{cohort.split(':')[1]}_{number:03d}"}
    if number < ACTIVATED:
        user["activated_at"] = "2025-01-06T09:00:00Z"
    account = {"id": f"acct_{number % 7}"}
    return {"cohort": cohort, "user": user, "account": account}


@pytest.fixture
def playbook_folder(tmp_path: Path) -> Path:
    """The workspace file and PLAYBOOKS, each in a file of its own."""
    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "referloop.yaml").write_text(WORKSPACE, encoding="utf-8")
    for playbook in PLAYBOOKS:
        path = folder / f"{playbook.id}.yaml"
        path.write_text(playbook.text(), encoding="utf-8")
    return folder


@pytest.fixture
def worker(
    outage: Outage, playbook_folder: Path, trigger_file: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`referloop worker` on the private Redis, logging to `worker.log`."""
    env = {
        **os.environ,
        "REDIS_URL": outage.server.url,
        "REFERLOOP_NAMESPACE": NAMESPACE,
        "REFERLOOP_PLAYBOOKS": str(playbook_folder),
        "REFERLOOP_SOURCE_FILE": str(trigger_file),
        "REFERLOOP_OUTBOX": str(tmp_path / "nudges.jsonl"),
        "REFERLOOP_SIGNING_KEYS": SIGNING_KEYS,
        "REFERLOOP_WORKER_THREADS": "2",
    }
    env.pop("DRAMATIQ_BROKER_URL", None)
    command = [sys.executable, "-m", "orchestrator", "-v", "worker"]
    # A file, not a pipe: a worker that logs many tracebacks must not block.
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=log)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _outcomes(ledger: Ledger, playbook_id: str) -> Counter[str]:
    keys = ledger.keys_for_playbook(playbook_id)
    return Counter(entry.outcome for entry in ledger.entries(keys))


def _settled(ledger: Ledger) -> int:
    """Deliveries of every playbook that reached a final outcome."""
    total = 0
    for playbook in PLAYBOOKS:
        outcomes = _outcomes(ledger, playbook.id)
        total += sum(outcomes[outcome] for outcome in FINAL)
    return total


def _all_settled(ledger: Ledger) -> bool:
    return _settled(ledger) == MEMBERS * len(PLAYBOOKS)


def _trouble(log: Path, limit: int = 12) -> str:
    """The worker's distinct warnings and errors, first lines only."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    levels = ("WARNING", "ERROR", "CRITICAL")
    found = dict.fromkeys(line[:200] for line in lines if line.startswith(levels))
    return "\n".join(list(found)[:limit]) or "(no warnings in the worker's log)"


def test_the_worker_waits_out_a_redis_outage_and_loses_no_delivery(
    outage: Outage, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Given a worker sending one cohort's nudges, some of them due now and some
    deferred, when Redis goes away for ten seconds in the middle and comes back,
    then the worker is still running, takes a new poll, and every delivery ends
    as the playbooks say (sent when activated, else held) with one outbox line
    per sent delivery; SIGTERM then stops it with exit code 0."""
    client = redis.Redis.from_url(outage.server.url, decode_responses=True)
    ledger = Ledger(Store(client, NAMESPACE))
    broker = build_broker(Settings(redis_url=outage.server.url, namespace=NAMESPACE))
    declared = actors.declare(broker)
    log = tmp_path / "worker.log"
    try:
        # Given: deliveries under way, far from done.
        declared.poll.send(OUTAGE_COHORT, "slot-1")
        started = _wait_for(
            lambda: _settled(ledger) >= SETTLED_BEFORE_OUTAGE, FIRST_WORK_TIMEOUT_S
        )
        assert started, f"no delivery settled before the outage\n{_trouble(log)}"
        pending = MEMBERS * len(PLAYBOOKS) - _settled(ledger)
        assert pending > MEMBERS, "the worker finished before the outage"
        client.set(f"{NAMESPACE}:kept", "yes")

        # When: Redis goes away and comes back; then a poll of another cohort.
        outage.happen()
        alive_after_outage = worker.poll() is None
        kept = client.get(f"{NAMESPACE}:kept")
        declared.poll.send(LATER_COHORT, "slot-2")
        _wait_for(lambda: _all_settled(ledger), SETTLE_TIMEOUT_S)
        alive_at_end = worker.poll() is None

        outcomes = {p.id: dict(_outcomes(ledger, p.id)) for p in PLAYBOOKS}
        counts = ledger.counts()
        sent_keys = {
            entry.delivery_key
            for playbook in PLAYBOOKS
            for entry in ledger.entries(ledger.keys_for_playbook(playbook.id))
            if entry.outcome == "sent"
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=STOP_TIMEOUT_S)
        finally:
            broker.close()
            client.close()

    outbox = tmp_path / "nudges.jsonl"
    lines = outbox.read_text(encoding="utf-8").splitlines() if outbox.exists() else []
    outbox_keys = [json.loads(line)["delivery_key"] for line in lines]
    trouble = _trouble(log)

    # The outage itself lost nothing: what is missing below, the worker lost.
    assert kept == "yes"
    assert alive_after_outage, trouble
    assert alive_at_end, trouble
    assert {p.id: EXPECTED_OUTCOMES for p in PLAYBOOKS} == outcomes, trouble
    assert counts.get("sent") == ACTIVATED * len(PLAYBOOKS), counts
    assert counts.get("held:not_activated") == NOT_ACTIVATED * len(PLAYBOOKS), counts
    assert len(lines) == counts.get("sent")
    assert sorted(sent_keys) == sorted(outbox_keys)
    assert worker.returncode == 0, trouble

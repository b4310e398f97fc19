"""How much of each vendor's rate limit two workers use, without 429s or losses.

Method: one vendor at a time. The simulator runs in this process, on loopback,
and enforces the vendor's limit on its send endpoint over a sliding window short
enough for a one-minute run to test, scaled from the documented limit:

- Braze, 250,000 an hour: 694 per 10 s (its hourly window could never fill in a
  minute, so this is stricter than Braze);
- Intercom, 10,000 a minute: 1,666 per 10 s (Intercom itself spreads its limit
  over 10-second windows); every call counts, the contact search included;
- Customer.io, at a budget of 200 a second: 600 per 3 s (Customer.io's 3-second
  window), on Track API events.

The workspace file sets each vendor's budget at the documented limit
(`250000 per 1h`, `10000 per 1m`, `200 per 1s`; `--budget-share` scales them)
and no caps; referloop paces such budgets 2% under their count
(`orchestrator.budgets.with_headroom`), so the best a run can reach is 0.98.
One playbook per vendor, triggered by a product event, holdout 0%, no delay, no
quiet hours and no send window, sends a Braze campaign trigger, an Intercom
in-app message from an admin, or a Customer.io Track event. The
deliveries, enough for the warm-up and the measured window at the limit's rate
times MARGIN, are product events of as many activated users, saved as
occurrences and decided in this process (untimed), then handed to the workers
as `deliver` messages of `actors.BATCH` keys once both are up.

WORKERS processes of `python -m orchestrator worker`, THREADS threads each (the
default), on the Redis at 127.0.0.1:6379, database 14 (flushed before and
after), with a fresh namespace per vendor, reach the simulator through the
vendor's environment variables and share the vendor's budget in Redis (GCRA).

Measured at the simulator: the 2xx answers on the limited endpoints per second
over SECONDS, from WARMUP_S after the first 2xx (the queue is full by then),
against the limit's own rate (the baseline), and the share of 429s among the
requests in that window. Once every delivery has settled, each run is
reconciled: the ledger counts every delivery `sent` and nothing else, the
simulator took a send for every user (lost: those it took none for), no user
was sent to twice (duplicates), and nothing was dead-lettered. CPU is the
workers' (from /proc, while they sent), this process's (the simulator, from
`time.process_time`) and the Redis server's (INFO), to tell a saturated machine
from a budget that waits.

Target: at least TARGET_RATIO of each limit, at most TARGET_429_SHARE of the
requests answered 429, nothing lost, nothing sent twice.

Run: `uv run python bench/bench_budgets.py` (`--seconds 15` for a quick look)
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import redis
from benchredis import URL, connect
from vendorbench import setting_names, vendor_env

from integrations import vendors
from integrations.base import ProductEvent
from integrations.braze import MESSAGING_PATHS
from integrations.customerio import TRACK_BUDGET
from orchestrator import actors, occurrences
from orchestrator.broker import build_broker
from orchestrator.engine import Engine
from orchestrator.ledger import Ledger
from orchestrator.loader import Catalog, load
from orchestrator.settings import Settings
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from simulator import Limit, Received, Simulator, all_vendors
from simulator.braze import MESSAGING
from simulator.intercom import ADMIN_ID, derived_contact_id

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "referloop-bench-budgets"
WORKERS = 2
THREADS = 8
SECONDS = 60
WARMUP_S = 5.0
MARGIN = 1.1
ACCOUNTS = 500
TARGET_RATIO = 0.95
TARGET_429_SHARE = 0.01
READY_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0
POLL_S = 0.5
PAUSE_S = 0.1
SIGNING_KEY = "bench-signing-key-" + "k" * 32
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""
# Beside the vendors' own, settings of this shell that would change what a worker
# does: the outbox and the source file stand in for every vendor and cohort.
OTHER_SETTINGS = ("REFERLOOP_OUTBOX", "REFERLOOP_SOURCE_FILE", "DRAMATIQ_BROKER_URL")

WORKSPACE = """\
name: budget bench
invite_url: https://app.example.com/invite
time_zone: Europe/London
activation:
  property: user.activated_at
vendors:
VENDORS
fields:
  user:
    first_name: Priya
    activated_at: "2024-05-02T09:14:00Z"
  account:
    name: Halden & Marsh Advisory
  events:
    bench_braze_ask: {pack_name: Project Falcon}
    bench_intercom_ask: {pack_name: Project Falcon}
    bench_customerio_ask: {pack_name: Project Falcon}
"""

PLAYBOOK = """\
id: budget-VENDOR
description: Ask for a reviewer through VENDOR, as fast as its budget allows.
owner: growth
trigger:
  event: bench_VENDOR_ask
holdout: 0%
nudge:
  channel: VENDOR
  VENDOR: REFERENCE
  invite:
    share: review_request
  trust: Reviewers see "{{ trigger.properties.pack_name }}" only, read-only.
  message:
    subject: Who should review {{ trigger.properties.pack_name }}?
    body: "Hi {{ user.first_name }}, invite a reviewer: {{ invite.link }}"
"""


@dataclass(frozen=True)
class Case:
    """One vendor: its documented limit, the window the simulator enforces it
    over, and what the playbook writes under `nudge.<vendor>`."""

    vendor: str
    documented: str
    limit: Limit
    budget_count: int
    budget_window: str
    reference: str
    calls_per_delivery: int = 1
    settings: tuple[str, ...] = ()

    @property
    def per_s(self) -> float:
        return self.limit.count / self.limit.window_s

    @property
    def event(self) -> str:
        return f"bench_{self.vendor}_ask"

    @property
    def enforced(self) -> str:
        return f"{self.limit.count:,} per {self.limit.window_s:g} s"

    def budget(self, share: float) -> str:
        return f"{math.floor(self.budget_count * share)} per {self.budget_window}"

    def deliveries(self, seconds: float) -> int:
        calls = self.per_s * (WARMUP_S + seconds) * MARGIN
        return math.ceil(calls / self.calls_per_delivery)


CASES = (
    Case(
        "braze",
        "250,000 per hour",
        Limit(MESSAGING, count=694, window_s=10),
        250_000,
        "1h",
        "{campaign: bench-campaign}",
        # The workspace wants https; BRAZE_REST_URL sends workers to the simulator.
        settings=("rest_url: https://rest.iad-01.braze.com",),
    ),
    Case(
        "intercom",
        "10,000 per minute",
        Limit("app", count=1_666, window_s=10),
        10_000,
        "1m",
        f"{{from_admin: {ADMIN_ID}}}",
        # A first nudge to a user looks the contact up, then sends the message.
        calls_per_delivery=2,
    ),
    Case(
        "customerio",
        "a budget of 200 per second",
        Limit(TRACK_BUDGET, count=600, window_s=3),
        200,
        "1s",
        "{event: invite_nudge}",
    ),
)


@dataclass(frozen=True)
class Window:
    """What the simulator answered on the limited endpoints in the window."""

    seconds: float
    taken: int
    requests: int
    limited: int
    paused_s: float
    ran_dry: bool

    @property
    def per_s(self) -> float:
        return self.taken / self.seconds

    @property
    def share_429(self) -> float:
        return self.limited / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Tally:
    """A run reconciled: the ledger's outcomes against the sends the vendor took."""

    deliveries: int
    outcomes: dict[str, int]
    lost: int
    duplicates: int
    dead: int

    @property
    def sent(self) -> int:
        return self.outcomes.get("sent", 0)

    @property
    def is_clean(self) -> bool:
        exact = self.outcomes == {"sent": self.deliveries}
        return exact and (self.lost, self.duplicates, self.dead) == (0, 0, 0)


@dataclass(frozen=True)
class Usage:
    """CPU seconds spent while the workers sent, by who spent them."""

    wall_s: float
    workers_s: float
    simulator_s: float
    redis_s: float


@dataclass(frozen=True)
class Result:
    """One vendor's run."""

    case: Case
    window: Window
    tally: Tally
    usage: Usage
    worker_errors: int

    @property
    def ratio(self) -> float:
        return self.window.per_s / self.case.per_s

    @property
    def passed(self) -> bool:
        return (
            self.tally.is_clean
            and not self.window.ran_dry
            and self.ratio >= TARGET_RATIO
            and self.window.share_429 <= TARGET_429_SHARE
        )


class BenchError(Exception):
    """The benchmark could not measure what it set out to; one line says why."""


# --- the playbooks and the deliveries -------------------------------------------


def _workspace(share: float) -> str:
    lines = []
    for case in CASES:
        lines.append(f"  {case.vendor}:")
        lines += [f"    {line}" for line in case.settings]
        lines.append(f"    budget: {case.budget(share)}")
    return WORKSPACE.replace("VENDORS\n", "\n".join(lines) + "\n")


def _catalog(folder: Path, share: float) -> Catalog:
    folder.mkdir()
    (folder / "referloop.yaml").write_text(_workspace(share), encoding="utf-8")
    for case in CASES:
        text = PLAYBOOK.replace("VENDOR", case.vendor)
        text = text.replace("REFERENCE", case.reference)
        (folder / f"budget-{case.vendor}.yaml").write_text(text, encoding="utf-8")
    catalog = load([folder])
    if catalog.has_errors:
        raise BenchError(f"the bench playbooks do not load: {catalog.problems}")
    return catalog


def _users(case: Case, count: int) -> list[str]:
    return [f"u-{case.vendor}-{number:06d}" for number in range(count)]


def _decided(store: Store, catalog: Catalog, case: Case, users: list[str]) -> list[str]:
    """Save a product event of each user as an occurrence and decide them all
    here; the keys of the deliveries due now."""
    scheduled: list[str] = []
    engine = Engine(
        store,
        catalog,
        InviteSigner.throwaway(),
        {},
        lambda keys, delay_ms: scheduled.extend(keys),
    )
    ids = [_saved(engine, case, user, number) for number, user in enumerate(users)]
    for at in range(0, len(ids), actors.BATCH):
        engine.decide_many(ids[at : at + actors.BATCH])
    if len(scheduled) != len(users):
        held = engine.ledger.counts()
        raise BenchError(f"{len(scheduled):,} of {len(users):,} due; ledger {held}")
    return scheduled


def _saved(engine: Engine, case: Case, user: str, number: int) -> str:
    event = ProductEvent(
        event_id=f"evt-{user}",
        name=case.event,
        user_id=user,
        time=datetime.now(UTC),
        account_id=f"acct-{number % ACCOUNTS:03d}",
        properties={"pack_name": "Project Falcon"},
        user={"first_name": "Priya", "activated_at": "2024-05-02T09:14:00Z"},
        account={"name": "Halden & Marsh Advisory"},
    )
    occurrence = occurrences.from_event(event)
    engine.occurrences.save(occurrence)
    return occurrence.occurrence_id


# --- the workers ------------------------------------------------------------------


@dataclass
class Worker:
    """A worker subprocess and the file its log goes to."""

    process: subprocess.Popen[bytes]
    log: Path

    def is_ready(self) -> bool:
        return "Worker started" in self.log.read_text(encoding="utf-8", errors="ignore")

    def cpu_s(self) -> float:
        """User and system CPU so far, from /proc (0 where there is none)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().split()
        except OSError:
            return 0.0
        ticks = int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")

    def tail(self) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="ignore").splitlines()
        return " | ".join(lines[-3:])


def _worker_env(
    sim: Simulator, case: Case, namespace: str, folder: Path
) -> dict[str, str]:
    foreign = {*OTHER_SETTINGS, *setting_names(tuple(vendors.SETTINGS))}
    inherited = {k: v for k, v in os.environ.items() if k not in foreign}
    return {
        **inherited,
        **vendor_env(sim, (case.vendor,)),
        "REDIS_URL": URL,
        "REFERLOOP_NAMESPACE": namespace,
        "REFERLOOP_PLAYBOOKS": str(folder),
        "REFERLOOP_SIGNING_KEYS": SIGNING_KEY,
        "REFERLOOP_WORKER_THREADS": str(THREADS),
    }


def _start_workers(env: dict[str, str], logs: Path, label: str) -> list[Worker]:
    workers = []
    for number in range(WORKERS):
        log = logs / f"{label}-worker-{number}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "worker"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        workers.append(Worker(process, log))
    _wait_until(
        lambda: all(w.is_ready() for w in workers),
        READY_TIMEOUT_S,
        "the workers did not start",
        workers,
    )
    return workers


def _stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def _wait_until(
    done: Callable[[], bool], timeout_s: float, failure: str, workers: list[Worker]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        gone = [w for w in workers if w.process.poll() is not None]
        if gone:
            raise BenchError(f"a worker exited ({gone[0].tail()})")
        if time.monotonic() > deadline:
            raise BenchError(f"{failure} within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def _errors_logged(workers: list[Worker]) -> int:
    return sum(
        line.startswith(("ERROR", "CRITICAL"))
        for worker in workers
        for line in worker.log.read_text(encoding="utf-8", errors="ignore").splitlines()
    )


# --- one vendor -----------------------------------------------------------------


def _run(
    client: redis.Redis,
    sim: Simulator,
    catalog: Catalog,
    folder: Path,
    case: Case,
    seconds: float,
) -> Result:
    namespace = f"{NAMESPACE}-{case.vendor}-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=URL, namespace=namespace)
    store = Store.from_settings(settings)
    sim.reset()
    sim.set_limits(case.vendor, [case.limit])
    users = _users(case, case.deliveries(seconds))
    keys = _decided(store, catalog, case, users)

    env = _worker_env(sim, case, namespace, folder)
    workers = _start_workers(env, folder.parent, case.vendor)
    try:
        usage = _deliver(client, store, settings, workers, keys)
    finally:
        _stop_workers(workers)
    window, tally = _result(sim, store, case, users, seconds)
    return Result(case, window, tally, usage, _errors_logged(workers))


def _deliver(
    client: redis.Redis,
    store: Store,
    settings: Settings,
    workers: list[Worker],
    keys: list[str],
) -> Usage:
    """Hand the deliveries to the workers and wait until every one has settled."""
    ledger = Ledger(store)
    broker = build_broker(settings)
    before = _cpu(client, workers)
    try:
        actors.declare(broker).schedule(keys, 0)
    finally:
        broker.close()
    _wait_until(
        lambda: sum(ledger.counts().values()) >= len(keys),
        _settle_timeout(len(keys)),
        "the deliveries did not settle",
        workers,
    )
    after = _cpu(client, workers)
    return Usage(*(later - sooner for later, sooner in zip(after, before, strict=True)))


def _settle_timeout(count: int) -> float:
    slowest = min(case.per_s / case.calls_per_delivery for case in CASES)
    return count / slowest + SETTLE_TIMEOUT_S


def _cpu(client: redis.Redis, workers: list[Worker]) -> tuple[float, ...]:
    info = cast(dict[str, Any], client.info("cpu"))
    redis_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    workers_s = sum(worker.cpu_s() for worker in workers)
    return time.perf_counter(), workers_s, time.process_time(), redis_s


def _result(
    sim: Simulator, store: Store, case: Case, users: list[str], seconds: float
) -> tuple[Window, Tally]:
    vendor = sim.vendor(case.vendor)
    limited_path = [
        item
        for item in sim.received(case.vendor)
        if vendor.bucket(item.request) == case.limit.bucket
    ]
    taken = [item for item in limited_path if _is_2xx(item)]
    if not taken:
        raise BenchError(f"{case.vendor} took no request")
    return _window(limited_path, taken, seconds), _tally(store, case, users, taken)


def _window(
    limited_path: list[Received], taken: list[Received], seconds: float
) -> Window:
    """The figures of the measured window, from WARMUP_S after the first 2xx."""
    start = min(item.request.at for item in taken) + WARMUP_S
    end = start + seconds
    window = [item for item in limited_path if start <= item.request.at < end]
    times = sorted(item.request.at for item in window if _is_2xx(item))
    gaps = [later - sooner for sooner, later in pairwise(times)]
    return Window(
        seconds=seconds,
        taken=len(times),
        requests=len(window),
        limited=sum(item.status == 429 for item in window),
        paused_s=sum(gap for gap in gaps if gap > PAUSE_S),
        ran_dry=max(item.request.at for item in taken) < end,
    )


def _tally(store: Store, case: Case, users: list[str], taken: list[Received]) -> Tally:
    """Every delivery sent once: in the ledger, and as the vendor took it."""
    contacts = {derived_contact_id(user): user for user in users}
    sent_to = Counter(
        user for item in taken for user in _recipients(case, item, contacts)
    )
    ledger = Ledger(store)
    return Tally(
        deliveries=len(users),
        outcomes=ledger.counts(),
        lost=len(set(users) - set(sent_to)),
        duplicates=sum(count - 1 for count in sent_to.values()),
        dead=len(ledger.dead_letters()),
    )


def _is_2xx(item: Received) -> bool:
    return item.status is not None and 200 <= item.status < 300


def _recipients(case: Case, item: Received, contacts: dict[str, str]) -> list[str]:
    """The users a request the vendor took sends to (none for other calls)."""
    body = item.request.json
    path = item.request.path
    if case.vendor == "braze" and path in MESSAGING_PATHS:
        return [recipient["external_user_id"] for recipient in body["recipients"]]
    if case.vendor == "intercom" and path == "/messages":
        return [contacts.get(body["to"]["id"], body["to"]["id"])]
    if case.vendor == "customerio" and path.endswith("/events"):
        return [unquote(path.split("/")[-2])]
    return []


# --- the report -------------------------------------------------------------------


def _report(results: list[Result], seconds: float, share: float) -> None:
    print(
        f"{WORKERS} workers x {THREADS} threads; measured over {seconds:g} s from "
        f"{WARMUP_S:g} s after the first 2xx; limits as the simulator enforced "
        "them, and the workspace budgets:"
    )
    for result in results:
        case = result.case
        print(
            f"  {case.vendor}: {case.enforced} ({case.documented}); "
            f"budget {case.budget(share)}"
        )
    print()
    print(
        f"{'vendor':<11}{'limit/s':>8}{'achieved/s':>11}{'ratio':>7}{'429s':>6}"
        f"{'429 share':>10}{'paused s':>9}{'sent':>8}{'lost':>5}{'dups':>5}"
        f"{'dead':>5}  verdict"
    )
    for result in results:
        _report_row(result)
    print()
    print(
        f"targets: ratio >= {TARGET_RATIO:.2f}, 429 share <= {TARGET_429_SHARE:.0%}, "
        "nothing lost, nothing sent twice, nothing dead-lettered"
    )
    print(
        f"paused s: the gaps longer than {PAUSE_S * 1000:.0f} ms between two 2xx "
        "answers in the window, added up"
    )
    print()
    _report_usage(results)


def _report_row(result: Result) -> None:
    window, tally = result.window, result.tally
    figures = (
        f"{result.case.per_s:>8.1f}{window.per_s:>11.1f}{result.ratio:>7.3f}"
        f"{window.limited:>6}{window.share_429:>10.2%}{window.paused_s:>9.1f}"
        f"{tally.sent:>8,}{tally.lost:>5}{tally.duplicates:>5}{tally.dead:>5}"
    )
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{result.case.vendor:<11}{figures}  {verdict}")
    for note in _notes(result):
        print(f"{'':<11}{note}")


def _notes(result: Result) -> list[str]:
    tally = result.tally
    notes = []
    if tally.outcomes != {"sent": tally.deliveries}:
        notes.append(f"ledger outcomes {tally.outcomes}, not {tally.deliveries:,} sent")
    if result.window.ran_dry:
        notes.append("the deliveries ran out before the window closed")
    if result.worker_errors:
        notes.append(f"the workers logged {result.worker_errors} ERROR lines")
    return notes


def _report_usage(results: list[Result]) -> None:
    print(
        "CPU while the workers sent, as a share of one core "
        f"({os.cpu_count()} on this machine):"
    )
    print(f"{'vendor':<11}{'wall s':>8}{'workers':>9}{'simulator':>11}{'Redis':>7}")
    for result in results:
        usage = result.usage
        print(
            f"{result.case.vendor:<11}{usage.wall_s:>8.1f}"
            f"{usage.workers_s / usage.wall_s:>9.0%}"
            f"{usage.simulator_s / usage.wall_s:>11.0%}"
            f"{usage.redis_s / usage.wall_s:>7.0%}"
        )


# --- main -------------------------------------------------------------------------


def _report_progress(result: Result) -> None:
    print(
        f"{result.case.vendor}: {result.tally.deliveries:,} deliveries settled "
        f"in {result.usage.wall_s:.0f} s",
        flush=True,
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=SECONDS,
        help=f"the measured window per vendor, default {SECONDS}",
    )
    parser.add_argument(
        "--budget-share",
        type=float,
        default=1.0,
        help="each budget as this share of the documented limit, default 1",
    )
    return parser.parse_args()


def _measure(client: redis.Redis, seconds: float, share: float) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-budgets-") as folder:
        playbooks = Path(folder) / "playbooks"
        catalog = _catalog(playbooks, share)
        with Simulator(all_vendors()) as sim:
            for case in CASES:
                result = _run(client, sim, catalog, playbooks, case, seconds)
                _report_progress(result)
                results.append(result)
    return results


def main() -> None:
    arguments = _arguments()
    seconds, share = arguments.seconds, arguments.budget_share
    print(METHOD)
    print()
    client = connect()
    client.flushdb()
    try:
        results = _measure(client, seconds, share)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        client.flushdb()
    print()
    _report(results, seconds, share)


if __name__ == "__main__":
    main()

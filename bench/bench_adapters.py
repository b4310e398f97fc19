"""Sends per second through the vendor adapters, beside raw httpx posts of the same.

Method: the simulator runs in this process, on loopback, with no rate limit,
and delays its answers so that a raw call takes LATENCY_S in all (a vendor
across the internet): the latency set is LATENCY_S less the simulator's own
round trip, measured first with CALIBRATION_CALLS raw calls one after another
(both are printed). For each vendor, THREADS threads make CALLS calls in all,
timed from the first call to the last answer, two ways:

- adapter: `send(nudge)` on the adapter a worker builds (`integrations.vendors`,
  from a workspace and the environment variables that point at the simulator),
  with a Store on the Redis at 127.0.0.1:6379, database 14 (flushed before and
  after), so every call first takes a slot of the vendor's shared budget (one
  GCRA script round trip): a Braze campaign trigger, a Customer.io Track event,
  and an Intercom in-app message through the SDK's client to a contact known (as
  from the second nudge to a user on);
- raw: the same method, URL, JSON body and credentials, posted through one
  shared httpx.Client with the adapter's connection limits, its status checked
  and nothing else.

Customer.io's default budget (3,000 per 3 s) is above the rates measured here;
Braze's (250,000 an hour, 69 a second) and Intercom's (10,000 a minute, 167 a
second) are not, and pacing would then be all that was measured. Their budgets
get Customer.io's default cap instead: the same code and round trip per call,
without the pace. Every run is checked: the simulator answered CALLS more 2xx.

Each side runs REPEATS times, interleaved (raw, adapter, raw, ...), after a
warm-up of WARMUP calls of each; before each run, its pool is filled with
THREADS connections. The fastest run of each side is kept, as noise on a shared
machine only slows a run down. CPU is this process's (the callers
and the simulator, from `time.process_time`) per call; the simulator's share is
the same on both sides. Logging stays at Python's default (WARNING), so the
adapters' INFO lines cost only their check.

Target: the adapter at least TARGET_RATIO of the raw rate.

Run: `uv run python bench/bench_adapters.py`
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from benchredis import URL, connect
from vendorbench import nudge, vendor_env

from integrations import vendors
from integrations.base import Reference, Sender
from integrations.braze import BrazeReference
from integrations.customerio import CustomerIOReference
from integrations.intercom import API_VERSION, IntercomReference, IntercomSender
from orchestrator.model import Workspace
from orchestrator.settings import Settings
from orchestrator.state import Store
from simulator import Simulator, all_vendors
from simulator.intercom import ADMIN_ID, derived_contact_id

NAMESPACE = "referloop-bench-adapters"
VENDORS = ("braze", "customerio", "intercom")
THREADS = 16
LATENCY_S = 0.05
CALLS = THREADS * 40
WARMUP = THREADS * 5
REPEATS = 5
CALIBRATION_CALLS = 20
MAX_CONNECTIONS = 64  # as VendorHttp's
# Under LATENCY_S / THREADS, so that every connection is opened while the
# others are still busy, and the pool holds THREADS of them.
PRIME_GAP_S = 0.002
TARGET_RATIO = 0.9
# The cap Customer.io's Track budget has by default, for every budget here.
BUDGET = "3000 per 3s"
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""

REFERENCES: dict[str, Reference] = {
    "braze": BrazeReference(campaign="bench-campaign"),
    "customerio": CustomerIOReference(event="invite_nudge"),
    "intercom": IntercomReference(from_admin=int(ADMIN_ID)),
}


@dataclass(frozen=True)
class Pair:
    """One vendor's two ways of making the same call."""

    vendor: str
    adapter: Callable[[], object]
    raw: Callable[[], object]


@dataclass(frozen=True)
class Sample:
    """One timed run of one side."""

    vendor: str
    side: str
    calls: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / self.calls * 1000


@dataclass(frozen=True)
class Run:
    """One vendor's samples, and the simulator's own round trip (s) for it."""

    vendor: str
    own_s: float
    samples: list[Sample]

    def best(self, side: str) -> Sample:
        found = [sample for sample in self.samples if sample.side == side]
        return max(found, key=lambda sample: sample.per_s)

    def rates(self, side: str) -> list[float]:
        return [sample.per_s for sample in self.samples if sample.side == side]


class BenchError(Exception):
    """The benchmark could not measure what it set out to; one line says why."""


# --- the two sides ----------------------------------------------------------------


def _workspace() -> Workspace:
    budgets = {"braze": {"budget": BUDGET}, "intercom": {"budget": BUDGET}}
    return Workspace.model_validate({"vendors": budgets})


def _raw_client(vendor: str, env: dict[str, str]) -> httpx.Client:
    """A plain client with the credentials the adapter sends."""
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
    )
    if vendor == "customerio":
        site, key = env["CUSTOMERIO_SITE_ID"], env["CUSTOMERIO_TRACK_API_KEY"]
        return httpx.Client(auth=(site, key), limits=limits)
    if vendor == "intercom":
        headers = {
            "Authorization": f"Bearer {env['INTERCOM_ACCESS_TOKEN']}",
            "Intercom-Version": API_VERSION,
        }
        return httpx.Client(headers=headers, limits=limits)
    headers = {"Authorization": f"Bearer {env['BRAZE_API_KEY']}"}
    return httpx.Client(headers=headers, limits=limits)


def _pair(vendor: str, sender: Sender, client: httpx.Client) -> Pair:
    sample = nudge(REFERENCES[vendor])
    request = sender.build_request(sample)  # type: ignore[attr-defined]
    body = request.json
    if isinstance(sender, IntercomSender):
        # The adapter sends to the contact it found; the raw side knows it too.
        contact = derived_contact_id(sample.recipient.user_id)
        sender.remember_contact(sample.recipient.user_id, contact)
        body = {**body, "to": {"type": "user", "id": contact}}

    def raw() -> object:
        response = client.request(request.method, request.url, json=body)
        if not response.is_success:
            raise BenchError(f"raw {vendor} answered {response.status_code}")
        return response

    return Pair(vendor, lambda: sender.send(sample), raw)


# --- timing -------------------------------------------------------------------------


def _timed(sim: Simulator, pair: Pair, side: str, calls: int) -> Sample:
    call = pair.adapter if side == "adapter" else pair.raw
    _prime(pair, side, call)
    failures: list[BaseException] = []
    gate = threading.Barrier(THREADS + 1)

    def loop() -> None:
        gate.wait()
        try:
            for _ in range(calls // THREADS):
                call()
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    answered = _answered_2xx(sim, pair.vendor)
    cpu = time.process_time()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    sample = Sample(
        pair.vendor,
        side,
        calls,
        time.perf_counter() - started,
        time.process_time() - cpu,
    )
    _check(sim, pair, side, calls, answered, failures)
    return sample


def _prime(pair: Pair, side: str, call: Callable[[], object]) -> None:
    """Fill the side's pool with THREADS open connections, opened PRIME_GAP_S
    apart: the simulator listens with a backlog of 5, so a run that opened them
    all at once would see resets that no vendor would send."""
    failures: list[BaseException] = []

    def once() -> None:
        try:
            call()
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=once) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
        time.sleep(PRIME_GAP_S)
    for thread in threads:
        thread.join()
    if failures:
        raise BenchError(f"{pair.vendor} {side}, opening connections: {failures[0]!r}")


def _answered_2xx(sim: Simulator, vendor: str) -> int:
    return sum(sim.count(vendor, status) for status in range(200, 300))


def _check(
    sim: Simulator,
    pair: Pair,
    side: str,
    calls: int,
    before: int,
    failures: list[BaseException],
) -> None:
    if failures:
        raise BenchError(f"{pair.vendor} {side}: {failures[0]!r}")
    answered = _answered_2xx(sim, pair.vendor) - before
    if answered != calls:
        raise BenchError(f"{pair.vendor} {side}: {answered} 2xx for {calls} calls")


def _calibrate(sim: Simulator, pair: Pair) -> float:
    """Set the vendor's latency so that a raw call takes LATENCY_S in all, and
    return the simulator's own round trip (s), measured with no latency set."""
    # On loopback the simulator's own round trip is not negligible: it writes an
    # answer's headers and body apart, without TCP_NODELAY, so the body can wait
    # for the client's delayed ACK.
    sim.latency(pair.vendor, 0.0)
    pair.raw()
    started = time.perf_counter()
    for _ in range(CALIBRATION_CALLS):
        pair.raw()
    own_s = (time.perf_counter() - started) / CALIBRATION_CALLS
    sim.latency(pair.vendor, max(0.0, LATENCY_S - own_s))
    return own_s


def _measure_pair(sim: Simulator, pair: Pair) -> list[Sample]:
    _timed(sim, pair, "raw", WARMUP)
    _timed(sim, pair, "adapter", WARMUP)
    samples = []
    for _ in range(REPEATS):
        samples.append(_timed(sim, pair, "raw", CALLS))
        samples.append(_timed(sim, pair, "adapter", CALLS))
    return samples


def _measure(sim: Simulator, store: Store) -> list[Run]:
    env = vendor_env(sim, VENDORS)
    built = vendors.build(_workspace(), env, store)
    if built.problems:
        raise BenchError(f"adapters not built: {built.problems}")
    clients = {vendor: _raw_client(vendor, env) for vendor in VENDORS}
    try:
        runs = []
        for vendor in VENDORS:
            pair = _pair(vendor, built.senders[vendor], clients[vendor])
            own_s = _calibrate(sim, pair)
            runs.append(Run(vendor, own_s, _measure_pair(sim, pair)))
        return runs
    finally:
        built.close()
        for client in clients.values():
            client.close()


def _run() -> list[Run]:
    store = Store.from_settings(Settings(redis_url=URL, namespace=NAMESPACE))
    with Simulator(all_vendors()) as sim:
        for vendor in VENDORS:
            sim.set_limits(vendor, [])
        return _measure(sim, store)


def main() -> None:
    print(METHOD)
    print()
    client = connect()
    client.flushdb()
    try:
        runs = _run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        client.flushdb()
    _report(runs)


# --- the report -----------------------------------------------------------------


def _report(runs: list[Run]) -> None:
    print(
        f"{THREADS} threads, {LATENCY_S * 1000:.0f} ms per raw call, {CALLS:,} calls "
        f"per run, {REPEATS} runs per side interleaved after a warm-up of "
        f"{WARMUP:,}; the fastest run of each side kept"
    )
    print()
    _report_runs(runs)
    print()
    print(
        f"{'vendor':<12}{'raw/s':>8}{'adapter/s':>11}{'ratio':>7}{'raw ms':>8}"
        f"{'adapter ms':>12}{'CPU ms raw':>12}{'adapter':>9}  verdict"
    )
    for run in runs:
        _report_vendor(run)
    print()
    print(
        "ms: wall time per call in each thread (THREADS / rate); CPU ms: this "
        "process's CPU per call, the simulator's included"
    )
    print(f"target: adapter/raw >= {TARGET_RATIO:.2f}")


def _report_runs(runs: list[Run]) -> None:
    print("calls per second, run by run; the simulator's own round trip per vendor:")
    for run in runs:
        for side in ("raw", "adapter"):
            rates = run.rates(side)
            shown = " ".join(f"{rate:>6.0f}" for rate in rates)
            median = statistics.median(rates)
            print(f"  {run.vendor:<11}{side:<8}{shown}   median {median:.0f}")
        latency_ms = max(0.0, LATENCY_S - run.own_s) * 1000
        print(
            f"  {run.vendor:<11}own round trip {run.own_s * 1000:.1f} ms, "
            f"latency set {latency_ms:.1f} ms"
        )


def _report_vendor(run: Run) -> None:
    raw, adapter = run.best("raw"), run.best("adapter")
    ratio = adapter.per_s / raw.per_s
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    figures = (
        f"{raw.per_s:>8.0f}{adapter.per_s:>11.0f}{ratio:>7.3f}"
        f"{THREADS / raw.per_s * 1000:>8.1f}{THREADS / adapter.per_s * 1000:>12.1f}"
        f"{raw.cpu_ms:>12.2f}{adapter.cpu_ms:>9.2f}"
    )
    print(f"{run.vendor:<12}{figures}  {verdict}")


if __name__ == "__main__":
    main()

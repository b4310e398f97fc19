"""Signed product events per second through one web process, beside a bare
endpoint on the same server; and the time to acknowledge a 1,000-member
cohort-sync page.

Method: `bench/webapp.py` runs in a process of its own, as `python -m
orchestrator web` runs on a web dyno (uvicorn, one process, one event loop,
INFO logs to a file, no access log), serving `orchestrator.web.create_app()`
with one route added for the baseline. REDIS_URL is the Redis at
127.0.0.1:6379, database 14 (flushed before and after), so with the Redis
broker; REFERLOOP_EVENT_SECRETS and the cohort-sync credentials mount both
endpoints. A workspace and two playbooks (one on the `permissions_set` event,
one on the Mixpanel cohort) are loaded from a temporary folder. No worker runs:
what the endpoints enqueue waits in Redis until the flush. The server's log
must hold no WARNING or ERROR line at the end.

The client, in this process, is a small asyncio HTTP/1.1 client over keep-alive
connections that writes prepared requests and reads each answer's status and
body; it costs far less CPU than the server, which matters on a 2-core machine
that also runs Redis. Its connections are opened before the clock starts.

- events: CONNECTIONS connections post REQUESTS requests in all, one request in
  flight on each, one signed event per request (`Referloop-Signature`, as
  `integrations.webhook.sign` signs), each with a new id. Every answer must be
  200 `{"accepted": 1, "rejected": []}`, and the triggers queue must hold one
  more decide message per request.
- baseline: the same connections and client post as many requests to
  `POST /bench/bare` on the same server, each with the same headers and body
  as an event request (signed, with a new id), so of the same size. That
  endpoint, the benchmark's and not the product's, reads the body and answers
  `{"accepted": 1, "rejected": []}`, as events does, without Redis, signature
  or parsing. Every answer must be that 200.
- cohort sync: PAGES pages a round, one after another on one connection (as
  Mixpanel sends a sync's pages), each a `members` page 1 of 1 of its own
  session with MEMBERS members of distinct ids and a few fields (email, first
  name, account, activation time), about 165 KB; each is written to its
  snapshot, and its end enqueues `finish_push`. Every answer must be 200
  `{"action": "members", "status": "success"}`, and the sources queue must hold
  one more message per page.

Latency is the client's, from writing a request to reading its whole answer.
Each round runs baseline, events and cohort sync in turn; ROUNDS rounds follow
a warm-up of WARMUP requests of each side and WARMUP_PAGES pages. For events and
the baseline the fastest run of each is kept (noise on a shared machine only
slows a run down), with its latencies and CPU; the cohort-sync pages of all
rounds are pooled for their p50 and p95. CPU per request is the server
process's (/proc, every thread), Redis's (INFO) and this client's
(`time.process_time`); Redis commands per request are INFO's count.

Targets: events at least half the baseline's rate (ratio >= TARGET_RATIO); a
cohort-sync page acknowledged within TARGET_SYNC_P95_MS at the 95th percentile.

Run: `uv run python bench/bench_web.py`
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import httpx
import redis
from benchredis import URL, connect, redis_spent
from webapp import BARE_PATH

from integrations.webhook import sign
from orchestrator.actors import SOURCES_QUEUE, TRIGGERS_QUEUE
from orchestrator.web import COHORT_SYNC_PATH, EVENTS_PATH, SIGNATURE_HEADER

NAMESPACE = "referloop-bench-web"
HOST = "127.0.0.1"
WEBAPP = Path(__file__).with_name("webapp.py")
CONNECTIONS = 16
REQUESTS = 4_000
WARMUP = 500
ROUNDS = 3
PAGES = 70
WARMUP_PAGES = 5
MEMBERS = 1_000
TARGET_RATIO = 0.5
TARGET_SYNC_P95_MS = 200.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SECRET = "bench-events-secret-0123456789abcdefghij"
SYNC_USER, SYNC_PASSWORD = "mixpanel", "bench-sync-password-5c1e"
COHORT_ID = "48213"
METHOD = __doc__.split("\n\nRun:")[0] if __doc__ else ""

WORKSPACE = """\
name: web bench
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

EVENT_PLAYBOOK = """\
id: room-reviewers
description: Ask who set permissions to invite the buyer's team.
owner: growth
trigger:
  event: permissions_set
holdout: 0%
nudge:
  channel: outbox
  invite: {share: secure_link}
  trust: They see this room only.
  message:
    body: "Hi {{ user.first_name }}, invite the buyer: {{ invite.link }}"
"""

COHORT_PLAYBOOK = f"""\
id: pack-reviewers
description: Ask pack owners to invite a reviewer.
owner: growth
trigger:
  cohort: mixpanel:{COHORT_ID}
holdout: 0%
nudge:
  channel: outbox
  invite: {{share: review_request}}
  trust: Reviewers see one pack.
  message:
    body: "Hi {{{{ user.first_name }}}}, invite a reviewer: {{{{ invite.link }}}}"
"""

Check = Callable[[int, bytes], bool]


class BenchError(Exception):
    """The benchmark could not measure what it set out to; one line says why."""


@dataclass(frozen=True)
class Server:
    """The web process under test."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def cpu_s(self) -> float:
        """User + system CPU of the process so far, every thread included."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        # After the command name in parentheses, utime and stime are the 12th
        # and 13th fields (14 and 15 of proc(5)).
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Meter:
    """Clocks read at one moment; a difference is a sample's cost."""

    wall_s: float
    client_s: float
    server_s: float
    redis_s: float
    redis_commands: int

    @classmethod
    def read(cls, server: Server, client: redis.Redis) -> Meter:
        redis_s, redis_commands = redis_spent(client)
        return cls(
            wall_s=time.perf_counter(),
            client_s=time.process_time(),
            server_s=server.cpu_s(),
            redis_s=redis_s,
            redis_commands=redis_commands,
        )

    def since(self, earlier: Meter) -> Meter:
        return Meter(
            self.wall_s - earlier.wall_s,
            self.client_s - earlier.client_s,
            self.server_s - earlier.server_s,
            self.redis_s - earlier.redis_s,
            self.redis_commands - earlier.redis_commands,
        )


@dataclass(frozen=True)
class Sample:
    """One timed run of one side: its cost and each request's latency (s)."""

    side: str
    spent: Meter
    latencies_s: list[float]

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def per_s(self) -> float:
        return self.count / self.spent.wall_s

    def percentile_ms(self, percent: int) -> float:
        cuts = statistics.quantiles(self.latencies_s, n=100, method="inclusive")
        return cuts[percent - 1] * 1000

    def ms_each(self, seconds: float) -> float:
        return seconds / self.count * 1000


# --- the server -------------------------------------------------------------------


def _write_playbooks(folder: Path) -> None:
    (folder / "referloop.yaml").write_text(WORKSPACE)
    (folder / "room-reviewers.yaml").write_text(EVENT_PLAYBOOK)
    (folder / "pack-reviewers.yaml").write_text(COHORT_PLAYBOOK)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _server_env(folder: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DRAMATIQ_BROKER_URL", "LOG_FORMAT")
    }
    env.update(
        REDIS_URL=URL,
        REFERLOOP_NAMESPACE=NAMESPACE,
        REFERLOOP_PLAYBOOKS=str(folder),
        REFERLOOP_EVENT_SECRETS=SECRET,
        REFERLOOP_COHORT_SYNC_USER=SYNC_USER,
        REFERLOOP_COHORT_SYNC_PASSWORD=SYNC_PASSWORD,
    )
    return env


def _start(folder: Path, log: IO[bytes]) -> Server:
    port = _free_port()
    command = [sys.executable, str(WEBAPP), "--host", HOST, "--port", str(port)]
    process = subprocess.Popen(
        command, env=_server_env(folder), stdout=log, stderr=subprocess.STDOUT
    )
    server = Server(process, port, Path(log.name))
    try:
        _wait_until_healthy(server)
    except BenchError:
        _stop(server)
        raise
    return server


def _wait_until_healthy(server: Server) -> None:
    url = f"http://{HOST}:{server.port}/health"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"the web process exited: {_log_tail(server)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"the web process did not answer in {START_TIMEOUT_S:.0f} s")


def _stop(server: Server) -> None:
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def _log_tail(server: Server) -> str:
    lines = server.log.read_text(errors="replace").splitlines()
    return " | ".join(lines[-5:]) or "no output"


def _check_log(server: Server) -> None:
    """The server refused nothing and failed nowhere, by its own account."""
    lines = server.log.read_text(errors="replace").splitlines()
    bad = [line for line in lines if line.startswith(("WARNING", "ERROR"))]
    if bad:
        raise BenchError(f"the web process logged {len(bad)} problems: {bad[0]}")


# --- the requests -----------------------------------------------------------------


def _request(head: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [head, f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _event(event_id: str, user: str) -> dict[str, Any]:
    return {
        "event": "permissions_set",
        "id": event_id,
        "time": "2026-12-01T09:30:00Z",
        "user": {"id": user, "first_name": "Ada", "activated_at": "2026-01-01"},
        "account": {"id": f"acct-{user}"},
        "properties": {"room_name": "Buyer room"},
    }


def _event_requests(label: str, count: int, path: str = EVENTS_PATH) -> list[bytes]:
    """Signed now: well inside the replay window for the run that follows."""
    requests = []
    for number in range(count):
        body = json.dumps(_event(f"evt-{label}-{number}", f"user-{number}")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(SECRET, body, time.time()),
        }
        requests.append(_request(f"POST {path} HTTP/1.1", headers, body))
    return requests


def _page(session: str) -> dict[str, Any]:
    members = [
        {
            "mixpanel_distinct_id": f"{session}-user-{number}",
            "email": f"user-{number}@{session}.example.com",
            "first_name": "Ada",
            "account_id": f"{session}-acct-{number // 20}",
            "activated_at": "2026-01-01",
        }
        for number in range(MEMBERS)
    ]
    parameters = {
        "mixpanel_project_id": "3141592",
        "mixpanel_cohort_id": COHORT_ID,
        "mixpanel_cohort_name": "Pack owners",
        "mixpanel_session_id": session,
        "page_info": {"total_pages": 1, "page_count": 1},
        "members": members,
    }
    return {"action": "members", "parameters": parameters}


def _sync_requests(label: str, count: int) -> list[bytes]:
    credentials = base64.b64encode(f"{SYNC_USER}:{SYNC_PASSWORD}".encode())
    authorization = f"Basic {credentials.decode()}"
    headers = {"Content-Type": "application/json", "Authorization": authorization}
    head = f"POST {COHORT_SYNC_PATH} HTTP/1.1"
    return [
        _request(head, headers, json.dumps(_page(f"{label}-{n}")).encode())
        for n in range(count)
    ]


def _is_accepted(status: int, body: bytes) -> bool:
    return status == 200 and json.loads(body) == {"accepted": 1, "rejected": []}


def _is_synced(status: int, body: bytes) -> bool:
    expected = {"action": "members", "status": "success"}
    return status == 200 and json.loads(body) == expected


# --- the client -------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Write one request and read its answer: status and body."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _drive(
    port: int, shares: list[list[bytes]], check: Check, on_start: Callable[[], Any]
) -> list[float]:
    """Each share on a connection of its own, all at once; the latencies."""
    streams = [await asyncio.open_connection(HOST, port) for _ in shares]
    latencies: list[float] = []
    failures: list[str] = []

    async def loop(stream: tuple[Any, Any], share: list[bytes]) -> None:
        for request in share:
            started = time.perf_counter()
            status, body = await _exchange(*stream, request)
            latencies.append(time.perf_counter() - started)
            if not check(status, body) and not failures:
                failures.append(f"{status} {body[:200]!r}")

    on_start()
    await asyncio.gather(*(loop(s, p) for s, p in zip(streams, shares, strict=True)))
    for _, writer in streams:
        writer.close()
    if failures:
        raise BenchError(f"unexpected answer: {failures[0]}")
    return latencies


def _timed(
    server: Server,
    client: redis.Redis,
    side: str,
    requests: list[bytes],
    check: Check,
    connections: int,
) -> Sample:
    shares = [requests[n::connections] for n in range(connections)]
    before: list[Meter] = []

    def on_start() -> None:
        before.append(Meter.read(server, client))

    latencies = asyncio.run(_drive(server.port, shares, check, on_start))
    spent = Meter.read(server, client).since(before[0])
    return Sample(side, spent, latencies)


# --- the runs ---------------------------------------------------------------------


def _queued(client: redis.Redis, queue: str) -> int:
    return cast(int, client.hlen(f"{NAMESPACE}-queue:{queue}.msgs"))


def _baseline(server: Server, client: redis.Redis, label: str, count: int) -> Sample:
    requests = _event_requests(f"bare-{label}", count, BARE_PATH)
    return _timed(server, client, "bare", requests, _is_accepted, CONNECTIONS)


def _decided(client: redis.Redis) -> int:
    """How many occurrence ids the queued decide messages carry in all."""
    bodies = cast(
        dict[bytes, bytes], client.hgetall(f"{NAMESPACE}-queue:{TRIGGERS_QUEUE}.msgs")
    )
    return sum(len(json.loads(body)["args"][0]) for body in bodies.values())


def _events(server: Server, client: redis.Redis, label: str, count: int) -> Sample:
    requests = _event_requests(label, count)
    decided = _decided(client)
    sample = _timed(server, client, "events", requests, _is_accepted, CONNECTIONS)
    added = _decided(client) - decided
    if added != count:
        raise BenchError(f"{added:,} events handed to decide for {count:,} sent")
    return sample


def _sync(server: Server, client: redis.Redis, label: str, count: int) -> Sample:
    requests = _sync_requests(label, count)
    queued = _queued(client, SOURCES_QUEUE)
    sample = _timed(server, client, "sync", requests, _is_synced, 1)
    added = _queued(client, SOURCES_QUEUE) - queued
    if added != count:
        raise BenchError(f"{added:,} finish_push messages for {count:,} pages")
    return sample


def _measure(server: Server, client: redis.Redis) -> list[Sample]:
    _baseline(server, client, "warmup", WARMUP)
    _events(server, client, "warmup", WARMUP)
    _sync(server, client, "warmup", WARMUP_PAGES)
    samples = []
    for number in range(1, ROUNDS + 1):
        samples.append(_baseline(server, client, f"run{number}", REQUESTS))
        samples.append(_events(server, client, f"run{number}", REQUESTS))
        samples.append(_sync(server, client, f"run{number}", PAGES))
    return samples


def _run(client: redis.Redis) -> list[Sample]:
    with tempfile.TemporaryDirectory(prefix="bench-web-") as name:
        folder = Path(name)
        _write_playbooks(folder)
        with (folder / "web.log").open("wb") as log:
            server = _start(folder, log)
            try:
                samples = _measure(server, client)
            finally:
                _stop(server)
            _check_log(server)
            return samples


def main() -> None:
    print(METHOD)
    print()
    client = connect()
    client.flushdb()
    try:
        samples = _run(client)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        client.flushdb()
    _report(samples)


# --- the report -------------------------------------------------------------------


def _best(samples: list[Sample], side: str) -> Sample:
    return max((s for s in samples if s.side == side), key=lambda s: s.per_s)


def _pooled(samples: list[Sample], side: str) -> Sample:
    """One sample of every run of `side`: its latencies, costs summed."""
    runs = [s for s in samples if s.side == side]
    spent = Meter(
        sum(s.spent.wall_s for s in runs),
        sum(s.spent.client_s for s in runs),
        sum(s.spent.server_s for s in runs),
        sum(s.spent.redis_s for s in runs),
        sum(s.spent.redis_commands for s in runs),
    )
    return Sample(side, spent, [t for s in runs for t in s.latencies_s])


def _report(samples: list[Sample]) -> None:
    print(
        f"{CONNECTIONS} connections, {REQUESTS:,} requests per run, {ROUNDS} rounds "
        f"interleaved (bare, events, cohort sync) after a warm-up of {WARMUP:,} "
        f"requests of each and {WARMUP_PAGES} pages; cohort sync: {PAGES} pages "
        f"of {MEMBERS:,} members a round, one at a time; every answer and queue "
        "checked"
    )
    print()
    _report_table(samples)
    print()
    base, events = _best(samples, "bare"), _best(samples, "events")
    _report_verdict(base, events, _pooled(samples, "sync"))


def _report_table(samples: list[Sample]) -> None:
    print(
        "per request: latency ms (client's), CPU ms of the server process, "
        "of Redis and of the client, Redis commands (INFO's own included)"
    )
    header = ("per s", "p50 ms", "p95 ms", "server", "Redis", "client", "cmds")
    print(f"{'run':<22}" + "".join(f"{h:>9}" for h in header))
    runs: Counter[str] = Counter()
    for sample in samples:
        runs[sample.side] += 1
        _report_row(f"{sample.side} {runs[sample.side]}", sample)
    _report_row("best: bare", _best(samples, "bare"))
    _report_row("best: events", _best(samples, "events"))
    _report_row("pooled: cohort sync", _pooled(samples, "sync"))


def _report_row(label: str, sample: Sample) -> None:
    spent = sample.spent
    figures = (
        f"{sample.per_s:>9,.0f}",
        f"{sample.percentile_ms(50):>9.1f}",
        f"{sample.percentile_ms(95):>9.1f}",
        f"{sample.ms_each(spent.server_s):>9.3f}",
        f"{sample.ms_each(spent.redis_s):>9.3f}",
        f"{sample.ms_each(spent.client_s):>9.3f}",
        f"{spent.redis_commands / sample.count:>9.1f}",
    )
    print(f"{label:<22}" + "".join(figures))


def _report_verdict(base: Sample, events: Sample, sync: Sample) -> None:
    ratio = events.per_s / base.per_s
    sync_p95 = sync.percentile_ms(95)
    rate_verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    sync_verdict = "PASS" if sync_p95 < TARGET_SYNC_P95_MS else "FAIL"
    print(f"baseline: {_figures(base)} (POST {BARE_PATH}, best run)")
    print(f"events: {_figures(events, 'events')} (POST {EVENTS_PATH}, best run)")
    print(f"cohort sync: {_figures(sync, 'pages')} ({sync.count} pages pooled)")
    print(f"ratio (events/s / baseline requests/s): {ratio:.2f}")
    print(
        f"target: events at least half the baseline's rate "
        f"(ratio >= {TARGET_RATIO:.2f}): {rate_verdict}"
    )
    print(
        f"target: a {MEMBERS:,}-member cohort-sync page acknowledged within "
        f"{TARGET_SYNC_P95_MS:.0f} ms at p95 ({sync_p95:.1f} ms): {sync_verdict}"
    )


def _figures(sample: Sample, unit: str = "requests") -> str:
    return (
        f"{sample.per_s:,.0f} {unit}/s, p50 {sample.percentile_ms(50):.1f} ms, "
        f"p95 {sample.percentile_ms(95):.1f} ms, "
        f"server CPU {sample.ms_each(sample.spent.server_s):.2f} ms each"
    )


if __name__ == "__main__":
    main()

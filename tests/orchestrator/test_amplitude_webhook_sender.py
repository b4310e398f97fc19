"""The simulated Amplitude Cohort Webhook sender, against a tiny local server.

The server answers each batch as the test scripts it (a status, after a delay),
and keeps what it received; the tests check that the sender batches, retries,
replays and shuffles as Amplitude's destination does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from simulator.amplitude_webhook import USER_AGENT, CohortWebhookSender, Sync

HEADER = "Referloop-Amplitude-Secret"
SECRET = "sender-test-secret-2b7e1a"
COHORT_ID = "7khm89cz"
FAST_BACKOFF_S = 0.01

# (message_id, how many times it was received before) -> (delay_s, status)
Script = Callable[[str, int], tuple[float, int]]


def always_ok(message_id: str, seen: int) -> tuple[float, int]:
    return 0.0, 200


@dataclass
class Server:
    url: str
    script: Script
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def times(self) -> Counter[str]:
        return Counter(body["message_id"] for body in self.received)


@contextmanager
def server(script: Script = always_ok) -> Iterator[Server]:
    """A loopback HTTP server answering POSTs by `script`."""
    state = Server("", script)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                seen = state.times()[body["message_id"]]
                state.received.append(body)
                state.headers.append(dict(self.headers))
            delay_s, status = state.script(body["message_id"], seen)
            time.sleep(delay_s)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up waiting, as Amplitude does

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/webhook"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def sender(url: str, **options: Any) -> CohortWebhookSender:
    settings = {"backoff_s": FAST_BACKOFF_S, **options}
    return CohortWebhookSender(url, HEADER, SECRET, COHORT_ID, **settings)


def users(first: int, last: int) -> list[str]:
    return [f"user-{n}" for n in range(first, last)]


def test_a_sync_is_posted_in_batches_as_amplitude_sends_them() -> None:
    """Entries and exits in batches of the size asked, one `message_id` each,
    one `computed_time` for the sync, the secret in the customer's header."""
    with server() as got, sender(got.url, batch_size=4) as amplitude:
        amplitude.send(Sync(entered=users(0, 10), left=users(20, 23), computed_s=1000))

    entering = [b for b in got.received if b["in_cohort"]]
    leaving = [b for b in got.received if not b["in_cohort"]]
    assert sorted(len(b["users"]) for b in entering) == [2, 4, 4]
    assert [len(b["users"]) for b in leaving] == [3]
    assert len(got.times()) == 4
    assert {b["computed_time"] for b in got.received} == {"1000"}
    assert {b["cohort_id"] for b in got.received} == {COHORT_ID}
    first = got.received[0]["users"][0]
    assert set(first) == {"user_id"}
    assert {h[HEADER] for h in got.headers} == {SECRET}
    assert {h["User-Agent"] for h in got.headers} == {USER_AGENT}


def test_each_sync_is_computed_later_than_the_one_before() -> None:
    """Without a time given, each sync's `computed_time` still moves forward."""
    with server() as got, sender(got.url) as amplitude:
        amplitude.send(Sync(entered=["user-0"]))
        amplitude.send(Sync(left=["user-0"]))

    first, second = (int(b["computed_time"]) for b in got.received)
    assert second > first


def test_a_slow_answer_is_retried_with_the_same_message_id() -> None:
    """No answer within the timeout: the batch is sent again, unchanged."""

    def slow_first(message_id: str, seen: int) -> tuple[float, int]:
        return (0.8 if seen == 0 else 0.0), 200

    with server(slow_first) as got, sender(got.url, timeout_s=0.3) as amplitude:
        attempts = amplitude.send(Sync(entered=users(0, 3)))

    assert [(a.number, a.status) for a in attempts] == [(1, None), (2, 200)]
    assert attempts[0].message_id == attempts[1].message_id
    assert attempts[0].elapsed_s >= 0.3
    assert got.received[0] == got.received[1]


def test_a_5xx_is_retried_until_it_is_taken() -> None:
    def two_503s(message_id: str, seen: int) -> tuple[float, int]:
        return 0.0, (503 if seen < 2 else 200)

    with server(two_503s) as got, sender(got.url) as amplitude:
        attempts = amplitude.send(Sync(entered=users(0, 3)))

    assert [a.status for a in attempts] == [503, 503, 200]
    assert len({a.message_id for a in attempts}) == 1
    assert amplitude.delivered() == {attempts[0].message_id}


def test_retries_stop_at_the_bound() -> None:
    def always_500(message_id: str, seen: int) -> tuple[float, int]:
        return 0.0, 500

    with server(always_500) as got, sender(got.url, max_attempts=3) as amplitude:
        attempts = amplitude.send(Sync(entered=users(0, 3)))

    assert [a.number for a in attempts] == [1, 2, 3]
    assert len(got.received) == 3
    assert amplitude.delivered() == set()


@pytest.mark.parametrize("status", [400, 401, 413])
def test_a_4xx_is_not_retried(status: int) -> None:
    """A refusal says the batch is wrong; sending it again would not help."""

    def refuse(message_id: str, seen: int) -> tuple[float, int]:
        return 0.0, status

    with server(refuse) as got, sender(got.url) as amplitude:
        attempts = amplitude.send(Sync(entered=users(0, 3)))

    assert [(a.number, a.status) for a in attempts] == [(1, status)]
    assert len(got.received) == 1


def test_duplicates_send_some_batches_twice_with_their_message_id() -> None:
    with server() as got, sender(got.url, batch_size=2, duplicates=2) as amplitude:
        attempts = amplitude.send(Sync(entered=users(0, 10)))

    times = got.times()
    assert len(times) == 5
    assert sorted(times.values()) == [1, 1, 1, 2, 2]
    replayed = {a.message_id for a in attempts if a.is_replay}
    assert replayed == {m for m, n in times.items() if n == 2}
    for message_id in replayed:
        bodies = [b for b in got.received if b["message_id"] == message_id]
        assert bodies[0] == bodies[1]


def test_shuffling_changes_the_order_and_nothing_else() -> None:
    """One thread, so the order received is the order sent."""
    batches = Sync(entered=users(0, 8), left=users(10, 14), computed_s=1000)
    with server() as plain, sender(plain.url, batch_size=2, threads=1) as amplitude:
        amplitude.send(batches)
    options = {"batch_size": 2, "threads": 1, "shuffle": True, "seed": 3}
    with server() as mixed, sender(mixed.url, **options) as amplitude:
        amplitude.send(batches)

    def shape(body: dict[str, Any]) -> tuple[bool, list[str]]:
        return body["in_cohort"], [u["user_id"] for u in body["users"]]

    in_order = [shape(b) for b in plain.received]
    shuffled = [shape(b) for b in mixed.received]
    assert shuffled != in_order
    assert sorted(shuffled) == sorted(in_order)


def test_users_keep_their_chosen_properties() -> None:
    entered = [{"user_id": "user-0", "account_id": "acct-1", "plan": "team"}]
    with server() as got, sender(got.url) as amplitude:
        amplitude.send(Sync(entered=entered))

    assert got.received[0]["users"] == entered


def test_no_secret_or_user_property_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The logs say message ids and statuses, never who was in a batch."""
    caplog.set_level("DEBUG")

    def slow_first(message_id: str, seen: int) -> tuple[float, int]:
        return (0.5 if seen == 0 else 0.0), 200

    entered = [{"user_id": "user-0", "email": "ada@example.com"}]
    with server(slow_first) as got, sender(got.url, timeout_s=0.2) as amplitude:
        attempts = amplitude.send(Sync(entered=entered))

    said = caplog.text
    assert attempts[0].message_id in said
    assert SECRET not in said
    assert "ada@example.com" not in said
    assert "user-0" not in said

"""The simulator's server: routing by vendor, recording, faults and rate limits.

Each vendor is a `VendorSim` mounted on its own path prefix (`/braze/...`), so one
server on one port stands in for all of them; an adapter's base URL setting points
at `Simulator.url(vendor)`. Requests go through, in order:

1. recording (every request, whatever it is answered);
2. latency, if the test set some;
3. a fault, if one is switched on for that vendor (a status, a hang, a reset
   connection, a garbage answer, a slow answer, an answer lost after the
   request was applied, an answer cut off partway);
4. authentication, as the vendor checks it;
5. rate limits, as the vendor enforces them (429 in the vendor's own shape);
6. the vendor's handler.

The server is a plain threading HTTP/1.1 server, so that faults act on the raw
socket: a reset is a real TCP reset, a garbage answer is bytes that are not HTTP.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024

FaultKind = Literal[
    "status", "hang", "reset", "garbage", "broken_json", "slow", "lost_answer", "cut"
]


@dataclass(frozen=True)
class SimRequest:
    """A request as a vendor handler sees it; `path` is below the vendor prefix."""

    vendor: str
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def form(self) -> dict[str, str]:
        """The body as an HTML form (`application/x-www-form-urlencoded`)."""
        parsed = parse_qs(self.body.decode("utf-8", "replace"))
        return {key: values[0] for key, values in parsed.items()}


@dataclass(frozen=True)
class SimResponse:
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def encoded(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        return json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True)
class Received:
    """One request the simulator received, and the status it answered (None when
    it answered no status: a hang, a reset or garbage)."""

    request: SimRequest
    status: int | None

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def json(self) -> Any:
        return self.request.json


@dataclass(frozen=True)
class Fault:
    """Something going wrong at a vendor, switched on by a test."""

    kind: FaultKind
    status: int = 503
    seconds: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    after_bytes: int = 0

    @classmethod
    def answer(
        cls, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Fault:
        """Answer every request with `status` (and `body`, `headers`)."""
        return cls("status", status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def rate_limited(cls, retry_after_s: float) -> Fault:
        """Answer 429 with `Retry-After`, whatever the budget says."""
        headers = {"Retry-After": f"{retry_after_s:g}"}
        return cls("status", status=429, headers=headers, body={"message": "slow"})

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Read the request, then say nothing for `seconds` and close."""
        return cls("hang", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Read the request, then reset the connection (TCP RST)."""
        return cls("reset")

    @classmethod
    def garbage(cls) -> Fault:
        """Answer bytes that are not HTTP."""
        return cls("garbage")

    @classmethod
    def broken_json(cls, status: int = 200) -> Fault:
        """Answer `status` with a body that claims to be JSON and is not."""
        return cls("broken_json", status=status)

    @classmethod
    def lost_answer(cls, seconds: float) -> Fault:
        """Apply the request as usual, then say nothing for `seconds` and close:
        the client cannot tell that it was applied."""
        return cls("lost_answer", seconds=seconds)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer as usual, after `seconds`."""
        return cls("slow", seconds=seconds)

    @classmethod
    def cut(cls, after_bytes: int) -> Fault:
        """Answer as usual, but close the connection after `after_bytes` bytes of
        the body: the client sees the answer begin and stop short."""
        return cls("cut", after_bytes=after_bytes)


@dataclass(frozen=True)
class Limit:
    """A vendor's rate limit: at most `count` requests in any sliding `window_s`
    per bucket, and at most `at_once` in flight (0: no bound)."""

    bucket: str
    count: int
    window_s: float
    at_once: int = 0


class VendorSim:
    """A vendor's behaviour; subclasses give the name, routes, auth and limits.

    `routes` maps (method, path pattern) to handlers; a pattern may hold `{name}`
    parts, passed to the handler as keyword arguments.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._routes = [
            (method, _compile(pattern), handler)
            for (method, pattern), handler in self.routes().items()
        ]
        self.lock = threading.Lock()

    def routes(self) -> dict[tuple[str, str], Callable[..., SimResponse]]:
        return {}

    def authorized(self, request: SimRequest) -> bool:
        return True

    def limits(self) -> list[Limit]:
        """The vendor's documented limits; tests may replace them."""
        return []

    def bucket(self, request: SimRequest) -> str | None:
        """Which limit a request counts against (None: no limit)."""
        return None

    def unauthorized(self, request: SimRequest) -> SimResponse:
        return SimResponse(401, {"message": "unauthorized"})

    def rate_limited(
        self, request: SimRequest, limit: Limit, retry_after_s: float
    ) -> SimResponse:
        headers = {"Retry-After": str(max(1, round(retry_after_s)))}
        return SimResponse(429, {"message": "rate limited"}, headers)

    def not_found(self, request: SimRequest) -> SimResponse:
        return SimResponse(
            404, {"message": f"no route for {request.method} {request.path}"}
        )

    def error(self, request: SimRequest, status: int) -> SimResponse:
        """The body the vendor sends with a fault's status."""
        return SimResponse(status, {"message": f"simulated {status}"})

    def handle(self, request: SimRequest) -> SimResponse:
        for method, pattern, handler in self._routes:
            if method != request.method:
                continue
            matched = pattern.fullmatch(request.path)
            if matched is not None:
                response: SimResponse = handler(request, **matched.groupdict())
                return response
        return self.not_found(request)


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", pattern)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


class _Window:
    """A sliding log of request times, and the requests in flight, for one bucket."""

    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque()
        self.in_flight = 0


class Simulator:
    """The vendors on one local port. Use as a context manager, or start/stop."""

    def __init__(
        self, vendors: Iterable[VendorSim], *, host: str = "127.0.0.1"
    ) -> None:
        self.vendors = {vendor.name: vendor for vendor in vendors}
        self._host = host
        self._lock = threading.Lock()
        self._received: list[Received] = []
        # Per vendor, in order: the fault, how many requests it hits (None: all),
        # and how many requests go through untouched before it starts.
        self._faults: dict[str, list[tuple[Fault, int | None, int]]] = {}
        self._latency: dict[str, float] = {}
        self._limits: dict[str, list[Limit]] = {
            name: vendor.limits() for name, vendor in self.vendors.items()
        }
        self._windows: dict[tuple[str, str], _Window] = collections.defaultdict(_Window)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.answered: collections.Counter[tuple[str, int]] = collections.Counter()

    # --- life -----------------------------------------------------------------

    def start(self) -> Simulator:
        handler = type("Handler", (_Handler,), {"simulator": self})
        server = _Server((self._host, 0), handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the simulator is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, vendor: str) -> str:
        """The base URL that stands in for `vendor`."""
        if vendor not in self.vendors:
            raise KeyError(f"the simulator has no vendor `{vendor}`")
        return f"{self.base_url}/{vendor}"

    def vendor(self, name: str) -> VendorSim:
        return self.vendors[name]

    # --- what tests switch ----------------------------------------------------

    def fault(
        self, vendor: str, fault: Fault, times: int | None = None, *, after: int = 0
    ) -> None:
        """Switch on `fault` for the next `times` requests (None: until cleared),
        once `after` more requests have been answered as usual."""
        with self._lock:
            self._faults.setdefault(vendor, []).append((fault, times, after))

    def clear_faults(self, vendor: str | None = None) -> None:
        with self._lock:
            if vendor is None:
                self._faults.clear()
            else:
                self._faults.pop(vendor, None)

    def latency(self, vendor: str, seconds: float) -> None:
        """Answer every request of `vendor` after `seconds` (a far-away vendor)."""
        with self._lock:
            self._latency[vendor] = seconds

    def set_limits(self, vendor: str, limits: list[Limit]) -> None:
        """Replace the vendor's rate limits (e.g. a budget a test chose)."""
        with self._lock:
            self._limits[vendor] = limits
            for key in [k for k in self._windows if k[0] == vendor]:
                del self._windows[key]

    def reset(self) -> None:
        """Forget what was received and answered; switch every fault off."""
        with self._lock:
            self._received.clear()
            self._faults.clear()
            self._latency.clear()
            self._windows.clear()
            self.answered.clear()

    # --- what tests read ------------------------------------------------------

    def received(
        self, vendor: str | None = None, path: str | None = None
    ) -> list[Received]:
        """The requests received so far, oldest first, filtered if asked."""
        with self._lock:
            found = list(self._received)
        return [
            item
            for item in found
            if (vendor is None or item.request.vendor == vendor)
            and (path is None or item.request.path == path)
        ]

    def count(self, vendor: str, status: int) -> int:
        with self._lock:
            return self.answered[(vendor, status)]

    # --- the pipeline ---------------------------------------------------------

    def _next_fault(self, vendor: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(vendor)
            if not queue:
                return None
            fault, times, after = queue[0]
            if after > 0:
                queue[0] = (fault, times, after - 1)
                return None
            if times is not None:
                if times <= 1:
                    queue.pop(0)
                else:
                    queue[0] = (fault, times - 1, 0)
            return fault

    def _admit(self, vendor: VendorSim, request: SimRequest) -> SimResponse | None:
        """Count the request against its bucket's limits; a 429 if over one."""
        bucket = vendor.bucket(request)
        if bucket is None:
            return None
        with self._lock:
            limits = self._limits_of(vendor.name, bucket)
            now = time.monotonic()
            for limit in limits:
                window = self._windows[(vendor.name, f"{bucket}#{id(limit)}")]
                while window.times and window.times[0] <= now - limit.window_s:
                    window.times.popleft()
                if len(window.times) >= limit.count:
                    retry = window.times[0] + limit.window_s - now
                    return vendor.rate_limited(request, limit, retry)
                if limit.at_once and window.in_flight >= limit.at_once:
                    return vendor.rate_limited(request, limit, 1.0)
            for limit in limits:
                window = self._windows[(vendor.name, f"{bucket}#{id(limit)}")]
                window.times.append(now)
                window.in_flight += 1
        return None

    def _release(self, vendor: VendorSim, request: SimRequest) -> None:
        bucket = vendor.bucket(request)
        if bucket is None:
            return
        with self._lock:
            for limit in self._limits_of(vendor.name, bucket):
                window = self._windows.get((vendor.name, f"{bucket}#{id(limit)}"))
                if window is not None and window.in_flight > 0:
                    window.in_flight -= 1

    def _limits_of(self, vendor: str, bucket: str) -> list[Limit]:
        return [item for item in self._limits.get(vendor, []) if item.bucket == bucket]

    def _record(self, request: SimRequest, status: int | None) -> None:
        with self._lock:
            self._received.append(Received(request, status))
            if status is not None:
                self.answered[(request.vendor, status)] += 1


class _Server(ThreadingHTTPServer):
    # Set before the socket listens: many clients connect at once in a benchmark,
    # and the default backlog of 5 resets the sixth.
    request_queue_size = 256
    daemon_threads = True
    block_on_close = False


class _Handler(BaseHTTPRequestHandler):
    simulator: ClassVar[Simulator]
    protocol_version = "HTTP/1.1"
    # Headers and body go in separate writes; with Nagle's algorithm the body
    # would wait for the client's delayed ACK, about 40 ms on loopback.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        simulator = self.simulator
        split = urlsplit(self.path)
        name, _, rest = split.path.lstrip("/").partition("/")
        vendor = simulator.vendors.get(name)
        request = SimRequest(
            vendor=name,
            method=self.command,
            path="/" + rest,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=self._read_body(),
            at=time.time(),
        )
        if vendor is None:
            simulator._record(request, 404)
            self._answer(SimResponse(404, {"message": f"no vendor `{name}`"}))
            return

        delay = simulator._latency.get(name, 0.0)
        if delay:
            time.sleep(delay)
        fault = simulator._next_fault(name)
        if fault is not None and fault.kind == "lost_answer":
            self._respond(vendor, request)
            simulator._record(request, None)
            time.sleep(fault.seconds)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "cut":
            response = self._respond(vendor, request)
            simulator._record(request, response.status)
            self._answer(response, cut_after=fault.after_bytes)
            return
        if fault is not None and fault.kind != "slow":
            self._misbehave(vendor, request, fault)
            return
        if fault is not None:
            time.sleep(fault.seconds)

        response = self._respond(vendor, request)
        simulator._record(request, response.status)
        self._answer(response)

    def _respond(self, vendor: VendorSim, request: SimRequest) -> SimResponse:
        if not vendor.authorized(request):
            return vendor.unauthorized(request)
        refused = self.simulator._admit(vendor, request)
        if refused is not None:
            return refused
        try:
            return vendor.handle(request)
        except Exception:
            logger.exception(
                "The simulated %s failed on %s.", vendor.name, request.path
            )
            return SimResponse(500, {"message": "the simulator failed"})
        finally:
            self.simulator._release(vendor, request)

    def _misbehave(self, vendor: VendorSim, request: SimRequest, fault: Fault) -> None:
        simulator = self.simulator
        if fault.kind == "status":
            answer = vendor.error(request, fault.status)
            body = fault.body if fault.body is not None else answer.body
            headers = {**answer.headers, **fault.headers}
            simulator._record(request, fault.status)
            self._answer(SimResponse(fault.status, body, headers))
        elif fault.kind == "broken_json":
            simulator._record(request, fault.status)
            self._answer(SimResponse(fault.status, raw=b'{"id": "unfinished'))
        elif fault.kind == "hang":
            simulator._record(request, None)
            time.sleep(fault.seconds)
            self.close_connection = True
        elif fault.kind == "reset":
            simulator._record(request, None)
            self._reset()
        elif fault.kind == "garbage":
            simulator._record(request, None)
            self.wfile.write(b"\x00\x17 this is not HTTP \xff\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST, not FIN.
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.close_connection = True
        self.connection.close()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip" and body:
            try:
                body = gzip.decompress(body)
            except OSError:
                body = b""
        return body

    def _answer(self, response: SimResponse, cut_after: int | None = None) -> None:
        payload = response.encoded()
        sent = payload if cut_after is None else payload[:cut_after]
        try:
            self.send_response(response.status)
            headers = {"Content-Type": "application/json", **response.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(sent)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if len(sent) < len(payload):
            # The Content-Length promised more: closing now cuts the answer short.
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

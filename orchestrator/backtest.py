"""Backtests: a product's past events replayed through playbooks on a simulated clock.

`replay` reads Mixpanel raw exports (the Export API's JSON lines), puts their
events in time order and hands the ones the playbooks name to the engine, with
the engine's clock set to each event's time. A delivery the engine defers
(trigger delay, quiet hours, send window) waits in a heap and goes out when the
simulated clock reaches it, so caps, re-entry and quiet hours act as they would
have on the days replayed. Every channel only records and the store lives in
this process: nothing is sent and nothing is kept. Decisions and deliveries run
one after the other, not on a broker's threads: a clock moved under running
actors would judge some deliveries at the wrong time.

An export carries event properties only. What the engine needs besides:

- a property of a user's event named like a declared user field (`fields.user`),
  `time_zone`, or a field an activation gate or condition reads is taken as the
  user's from that event on; the same for account fields, by the event's account;
- the workspace's `metrics.events.user_activated` event sets each activation
  property (to the event's time) from then on;
- a declared field that no condition or gate reads, and that the user's events
  never carried, takes its example value from `fields:`, so that templates
  render; a field that a condition or gate reads never takes an example value.

Cohorts cannot be replayed from events: a playbook triggered or gated by one is
listed as not replayed, and exclusion cohorts exclude nobody. Vendor budgets are
not run (they pace by Redis's clock): each vendor's volume is set against its
budget from the replay's own sends.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from integrations import braze, customerio, intercom, webhook
from integrations.base import ProductEvent, RenderedNudge, Sent
from integrations.registry import channel_names
from orchestrator import guardrails, render
from orchestrator.attribution import INVITE_EVENTS, REWARD_GRANTED
from orchestrator.budgets import with_headroom
from orchestrator.engine import Engine, Retry
from orchestrator.errors import UsageError
from orchestrator.ledger import Entry, Outcome
from orchestrator.loader import Catalog, LoadedPlaybook
from orchestrator.metrics import export_files
from orchestrator.model import Activation, Playbook, Workspace
from orchestrator.problems import Problem, did_you_mean
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner
from orchestrator.units import Cap

# A `time` above this counts milliseconds, as `referloop report` reads it.
TIME_IN_MS_FROM = 1e11
# How Amplitude's export writes `event_time` (UTC).
AMPLITUDE_TIMES = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")
LATEST_TIME_S = 253_402_300_799  # 9999-12-31 23:59:59 UTC
BAD_LINES_KEPT = 20
PROGRESS_EVERY = 200
READ_CHUNK = 1_000
# A delivery the engine asks to retry this often in one replay is given up.
MAX_RETRIES = 5
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
TIME_ZONE_FIELD = "time_zone"
# Follow-ups on these events need invites sent through referloop's own links.
UNREPLAYABLE_STEPS = INVITE_EVENTS | {REWARD_GRANTED}

Progress = Callable[[str, int, int], None]


# --- the result -----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One delivery as the replay decided it: ids, simulated times, outcome.

    `send_at` is when it went out, for a sent one; `deferred_by` is the guardrail
    that made it wait (`quiet_hours`, `send_window`, `delay`), if one did.
    """

    playbook: str
    step: str
    user_id: str
    account_id: str
    decided_at: datetime
    send_at: datetime | None
    outcome: str
    reason: str
    deferred_by: str
    channel: str

    @property
    def is_sent(self) -> bool:
        return self.outcome == Outcome.SENT


@dataclass(frozen=True)
class NotReplayed:
    """A playbook left out of the replay, and why."""

    playbook: str
    path: Path
    reason: str


@dataclass(frozen=True)
class BadLine:
    """A line of an export that could not be read: where, and why, never what."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class PlaybookSummary:
    """What one playbook would have done over the replay."""

    playbook: str
    decisions: int
    users_nudged: int
    nudges: int
    held: int
    deferred: int
    dead: int
    busiest_day: date | None
    busiest_day_users: int


@dataclass(frozen=True)
class VendorLoad:
    """The sends one vendor budget would have taken, by day and by hour (UTC).

    `budget` is the budget as workers pace it (a little under the vendor's own
    limit, see `budgets.with_headroom`); None for a channel without one.
    """

    channel: str
    budget_name: str
    budget: Cap | None
    by_day: Mapping[date, int]
    peak_hour: datetime | None
    peak_hour_sends: int
    peak_window_sends: int

    @property
    def sends(self) -> int:
        return sum(self.by_day.values())

    @property
    def peak_day(self) -> date | None:
        if not self.by_day:
            return None
        return max(sorted(self.by_day), key=lambda day: self.by_day[day])

    @property
    def peak_day_sends(self) -> int:
        peak = self.peak_day
        return self.by_day[peak] if peak is not None else 0

    def allows(self, span: timedelta) -> int | None:
        """The most sends the budget lets through in any `span`; None: no budget."""
        if self.budget is None:
            return None
        return self.budget.count * math.ceil(span / self.budget.window)

    @property
    def over_days(self) -> list[date]:
        """The days whose sends the budget could not take within the day."""
        allowed = self.allows(DAY)
        if allowed is None:
            return []
        return [day for day, sends in sorted(self.by_day.items()) if sends > allowed]

    @property
    def is_over_in_window(self) -> bool:
        """True when more sends fall in one budget window than it allows: they wait."""
        return self.budget is not None and self.peak_window_sends > self.budget.count


@dataclass(frozen=True)
class Overlap:
    """Users nudged by both of two playbooks."""

    first: str
    second: str
    users: int


@dataclass
class Backtest:
    """Everything a replay found; times are simulated, in UTC."""

    exports: list[str] = field(default_factory=list)
    lines: int = 0
    bad: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    duplicates: int = 0
    replayed_events: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    replay_end: datetime | None = None
    playbooks: list[str] = field(default_factory=list)
    not_replayed: list[NotReplayed] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    summaries: list[PlaybookSummary] = field(default_factory=list)
    nudged_by_day: dict[str, dict[date, int]] = field(default_factory=dict)
    held: dict[str, dict[str, int]] = field(default_factory=dict)
    deferred: dict[str, dict[str, int]] = field(default_factory=dict)
    not_activated: dict[str, list[str]] = field(default_factory=dict)
    gates: dict[str, str] = field(default_factory=dict)
    activation_event: str | None = None
    vendors: list[VendorLoad] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def has_errors(self) -> bool:
        return any(problem.is_error for problem in self.problems)

    def days(self) -> list[date]:
        """Every day on which some playbook nudged someone, in order."""
        return sorted({day for by_day in self.nudged_by_day.values() for day in by_day})


# --- choosing what to replay ----------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The playbooks a backtest replays, those it cannot, and the errors found."""

    playbooks: list[LoadedPlaybook]
    not_replayed: list[NotReplayed]
    problems: list[Problem]


def choose(catalog: Catalog, names: Sequence[str] = ()) -> Choice:
    """The playbooks named by id or file (all by default) that can be replayed.

    Raises:
        UsageError: a name is neither a playbook's id nor one of its files.
    """
    wanted = {_path_of(catalog, name) for name in names} if names else None
    playbooks, left_out = [], []
    for loaded in catalog.playbooks:
        if wanted is not None and loaded.path not in wanted:
            continue
        reason = _unreplayable(loaded.playbook, catalog.workspace)
        if reason is None:
            playbooks.append(loaded)
        else:
            left_out.append(NotReplayed(loaded.playbook.id, loaded.path, reason))

    broken = [p for p in catalog.skipped if wanted is None or p in wanted]
    problems = _problems_of(catalog, broken, playbooks)
    for path in broken:
        left_out.append(NotReplayed(path.stem, path, _broken_reason(path, problems)))
    return Choice(playbooks, left_out, problems)


def _path_of(catalog: Catalog, name: str) -> Path:
    loaded = catalog.get(name)
    if loaded is not None:
        return loaded.path
    given = Path(name)
    for path in [p.path for p in catalog.playbooks] + catalog.skipped:
        if path.stem == name or (given.is_file() and given.samefile(path)):
            return path
    ids = [p.playbook.id for p in catalog.playbooks]
    raise UsageError(
        f"no playbook `{name}` among the playbooks" + did_you_mean(name, ids)
    )


def _unreplayable(playbook: Playbook, workspace: Workspace) -> str | None:
    """Why an event export cannot replay this playbook, or None when it can."""
    gate = playbook.activation or workspace.activation
    if not playbook.enabled:
        return "it is disabled (`enabled: false`)"
    if playbook.trigger.cohort is not None:
        return (
            f"its trigger is the cohort {playbook.trigger.cohort}: "
            "an event export does not say who entered it"
        )
    if gate is not None and gate.cohort is not None:
        return (
            f"its activation gate is the cohort {gate.cohort}: "
            "an event export does not say who is in it"
        )
    return None


def _problems_of(
    catalog: Catalog, broken: list[Path], playbooks: list[LoadedPlaybook]
) -> list[Problem]:
    paths = {*broken, *(p.path for p in playbooks)}
    if catalog.workspace_path is not None:
        paths.add(catalog.workspace_path)
    found = [p for p in catalog.problems if p.is_error and p.path in paths]
    return sorted(found, key=lambda p: (str(p.path), p.position))


def _broken_reason(path: Path, problems: list[Problem]) -> str:
    own = [problem for problem in problems if problem.path == path]
    if not own:
        return "it has errors: run `referloop lint`"
    return f"it has {len(own)} error(s), the first at {own[0]}"


# --- what the replay keeps of an export -----------------------------------------------


@dataclass(frozen=True)
class _Interest:
    """Which events the replay decides on, and which properties it learns from."""

    decided: frozenset[str]
    activation_event: str | None
    user_fields: frozenset[str]
    account_fields: frozenset[str]
    user_judged: frozenset[str]
    account_judged: frozenset[str]
    account_property: str
    # Every property the replay learns from: the user's and the account's fields.
    learnt: frozenset[str]

    def keeps(self, name: str, properties: Mapping[str, Any]) -> bool:
        if name in self.decided or name == self.activation_event:
            return True
        return not self.learnt.isdisjoint(properties)


@dataclass(frozen=True)
class _Row:
    """One event of an export, as much of it as the replay needs."""

    time_ms: int
    order: int
    name: str
    user_id: str
    event_id: str
    properties: Mapping[str, Any]


class _Unreadable(ValueError):
    """A line that cannot be used; the message names fields, never values."""


def _interest(workspace: Workspace, playbooks: Sequence[Playbook]) -> _Interest:
    judged = _judged_fields(workspace, playbooks)
    user = {*workspace.fields.user, TIME_ZONE_FIELD, *judged["user"]} - {"id"}
    account = {*workspace.fields.account, *judged["account"]} - {"id"}
    return _Interest(
        decided=frozenset(_decided_events(playbooks)),
        activation_event=workspace.metrics.events.user_activated,
        user_fields=frozenset(user),
        account_fields=frozenset(account),
        user_judged=frozenset(judged["user"]),
        account_judged=frozenset(judged["account"]),
        account_property=workspace.metrics.account_property,
        learnt=frozenset(user | account),
    )


def _decided_events(playbooks: Sequence[Playbook]) -> set[str]:
    names = {p.trigger.event for p in playbooks if p.trigger.event is not None}
    for playbook in playbooks:
        names |= {
            step.on
            for step in playbook.reinforcement
            if step.on not in UNREPLAYABLE_STEPS
        }
    return names


def _judged_fields(
    workspace: Workspace, playbooks: Sequence[Playbook]
) -> dict[str, set[str]]:
    """The user and account fields some condition or activation gate reads."""
    paths: list[str] = []
    for playbook in playbooks:
        gate = playbook.activation or workspace.activation
        paths += [*playbook.trigger.where, *playbook.audience.account]
        paths += _gate_fields(gate)
    judged: dict[str, set[str]] = {"user": {TIME_ZONE_FIELD}, "account": set()}
    for path in paths:
        scope, _, name = path.partition(".")
        if scope in judged:
            judged[scope].add(name)
    return judged


def _gate_fields(gate: Activation | None) -> list[str]:
    if gate is None:
        return []
    return [*(gate.where or {}), *([gate.property] if gate.property else [])]


def _read(paths: Sequence[Path], interest: _Interest, result: Backtest) -> list[_Row]:
    """The rows of every export that the replay needs, in time order."""
    rows: list[_Row] = []
    seen: set[str] = set()
    order = itertools.count()
    for path in paths:
        for number, raw in _lines(path):
            result.lines += 1
            try:
                row = _parse(raw, next(order))
            except _Unreadable as exc:
                _count_bad(result, BadLine(path.name, number, str(exc)))
                continue
            _widen_span(result, row.time_ms)
            if row.event_id in seen:
                result.duplicates += 1
            elif interest.keeps(row.name, row.properties):
                seen.add(row.event_id)
                rows.append(_slimmed(row, interest))
    return sorted(rows, key=lambda row: (row.time_ms, row.order))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The lines of an export: a file of JSON lines, gzipped or not, or the zip
    archive Amplitude's Export API answers (numbered across its files)."""
    with export_files(path) as files:
        number = 0
        for name in files:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(name, "rb") as lines:
                for raw in lines:
                    number += 1
                    if raw.strip():
                        yield number, raw


def _count_bad(result: Backtest, bad: BadLine) -> None:
    result.bad += 1
    if len(result.bad_lines) < BAD_LINES_KEPT:
        result.bad_lines.append(bad)


def _widen_span(result: Backtest, time_ms: int) -> None:
    moment = _moment(time_ms)
    if result.first_event is None or moment < result.first_event:
        result.first_event = moment
    if result.last_event is None or moment > result.last_event:
        result.last_event = moment


def _parse(raw: bytes, order: int) -> _Row:
    """One line as a row.

    Raises:
        _Unreadable: the line is not an event of the Export API's shape.
    """
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise _Unreadable("not JSON") from exc
    if not isinstance(record, dict):
        raise _Unreadable("not a JSON object")
    if "event_type" in record:
        record = _from_amplitude(record)
    name, properties = record.get("event"), record.get("properties")
    if not isinstance(name, str) or not name.strip():
        raise _Unreadable("no `event` name")
    if not isinstance(properties, dict):
        raise _Unreadable("no `properties` object")

    user_id, time_ms = _user_of(properties), _time_ms_of(properties)
    event_id = _event_id(name, user_id, time_ms, properties.get("$insert_id"), order)
    return _Row(time_ms, order, name, user_id, event_id, properties)


def _from_amplitude(record: dict[str, Any]) -> dict[str, Any]:
    """An event of Amplitude's export in the shape of Mixpanel's: the event's
    properties over the user's, `user_id` as `distinct_id`, `event_time` (UTC)
    as seconds."""
    properties: dict[str, Any] = {}
    for part in ("user_properties", "event_properties"):
        if isinstance(record.get(part), dict):
            properties.update(record[part])
    properties["distinct_id"] = record.get("user_id")
    properties["time"] = _amplitude_seconds(record.get("event_time"))
    properties["$insert_id"] = record.get("$insert_id")
    return {"event": record.get("event_type"), "properties": properties}


def _amplitude_seconds(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    for form in AMPLITUDE_TIMES:
        try:
            moment = datetime.strptime(value, form).replace(tzinfo=UTC)
        except ValueError:
            continue
        return moment.timestamp()
    return None


def _slimmed(row: _Row, interest: _Interest) -> _Row:
    """`row` with only what it teaches of its user, unless it is to be decided."""
    if row.name in interest.decided:
        return row
    names = interest.learnt | {"account_id", interest.account_property}
    kept = {key: value for key, value in row.properties.items() if key in names}
    return replace(row, properties=kept)


def _user_of(properties: Mapping[str, Any]) -> str:
    value = properties.get("distinct_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Unreadable("no `distinct_id`")
    text = str(value).strip()
    if not text:
        raise _Unreadable("`distinct_id` is empty")
    return text


def _time_ms_of(properties: Mapping[str, Any]) -> int:
    value = properties.get("time")
    if value is None:
        raise _Unreadable("no `time`")
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    seconds = number / 1000 if number > TIME_IN_MS_FROM else number
    if not 0 < seconds <= LATEST_TIME_S:
        raise _Unreadable("`time` is not seconds since 1970")
    return int(seconds * 1000)


def _event_id(name: str, user_id: str, time_ms: int, insert_id: Any, order: int) -> str:
    """Mixpanel's dedupe key (event, distinct_id, time, `$insert_id`), else the
    line itself: an event without an insert id is never a duplicate."""
    if not isinstance(insert_id, str | int) or isinstance(insert_id, bool):
        return f"line:{order}"
    return "\x1f".join(("mixpanel", name, user_id, str(time_ms), str(insert_id)))


# --- users and accounts, as the replay learns them ------------------------------------


class _Profiles:
    """What the replay has learnt of each user and account, event by event."""

    def __init__(
        self, workspace: Workspace, interest: _Interest, gates: Sequence[str]
    ) -> None:
        self.interest = interest
        self.gates = gates
        self.user_samples = _samples(workspace.fields.user, interest.user_judged)
        self.account_samples = _samples(
            workspace.fields.account, interest.account_judged
        )
        self.users: dict[str, dict[str, Any]] = defaultdict(dict)
        self.accounts: dict[str, dict[str, Any]] = defaultdict(dict)

    def learn(self, row: _Row, account_id: str) -> None:
        """Take what `row` says of its user and account, from now on; a property
        that is null says nothing."""
        said = {k: v for k, v in row.properties.items() if v is not None}
        for name in self.interest.user_fields & said.keys():
            self.users[row.user_id][name] = said[name]
        if account_id:
            for name in self.interest.account_fields & said.keys():
                self.accounts[account_id][name] = said[name]
        if row.name == self.interest.activation_event:
            self._activated(row, account_id)

    def _activated(self, row: _Row, account_id: str) -> None:
        at = _moment(row.time_ms).isoformat()
        for gate in self.gates:
            scope, _, name = gate.partition(".")
            if scope == "user":
                self.users[row.user_id].setdefault(name, at)
            elif account_id:
                self.accounts[account_id].setdefault(name, at)

    def event(self, row: _Row, account_id: str) -> ProductEvent:
        return ProductEvent(
            event_id=row.event_id,
            name=row.name,
            user_id=row.user_id,
            time=_moment(row.time_ms),
            account_id=account_id or None,
            properties=row.properties,
            user={**self.user_samples, **self.users.get(row.user_id, {})},
            account={**self.account_samples, **self.accounts.get(account_id, {})},
        )


def _samples(declared: Mapping[str, Any], judged: frozenset[str]) -> dict[str, Any]:
    """The example values that stand in for fields no condition or gate reads."""
    return {name: value for name, value in declared.items() if name not in judged}


def _account_of(properties: Mapping[str, Any], account_property: str) -> str:
    for key in ("account_id", account_property):
        value = properties.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value).strip()
            if text:
                return text
    return ""


# --- the replay -----------------------------------------------------------------------


class _Recorder:
    """A channel for backtests: notes when each nudge would have gone out."""

    name: ClassVar[str] = "backtest"

    def __init__(self, replay: _Replay) -> None:
        self._replay = replay

    def send(self, nudge: RenderedNudge) -> Sent:
        self._replay.sent_ms[nudge.delivery_key] = self._replay.now_ms
        return Sent()


class _Replay:
    """The engine on a simulated clock, with a heap of deferred deliveries."""

    def __init__(self, catalog: Catalog) -> None:
        self.now_ms = 0
        self.due: list[tuple[int, int, list[str]]] = []
        self.ready: list[str] = []
        self.decided_ms: dict[str, int] = {}
        self.sent_ms: dict[str, int] = {}
        self.deferred_by: dict[str, str] = {}
        self.retries: Counter[str] = Counter()
        self._order = itertools.count()
        recorder = _Recorder(self)
        self.engine = Engine(
            Store.in_memory(),
            catalog,
            InviteSigner.throwaway(),
            dict.fromkeys(channel_names(), recorder),
            self._schedule,
            lambda: _moment(self.now_ms),
        )

    def decide(self, events: list[ProductEvent], at_ms: int) -> None:
        """Deliver what fell due before `at_ms`, then judge `events` at `at_ms`."""
        self.deliver_until(at_ms)
        self.now_ms = at_ms
        self.engine.ingest_events(events, self._decide)
        self._deliver_ready()

    def deliver_until(self, until_ms: int | None) -> None:
        """Deliver, each at its due time, what falls due by `until_ms` (None: all)."""
        while self.due and (until_ms is None or self.due[0][0] <= until_ms):
            due_ms = self.due[0][0]
            while self.due and self.due[0][0] == due_ms:
                self.ready += heapq.heappop(self.due)[2]
            self.now_ms = due_ms
            self._deliver_ready()

    def _decide(self, occurrence_ids: list[str]) -> None:
        for key in self.engine.decide_many(occurrence_ids):
            self.decided_ms.setdefault(key, self.now_ms)

    def _schedule(self, keys: list[str], delay_ms: int) -> None:
        if delay_ms <= 0:
            self.ready += keys
            return
        self._later(keys, delay_ms)
        for entry in self.engine.ledger.get_many(keys):
            if entry is not None:
                self.deferred_by[entry.delivery_key] = entry.reason

    def _later(self, keys: list[str], delay_ms: int) -> None:
        heapq.heappush(self.due, (self.now_ms + delay_ms, next(self._order), keys))

    def _deliver_ready(self) -> None:
        keys, self.ready = self.ready, []
        if not keys:
            return
        for key, result in self.engine.deliver_many(keys).items():
            if isinstance(result, Retry):
                self._retry(key, result)

    def _retry(self, key: str, retry: Retry) -> None:
        self.retries[key] += 1
        if self.retries[key] > MAX_RETRIES:
            self.engine.bury(key, f"still waiting after {MAX_RETRIES} tries")
            return
        self._later([key], max(1, retry.delay_ms))


def replay(
    catalog: Catalog,
    exports: Sequence[Path],
    names: Sequence[str] = (),
    progress: Progress | None = None,
) -> Backtest:
    """Replay `exports` through the playbooks `names` (all by default).

    Raises:
        UsageError: a name is not a playbook of `catalog`.
    """
    started = time.monotonic()
    say = progress or (lambda what, done, total: None)
    choice = choose(catalog, names)
    playbooks = [loaded.playbook for loaded in choice.playbooks]
    interest = _interest(catalog.workspace, playbooks)
    result = Backtest(
        exports=[str(path) for path in exports],
        playbooks=[p.id for p in playbooks],
        not_replayed=choice.not_replayed,
        problems=choice.problems,
        notes=_notes(playbooks),
        gates=_gate_properties(catalog.workspace, playbooks),
        activation_event=interest.activation_event,
    )

    say("reading", 0, 0)
    rows = _read(exports, interest, result)
    run = _Replay(replace(catalog, playbooks=choice.playbooks))
    gates = sorted({p for p in result.gates.values() if p})
    profiles = _Profiles(catalog.workspace, interest, gates)
    _feed(run, rows, profiles, result, say)
    run.deliver_until(None)

    _settle(run, result, catalog.workspace)
    result.seconds = time.monotonic() - started
    return result


def _gate_properties(
    workspace: Workspace, playbooks: Sequence[Playbook]
) -> dict[str, str]:
    """The property each playbook's activation gate reads; "" for other gates."""
    found = {}
    for playbook in playbooks:
        gate = playbook.activation or workspace.activation
        found[playbook.id] = (gate.property or "") if gate is not None else ""
    return found


def _notes(playbooks: Sequence[Playbook]) -> list[str]:
    notes = []
    for playbook in playbooks:
        if playbook.audience.exclude:
            cohorts = ", ".join(playbook.audience.exclude)
            notes.append(
                f"{playbook.id}: nobody is taken to be in its exclusion cohorts "
                f"({cohorts}); an export does not say who is"
            )
        for step in playbook.reinforcement:
            if step.on in UNREPLAYABLE_STEPS:
                notes.append(
                    f"{playbook.id}: the follow-up on `{step.on}` is not replayed: "
                    "it answers invites sent through referloop's own links"
                )
    return notes


def _feed(
    run: _Replay,
    rows: list[_Row],
    profiles: _Profiles,
    result: Backtest,
    say: Progress,
) -> None:
    """Hand the rows to the engine in time order, one user at most per batch.

    Events of one instant and of different users are judged together; a user's
    second event waits for their first, so re-entry and caps see it.
    """
    total = sum(row.name in profiles.interest.decided for row in rows)
    say("replaying", 0, total)
    batch: list[ProductEvent] = []
    for row in rows:
        account_id = _account_of(row.properties, profiles.interest.account_property)
        profiles.learn(row, account_id)
        if row.name not in profiles.interest.decided:
            continue
        if batch and _starts_a_batch(row, batch):
            _decide(run, batch, result, say, total)
            batch = []
        batch.append(profiles.event(row, account_id))
    if batch:
        _decide(run, batch, result, say, total)


def _starts_a_batch(row: _Row, batch: list[ProductEvent]) -> bool:
    at_ms = _ms(batch[0].time)
    return row.time_ms != at_ms or any(e.user_id == row.user_id for e in batch)


def _decide(
    run: _Replay,
    batch: list[ProductEvent],
    result: Backtest,
    say: Progress,
    total: int,
) -> None:
    before = result.replayed_events
    run.decide(batch, _ms(batch[0].time))
    result.replayed_events += len(batch)
    if before // PROGRESS_EVERY != result.replayed_events // PROGRESS_EVERY:
        say("replaying", result.replayed_events, total)


# --- what it came to ------------------------------------------------------------------


def _settle(run: _Replay, result: Backtest, workspace: Workspace) -> None:
    result.decisions = _decisions(run)
    if result.last_event is not None:
        ends = [_ms(result.last_event), run.now_ms, *run.sent_ms.values()]
        result.replay_end = _moment(max(ends))
    _summarise(result)
    result.vendors = _vendor_loads(result.decisions, run.engine.catalog, workspace)
    result.overlaps = _overlaps(result.decisions, result.playbooks)


def _decisions(run: _Replay) -> list[Decision]:
    keys = list(run.decided_ms)
    decisions = []
    for at in range(0, len(keys), READ_CHUNK):
        chunk = keys[at : at + READ_CHUNK]
        for entry in run.engine.ledger.get_many(chunk):
            if entry is not None:
                decisions.append(_decision(run, entry))
    return sorted(decisions, key=lambda d: (d.decided_at, d.playbook, d.user_id))


def _decision(run: _Replay, entry: Entry) -> Decision:
    key, fields = entry.delivery_key, entry.fields
    sent_ms = run.sent_ms.get(key)
    is_sent = entry.outcome == Outcome.SENT
    return Decision(
        playbook=fields.get("playbook", ""),
        step=fields.get("step", ""),
        user_id=fields.get("user", ""),
        account_id=fields.get("account", ""),
        decided_at=_moment(run.decided_ms[key]),
        send_at=_moment(sent_ms) if is_sent and sent_ms is not None else None,
        outcome=entry.outcome,
        reason="" if is_sent else entry.reason,
        deferred_by=run.deferred_by.get(key, ""),
        channel=fields.get("channel", ""),
    )


def _summarise(result: Backtest) -> None:
    by_playbook: dict[str, list[Decision]] = {p: [] for p in result.playbooks}
    for decision in result.decisions:
        by_playbook.setdefault(decision.playbook, []).append(decision)
    for playbook, decisions in by_playbook.items():
        result.nudged_by_day[playbook] = _users_by_day(decisions)
        result.held[playbook] = _count(d.reason for d in decisions if _is_held(d))
        result.deferred[playbook] = _count(d.deferred_by for d in decisions)
        result.not_activated[playbook] = sorted(
            {d.user_id for d in decisions if d.reason == guardrails.NOT_ACTIVATED}
        )
        result.summaries.append(
            _summary(playbook, decisions, result.nudged_by_day[playbook])
        )


def _is_held(decision: Decision) -> bool:
    return decision.outcome == Outcome.HELD


def _count(reasons: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(r for r in reasons if r).items()))


def _users_by_day(decisions: Sequence[Decision]) -> dict[date, int]:
    users: dict[date, set[str]] = defaultdict(set)
    for decision in decisions:
        if decision.send_at is not None:
            users[decision.send_at.date()].add(decision.user_id)
    return {day: len(users[day]) for day in sorted(users)}


def _summary(
    playbook: str, decisions: Sequence[Decision], by_day: Mapping[date, int]
) -> PlaybookSummary:
    sent = [d for d in decisions if d.is_sent]
    busiest = max(sorted(by_day), key=lambda day: by_day[day]) if by_day else None
    return PlaybookSummary(
        playbook=playbook,
        decisions=len(decisions),
        users_nudged=len({d.user_id for d in sent}),
        nudges=len(sent),
        held=sum(_is_held(d) for d in decisions),
        deferred=sum(bool(d.deferred_by) for d in decisions),
        dead=sum(d.outcome == Outcome.DEAD for d in decisions),
        busiest_day=busiest,
        busiest_day_users=by_day[busiest] if busiest is not None else 0,
    )


def _vendor_loads(
    decisions: Sequence[Decision], catalog: Catalog, workspace: Workspace
) -> list[VendorLoad]:
    sends: dict[tuple[str, str, Cap | None], list[datetime]] = defaultdict(list)
    for decision in decisions:
        if decision.send_at is None:
            continue
        loaded = catalog.get(decision.playbook)
        if loaded is None:
            continue
        name, cap = budget_of(
            workspace, loaded.playbook, decision.step, decision.channel
        )
        sends[(decision.channel, name, cap)].append(decision.send_at)
    return [
        _vendor_load(channel, name, cap, sorted(times))
        for (channel, name, cap), times in sorted(sends.items(), key=lambda i: i[0][:2])
    ]


def budget_of(
    workspace: Workspace, playbook: Playbook, step: str, channel: str
) -> tuple[str, Cap | None]:
    """The budget a send through `channel` draws on, as workers pace it.

    Returns its name (`braze:messaging`) and cap; ("", None) for a channel that
    has no budget (the outbox, an installed adapter).
    """
    vendors = workspace.vendors
    if channel == "customerio":
        reference = render.nudge_of(playbook, step).reference(channel)
        kind = customerio.TRACK_BUDGET
        if isinstance(reference, customerio.CustomerIOReference) and (
            reference.broadcast is not None
        ):
            kind = customerio.BROADCAST_BUDGET
        chosen = {customerio.TRACK_BUDGET: vendors.customerio.budget}
        caps = {**customerio.DEFAULT_BUDGETS, **chosen, **vendors.customerio.budgets}
        return kind, with_headroom(caps[kind])
    if channel == "braze":
        cap = vendors.braze.budgets.get(braze.MESSAGING_BUDGET, vendors.braze.budget)
        return braze.MESSAGING_BUDGET, with_headroom(cap)
    if channel == "intercom":
        return intercom.API_BUDGET, with_headroom(vendors.intercom.budget)
    if channel == "webhook":
        cap = webhook.DEFAULT_BUDGETS[webhook.NUDGES_BUDGET]
        return webhook.NUDGES_BUDGET, with_headroom(cap)
    return "", None


def _vendor_load(
    channel: str, name: str, cap: Cap | None, times: list[datetime]
) -> VendorLoad:
    by_day = Counter(moment.date() for moment in times)
    by_hour = Counter(
        moment.replace(minute=0, second=0, microsecond=0) for moment in times
    )
    peak_hour = max(sorted(by_hour), key=lambda hour: by_hour[hour])
    return VendorLoad(
        channel=channel,
        budget_name=name,
        budget=cap,
        by_day=dict(sorted(by_day.items())),
        peak_hour=peak_hour,
        peak_hour_sends=by_hour[peak_hour],
        peak_window_sends=_busiest_window(times, cap.window if cap else HOUR),
    )


def _busiest_window(times: Sequence[datetime], window: timedelta) -> int:
    """The most sends in any stretch of `window` (sliding), `times` in order."""
    most, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def _overlaps(decisions: Sequence[Decision], playbooks: Sequence[str]) -> list[Overlap]:
    nudged: dict[str, set[str]] = defaultdict(set)
    for decision in decisions:
        if decision.is_sent:
            nudged[decision.playbook].add(decision.user_id)
    pairs = itertools.combinations(sorted(playbooks), 2)
    found = [Overlap(a, b, len(nudged[a] & nudged[b])) for a, b in pairs]
    return [overlap for overlap in found if overlap.users]


def _moment(moment_ms: int) -> datetime:
    return datetime.fromtimestamp(moment_ms / 1000, UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)

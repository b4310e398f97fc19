"""Loop metrics: the funnel, the loop's rates and K-factor, loop time, and the
lift of each playbook over its holdout, computed by DuckDB over one table.

Every source is first read into the **funnel** table, one row per event:

    time, kind, user_id, account_id, referrer, playbook, step, channel, variant,
    reason, trigger, trigger_time, segment

with `kind` one of `nudge_sent`, `nudge_held` (with the guardrail as `reason`),
`invite_sent` (the user is the referrer), `invite_accepted` and
`invitee_activated` (the user is the invitee, `referrer` who invited them),
`user_activated` (a user's own activation) and `reward_granted`. A nudge's
`trigger` is `event` or `cohort`, with the moment it fired; `segment` is the
account's segment (a plan, a size band) where the data names one, and any other
event of an export that names it is kept as `segment_seen` for that alone.

Sources: a Mixpanel raw export (the Export API's JSON lines), where referloop's
own events (`referloop nudge sent`, ...) sit beside the product's, named as the
workspace's `metrics:` says; or referloop's own records in Redis.

The definitions, with a worked example, are in docs/metrics.md. In short, for
each playbook its **exposed** users are split into two arms: **nudged** (a
nudge was sent) and **holdout** (held back by the holdout on purpose). Each
exposed user is followed for the observation window from their first decision:

    invite rate       = inviters / users
    invites/inviter   = invites / inviters
    acceptance        = accepted invitees / invites
    activation        = activated invitees / accepted invitees
    K-factor          = activated invitees / users
                      = invite rate x invites/inviter x acceptance x activation
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from orchestrator import stats
from orchestrator.model import MetricsSettings

KINDS = (
    "nudge_sent",
    "nudge_held",
    "invite_sent",
    "invite_accepted",
    "invitee_activated",
    "user_activated",
    "reward_granted",
    "segment_seen",
)
COLUMNS = (
    ("time", "TIMESTAMPTZ"),
    ("kind", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("account_id", "VARCHAR"),
    ("referrer", "VARCHAR"),
    ("playbook", "VARCHAR"),
    ("step", "VARCHAR"),
    ("channel", "VARCHAR"),
    ("variant", "VARCHAR"),
    ("reason", "VARCHAR"),
    ("trigger", "VARCHAR"),
    ("trigger_time", "TIMESTAMPTZ"),
    ("segment", "VARCHAR"),
)
# referloop's own events, as the journal names them in the analytics vendor.
OWN_EVENTS = {
    "referloop nudge sent": "nudge_sent",
    "referloop nudge held back": "nudge_held",
    "referloop reward granted": "reward_granted",
}
HOLDOUT = "holdout"
UNKNOWN = "unknown"
# The properties of an export's events that the funnel reads, and the times.
OWN_PROPERTIES = (
    "time",
    "distinct_id",
    "account_id",
    "playbook",
    "step",
    "channel",
    "variant",
    "reason",
    "trigger",
    "trigger_time",
    "account_segment",
)
TIMES = ("time", "trigger_time")
# Any other event of the export that names the user's account segment.
SEGMENT_SEEN = "segment_seen"
DIMENSIONS = ("channel", "variant", "segment", "cohort_week")
# The loop-time distribution's bins: upper bounds in hours, and their labels.
LOOP_BINS = (
    (1, "under 1 h"),
    (6, "1-6 h"),
    (24, "6-24 h"),
    (48, "1-2 d"),
    (72, "2-3 d"),
    (168, "3-7 d"),
    (336, "1-2 wk"),
    (672, "2-4 wk"),
    (math.inf, "4 wk or more"),
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Arm:
    """What the users of one arm did within the window."""

    users: int = 0
    inviters: int = 0
    invites: int = 0
    accepted: int = 0
    activated: int = 0
    # How many users had each (invites, accepted, activated): for the bootstrap.
    patterns: Mapping[tuple[int, int, int], int] = field(default_factory=dict)

    @property
    def invite_rate(self) -> float:
        return _share(self.inviters, self.users)

    @property
    def invites_per_inviter(self) -> float:
        return _share(self.invites, self.inviters)

    @property
    def acceptance(self) -> float:
        return _share(self.accepted, self.invites)

    @property
    def activation(self) -> float:
        return _share(self.activated, self.accepted)

    @property
    def k_factor(self) -> float:
        return _share(self.activated, self.users)

    def as_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "inviters": self.inviters,
            "invites": self.invites,
            "accepted": self.accepted,
            "activated": self.activated,
            "invite_rate": _plain(self.invite_rate),
            "invites_per_inviter": _plain(self.invites_per_inviter),
            "acceptance": _plain(self.acceptance),
            "activation": _plain(self.activation),
            "k_factor": _plain(self.k_factor),
        }


@dataclass(frozen=True)
class Lift:
    """Nudged minus holdout for one metric, with its 95% interval and verdict."""

    metric: str
    nudged: float
    holdout: float
    difference: stats.Interval
    verdict: stats.Verdict
    small_sample: bool
    users_needed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "nudged": _plain(self.nudged),
            "holdout": _plain(self.holdout),
            "difference": _plain(self.difference.estimate),
            "low": _plain(self.difference.low),
            "high": _plain(self.difference.high),
            "verdict": self.verdict,
            "small_sample": self.small_sample,
            "users_needed": self.users_needed,
        }


@dataclass(frozen=True)
class Segment:
    """One playbook, or one slice of it (a channel, a variant, a cohort week)."""

    playbook: str
    dimension: str = ""
    value: str = ""
    nudged: Arm = field(default_factory=Arm)
    holdout: Arm = field(default_factory=Arm)
    lifts: tuple[Lift, ...] = ()


@dataclass(frozen=True)
class LoopTime:
    """Activation to first accepted invite, over the referrers who got there."""

    referrers: int = 0
    median_s: float = math.nan
    p90_s: float = math.nan
    # Referrers per bin of LOOP_BINS, in order.
    histogram: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class TriggerPath:
    """From a trigger firing to its nudge being sent, for one kind of trigger:
    `event` (the product event's time) or `cohort` (when referloop saw the user
    in the cohort). Waits the playbook asks for (a delay, quiet hours) count."""

    playbook: str
    trigger: str
    nudges: int
    median_s: float
    p90_s: float


@dataclass(frozen=True)
class Report:
    """Everything `referloop report` shows."""

    events: int
    window_days: int
    funnel: Mapping[str, Mapping[str, int]]
    playbooks: tuple[Segment, ...]
    slices: tuple[Segment, ...]
    loop_time: LoopTime
    loop_time_by_playbook: Mapping[str, LoopTime]
    trigger_paths: tuple[TriggerPath, ...] = ()
    first: datetime | None = None
    last: datetime | None = None


# --- reading -----------------------------------------------------------------


class Funnel:
    """The funnel table in an in-process DuckDB database."""

    def __init__(self) -> None:
        self.db = duckdb.connect(":memory:")
        columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
        self.db.execute(f"CREATE TABLE funnel ({columns})")

    def read_export(
        self, path: Path, settings: MetricsSettings, form: str = "auto"
    ) -> int:
        """Add the events of a raw export, Mixpanel's or Amplitude's (`form`, or
        told apart by the file's first event); return how many were kept."""
        if form == "auto":
            form = export_form(path)
        if form == "amplitude":
            return self.read_amplitude_export(path, settings)
        return self.read_mixpanel_export(path, settings)

    def read_mixpanel_export(self, path: Path, settings: MetricsSettings) -> int:
        """Add the events of a Mixpanel raw export file; return how many were kept.

        Lines that are not JSON, and events this report has no use for, are
        skipped. `time` is in seconds (or milliseconds) since the epoch. DuckDB
        reads only the properties named here, straight into typed fields: a
        value of the wrong type (a `time` that is not a number) skips its line.
        """
        struct = _quote(_struct(settings))
        raw = f"""
            SELECT event,
                   to_timestamp(CASE WHEN properties.time > 1e11
                                     THEN properties.time / 1000
                                     ELSE properties.time END) AS moment,
                   properties.distinct_id AS user_id,
                   properties AS p, properties AS u
            FROM read_json(?, format = 'newline_delimited', ignore_errors = true,
                           columns = {{'event': 'VARCHAR', 'properties': '{struct}'}})
        """  # noqa: S608 - the struct is quoted
        return self._insert(raw, [str(path)], settings)

    def read_amplitude_export(self, path: Path, settings: MetricsSettings) -> int:
        """Add the events of an Amplitude raw export; return how many were kept.

        `path` is a file of JSON lines (gzipped or not), or the zip archive the
        Export API answers, whose files are read in turn. `event_time` is UTC;
        the funnel's properties are read from `event_properties`, the account
        and its segment from `user_properties` when the event does not say.
        """
        with export_files(path) as files:
            struct = _quote(_struct(settings))
            raw = f"""
                SELECT event_type AS event,
                       timezone('UTC', try_strptime(event_time,
                           ['%Y-%m-%d %H:%M:%S.%f', '%Y-%m-%d %H:%M:%S'])) AS moment,
                       user_id, event_properties AS p, user_properties AS u
                FROM read_json(?, format = 'newline_delimited',
                               ignore_errors = true,
                               columns = {{'event_type': 'VARCHAR',
                                          'user_id': 'VARCHAR',
                                          'event_time': 'VARCHAR',
                                          'event_properties': '{struct}',
                                          'user_properties': '{struct}'}})
            """  # noqa: S608 - the struct is quoted
            return self._insert(raw, [files], settings)

    def _insert(self, raw: str, params: list[Any], settings: MetricsSettings) -> int:
        """Add to the funnel what `raw` reads (event, moment, user_id, and the
        properties `p`, with `u` for the account's): the events the workspace
        names, and any other that names the account's segment."""
        names = {**OWN_EVENTS, **settings.event_kinds()}
        mapping = ", ".join(f"('{_quote(k)}', '{v}')" for k, v in names.items())
        account = _field(settings.account_property)
        referrer = _field(settings.referrer_property)
        segment = _field(settings.segment_property)
        before = self.count()
        self.db.execute(
            f"""
            INSERT INTO funnel
            WITH raw AS ({raw}),
            names(event, kind) AS (VALUES {mapping})
            SELECT
              moment,
              coalesce(names.kind, '{SEGMENT_SEEN}'),
              user_id,
              coalesce(p.account_id, p.{account}, u.account_id, u.{account}),
              p.{referrer},
              p.playbook, p.step, p.channel, p.variant, p.reason, p.trigger,
              to_timestamp(CASE WHEN p.trigger_time > 1e11 THEN p.trigger_time / 1000
                                ELSE p.trigger_time END),
              coalesce(p.account_segment, p.{segment}, u.account_segment, u.{segment})
            FROM raw LEFT JOIN names USING (event)
            WHERE (names.kind IS NOT NULL OR p.{segment} IS NOT NULL
                   OR u.{segment} IS NOT NULL)
              AND moment IS NOT NULL AND user_id IS NOT NULL
            """,  # noqa: S608 - names are quoted; paths are parameters
            params,
        )
        return self.count() - before

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Add funnel rows, each a mapping of COLUMNS' names (absent ones are
        NULL); return how many."""
        names = [name for name, _ in COLUMNS]
        batch = [tuple(row.get(name) for name in names) for row in rows]
        if batch:
            marks = ", ".join("?" for _ in COLUMNS)
            self.db.executemany(f"INSERT INTO funnel VALUES ({marks})", batch)  # noqa: S608
        return len(batch)

    def count(self) -> int:
        row = self.db.execute("SELECT count(*) FROM funnel").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.db.close()


# --- computing ----------------------------------------------------------------


def compute(
    funnel: Funnel, settings: MetricsSettings, progress: Progress | None = None
) -> Report:
    """The report of everything in `funnel`."""
    say = progress or (lambda step: None)
    db = funnel.db
    window_s = int(settings.window.total_seconds())
    say("exposures")
    _exposures(db, window_s)
    say("funnel")
    funnel_counts = _funnel_counts(db)
    say("playbooks")
    playbooks = tuple(_segments(db, ""))
    say("slices")
    slices = tuple(s for dimension in DIMENSIONS for s in _segments(db, dimension))
    say("loop time")
    loop_time, by_playbook = _loop_times(db)
    say("trigger paths")
    trigger_paths = _trigger_paths(db)
    bounds = db.execute("SELECT min(time), max(time) FROM funnel").fetchone()
    return Report(
        events=funnel.count(),
        window_days=window_s // 86_400,
        funnel=funnel_counts,
        playbooks=playbooks,
        slices=slices,
        loop_time=loop_time,
        loop_time_by_playbook=by_playbook,
        trigger_paths=trigger_paths,
        first=bounds[0] if bounds else None,
        last=bounds[1] if bounds else None,
    )


def _exposures(db: duckdb.DuckDBPyConnection, window_s: int) -> None:
    """One row per playbook and exposed user, with what they did in the window."""
    db.execute("DROP TABLE IF EXISTS exposed")
    db.execute(
        f"""
        CREATE TABLE exposed AS
        WITH decisions AS (
          SELECT playbook, user_id, min(time) AS t0,
                 bool_or(kind = 'nudge_sent') AS sent,
                 bool_or(kind = 'nudge_held' AND reason = '{HOLDOUT}') AS held_out,
                 min(channel) AS channel, min(variant) AS variant
          FROM funnel
          WHERE kind IN ('nudge_sent', 'nudge_held') AND playbook IS NOT NULL
            AND coalesce(step, 'nudge') = 'nudge'
          GROUP BY playbook, user_id
        ),
        arms AS (
          SELECT *, CASE WHEN sent THEN 'nudged' ELSE 'holdout' END AS arm,
                 t0 + to_seconds({window_s}) AS t1
          FROM decisions WHERE sent OR held_out
        ),
        loop AS (
          SELECT kind, time, user_id AS who,
                 CASE WHEN kind = 'invite_sent' THEN user_id ELSE referrer END
                   AS credited
          FROM funnel
          WHERE kind IN ('invite_sent', 'invite_accepted', 'invitee_activated')
        ),
        done AS (
          SELECT a.playbook, a.user_id,
                 count(*) FILTER (WHERE l.kind = 'invite_sent') AS invites,
                 count(DISTINCT l.who) FILTER (WHERE l.kind = 'invite_accepted')
                   AS accepted,
                 count(DISTINCT l.who) FILTER (WHERE l.kind = 'invitee_activated')
                   AS activated
          FROM arms a JOIN loop l
            ON l.credited = a.user_id AND l.time >= a.t0 AND l.time < a.t1
          GROUP BY ALL
        ),
        segments AS (
          SELECT user_id, max(segment) AS segment FROM funnel
          WHERE segment IS NOT NULL GROUP BY user_id
        )
        SELECT a.playbook, a.user_id, a.arm, a.channel, a.variant,
               coalesce(s.segment, '{UNKNOWN}') AS segment,
               strftime(date_trunc('week', a.t0), '%Y-%m-%d') AS cohort_week,
               coalesce(d.invites, 0) AS invites,
               least(coalesce(d.accepted, 0), coalesce(d.invites, 0)) AS accepted,
               least(coalesce(d.activated, 0), coalesce(d.accepted, 0),
                     coalesce(d.invites, 0)) AS activated
        FROM arms a
        LEFT JOIN done d USING (playbook, user_id)
        LEFT JOIN segments s USING (user_id)
        """  # noqa: S608 - numbers and constants only
    )


def _funnel_counts(db: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Per playbook: decided, held back by each guardrail, sent, then the loop."""
    counts: dict[str, dict[str, int]] = {}
    rows = db.execute(
        """
        SELECT playbook,
               CASE WHEN kind = 'nudge_held' THEN 'held:' || coalesce(reason, '?')
                    ELSE kind END AS stage,
               count(DISTINCT user_id)
        FROM funnel
        WHERE kind IN ('nudge_sent', 'nudge_held') AND playbook IS NOT NULL
          AND coalesce(step, 'nudge') = 'nudge'
        GROUP BY ALL
        """
    ).fetchall()
    for playbook, stage, n in rows:
        counts.setdefault(playbook, {})[stage] = int(n)
    loop = db.execute(
        """
        SELECT playbook,
               count(*) FILTER (WHERE invites > 0),
               count(*) FILTER (WHERE accepted > 0),
               count(*) FILTER (WHERE activated > 0)
        FROM exposed WHERE arm = 'nudged' GROUP BY playbook
        """
    ).fetchall()
    for playbook, invited, accepted, activated in loop:
        stages = counts.setdefault(playbook, {})
        stages["invited"] = int(invited)
        stages["accepted"] = int(accepted)
        stages["activated"] = int(activated)
    granted = db.execute(
        """
        SELECT playbook, count(DISTINCT user_id) FROM funnel
        WHERE kind = 'reward_granted' AND playbook IS NOT NULL GROUP BY playbook
        """
    ).fetchall()
    for playbook, n in granted:
        counts.setdefault(playbook, {})["rewarded"] = int(n)
    for stages in counts.values():
        held = sum(n for stage, n in stages.items() if stage.startswith("held:"))
        stages["eligible"] = stages.get("nudge_sent", 0) + held
    return counts


def _segments(db: duckdb.DuckDBPyConnection, dimension: str) -> list[Segment]:
    """A segment per playbook (and value of `dimension`), with both arms and lift."""
    key = f", {dimension}" if dimension else ""
    rows = db.execute(
        f"""
        SELECT playbook{key}, arm, invites, accepted, activated, count(*) AS users
        FROM exposed
        GROUP BY ALL
        ORDER BY ALL
        """  # noqa: S608 - the dimension is one of DIMENSIONS
    ).fetchall()
    grouped: dict[tuple[str, str], dict[str, dict[tuple[int, int, int], int]]] = {}
    for row in rows:
        if dimension:
            playbook, value, arm, invites, accepted, activated, users = row
        else:
            playbook, arm, invites, accepted, activated, users = row
            value = ""
        arms = grouped.setdefault((playbook, str(value or "")), {})
        pattern = (int(invites), int(accepted), int(activated))
        arms.setdefault(arm, {})[pattern] = int(users)
    return [
        _segment(playbook, dimension, value, arms)
        for (playbook, value), arms in sorted(grouped.items())
    ]


def _segment(
    playbook: str,
    dimension: str,
    value: str,
    arms: Mapping[str, Mapping[tuple[int, int, int], int]],
) -> Segment:
    nudged = _arm(arms.get("nudged", {}))
    holdout = _arm(arms.get("holdout", {}))
    return Segment(
        playbook=playbook,
        dimension=dimension,
        value=value,
        nudged=nudged,
        holdout=holdout,
        lifts=tuple(_lifts(nudged, holdout)),
    )


def _arm(patterns: Mapping[tuple[int, int, int], int]) -> Arm:
    users = sum(patterns.values())
    return Arm(
        users=users,
        inviters=sum(n for (inv, _, _), n in patterns.items() if inv > 0),
        invites=sum(inv * n for (inv, _, _), n in patterns.items()),
        accepted=sum(acc * n for (_, acc, _), n in patterns.items()),
        activated=sum(act * n for (_, _, act), n in patterns.items()),
        patterns=dict(patterns),
    )


def _lifts(nudged: Arm, holdout: Arm) -> list[Lift]:
    """Lift in invite rate, acceptance, activation and K-factor."""
    has_data = nudged.users > 0 and holdout.users > 0
    invite_rate = stats.newcombe(
        nudged.inviters, nudged.users, holdout.inviters, holdout.users
    )
    small = stats.is_small(nudged.users, nudged.inviters) or stats.is_small(
        holdout.users, holdout.inviters
    )
    lifts = [
        Lift(
            "invite_rate",
            nudged.invite_rate,
            holdout.invite_rate,
            invite_rate,
            stats.verdict(invite_rate, has_data, small),
            small,
            stats.users_needed(nudged.invite_rate, holdout.invite_rate),
        )
    ]
    # Acceptance, activation and K are ratios over users' own counts: users
    # are resampled, so one user's many invites are not taken as independent.
    ratios: list[tuple[str, Callable[[tuple[int, int, int]], tuple[int, int]], int]]
    ratios = [
        ("acceptance", lambda p: (p[1], p[0]), nudged.invites),
        ("activation", lambda p: (p[2], p[1]), nudged.accepted),
        ("k_factor", lambda p: (p[2], 1), nudged.users),
    ]
    for metric, pick, trials in ratios:
        a = _units(nudged.patterns, pick)
        b = _units(holdout.patterns, pick)
        has = has_data and _denominator(a) > 0 and _denominator(b) > 0
        interval = (
            stats.bootstrap_ratio_difference(a, b)
            if has
            else stats.Interval(math.nan, math.nan, math.nan)
        )
        small = trials < stats.SMALL_ARM or holdout.users < stats.SMALL_ARM
        lifts.append(
            Lift(
                metric,
                getattr(nudged, metric),
                getattr(holdout, metric),
                interval,
                stats.verdict(interval, has, small),
                small,
                stats.users_needed_ratio(a, b) if has else None,
            )
        )
    return lifts


def _units(
    patterns: Mapping[tuple[int, int, int], int],
    pick: Callable[[tuple[int, int, int]], tuple[int, int]],
) -> dict[tuple[int, int], int]:
    units: dict[tuple[int, int], int] = {}
    for pattern, n in patterns.items():
        unit = pick(pattern)
        units[unit] = units.get(unit, 0) + n
    return units


def _denominator(units: Mapping[tuple[int, int], int]) -> int:
    return sum(den * n for (_, den), n in units.items())


def _loop_times(
    db: duckdb.DuckDBPyConnection,
) -> tuple[LoopTime, dict[str, LoopTime]]:
    """Activation to first accepted invite: over all referrers, and per playbook
    (the playbook of the first accepted invite's nudge, when it had one)."""
    db.execute(
        """
        CREATE OR REPLACE TEMP TABLE loops AS
        WITH activation AS (
          SELECT user_id, min(time) AS t FROM funnel
          WHERE kind IN ('user_activated', 'invitee_activated') GROUP BY user_id
        ),
        success AS (
          SELECT referrer AS user_id, arg_min(playbook, time) AS playbook,
                 min(time) AS t
          FROM funnel WHERE kind = 'invite_accepted' AND referrer IS NOT NULL
          GROUP BY referrer
        )
        SELECT s.playbook, epoch(s.t) - epoch(a.t) AS seconds
        FROM activation a JOIN success s USING (user_id)
        WHERE s.t >= a.t
        """
    )
    overall = _loop_time(db, "")
    rows = db.execute(
        "SELECT DISTINCT playbook FROM loops WHERE playbook IS NOT NULL"
    ).fetchall()
    return overall, {row[0]: _loop_time(db, row[0]) for row in rows}


def _loop_time(db: duckdb.DuckDBPyConnection, playbook: str) -> LoopTime:
    where = "WHERE playbook = ?" if playbook else ""
    row = db.execute(
        f"""
        SELECT count(*), quantile_cont(seconds, 0.5), quantile_cont(seconds, 0.9)
        FROM loops {where}
        """,  # noqa: S608 - a fixed clause
        [playbook] if playbook else [],
    ).fetchone()
    if not row or not row[0]:
        return LoopTime()
    cases = " ".join(
        f"WHEN seconds < {int(hours * 3600)} THEN {index}"
        for index, (hours, _) in enumerate(LOOP_BINS[:-1])
    )
    binned = db.execute(
        f"""
        SELECT CASE {cases} ELSE {len(LOOP_BINS) - 1} END AS bin, count(*)
        FROM loops {where} GROUP BY bin
        """,  # noqa: S608 - numbers and a fixed clause
        [playbook] if playbook else [],
    ).fetchall()
    counts = {int(b): int(n) for b, n in binned}
    histogram = tuple(
        (label, counts.get(index, 0)) for index, (_, label) in enumerate(LOOP_BINS)
    )
    return LoopTime(int(row[0]), float(row[1]), float(row[2]), histogram)


def _trigger_paths(db: duckdb.DuckDBPyConnection) -> tuple[TriggerPath, ...]:
    """Trigger to send, per playbook and kind of trigger, then over all playbooks
    (as the playbook `""`)."""
    rows = db.execute(
        """
        WITH paths AS (
          SELECT playbook, trigger, epoch(time) - epoch(trigger_time) AS seconds
          FROM funnel
          WHERE kind = 'nudge_sent' AND playbook IS NOT NULL
            AND trigger IS NOT NULL AND trigger_time IS NOT NULL
        )
        SELECT coalesce(playbook, ''), trigger, count(*),
               quantile_cont(seconds, 0.5), quantile_cont(seconds, 0.9)
        FROM paths WHERE seconds >= 0
        GROUP BY GROUPING SETS ((playbook, trigger), (trigger))
        ORDER BY grouping(playbook), 1, 2
        """
    ).fetchall()
    return tuple(
        TriggerPath(str(playbook), str(trigger), int(n), float(median), float(p90))
        for playbook, trigger, n, median, p90 in rows
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def export_form(path: Path) -> str:
    """`amplitude` or `mixpanel`, by the first event of the file (or archive)."""
    with export_files(path) as files:
        for name in files:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(name, "rt", encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        first = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(first, dict):
                        return "amplitude" if "event_type" in first else "mixpanel"
    return "mixpanel"


@contextmanager
def export_files(path: Path) -> Iterator[list[str]]:
    """The files of an export: the file itself, or an archive's files (Amplitude
    answers a zip of gzipped files) unpacked into a private folder that is
    removed afterwards."""
    if not zipfile.is_zipfile(path):
        yield [str(path)]
        return
    with tempfile.TemporaryDirectory(prefix="referloop-export-") as folder:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for number, member in enumerate(members):
                # Names inside an archive are not trusted as paths.
                suffix = ".json.gz" if member.filename.endswith(".gz") else ".json"
                target = Path(folder) / f"part-{number:05d}{suffix}"
                with archive.open(member) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
        yield sorted(str(p) for p in Path(folder).iterdir()) or [str(path)]


def _struct(settings: MetricsSettings) -> str:
    """The properties the funnel reads, as a DuckDB struct type."""
    wanted = dict.fromkeys(
        (
            *OWN_PROPERTIES,
            settings.account_property,
            settings.referrer_property,
            settings.segment_property,
        )
    )
    fields = ", ".join(
        f"{_field(name)} {'DOUBLE' if name in TIMES else 'VARCHAR'}" for name in wanted
    )
    return f"STRUCT({fields})"


def _field(name: str) -> str:
    """`name` as a quoted SQL identifier (a struct field)."""
    return '"' + name.replace('"', '""') + '"'

"""`referloop report`: from an export or from referloop's own records, as a
terminal table, JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from orchestrator.state import Store
from simulator import Simulator
from simulator.amplitude_cohorts import AmplitudeCohortsSim
from simulator.env import vendor_env
from simulator.mixpanel import MixpanelSim
from simulator.population import as_amplitude
from tests.orchestrator.loop_rig import make_rig
from tests.orchestrator.test_metrics import export, small_dataset

ROOT = Path(__file__).resolve().parents[2]


def _referloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return {**env, **more}


def test_a_report_of_an_export_in_every_format(tmp_path: Path):
    path = str(export(tmp_path / "e.jsonl", small_dataset()))
    env = _env()

    text = _referloop("report", "--events", path, "--by", "channel", env=env)
    data = json.loads(
        _referloop("report", "--events", path, "--format", "json", env=env).stdout
    )
    rows = list(
        csv.DictReader(
            io.StringIO(
                _referloop(
                    "report", "--events", path, "--format", "csv", env=env
                ).stdout
            )
        )
    )
    markdown = _referloop("report", "--events", path, "--format", "markdown", env=env)

    assert text.returncode == 0, text.stderr
    for heading in (
        "Funnel",
        "The loop, per playbook",
        "Lift over the holdout",
        "By channel",
    ):
        assert heading in text.stdout
    assert "too few users to tell yet" in text.stdout
    (playbook,) = data["playbooks"]
    assert playbook["nudged"]["k_factor"] == 0.25
    assert {lift["metric"] for lift in playbook["lift"]} == {
        "invite_rate",
        "acceptance",
        "activation",
        "k_factor",
    }
    nudged = next(r for r in rows if r["arm"] == "nudged" and not r["dimension"])
    assert nudged["users"] == "4"
    assert "| pack-reviewers | nudged | 4 | 50.0% |" in markdown.stdout


def test_a_report_of_referloops_own_records(
    store: Store, tmp_path: Path, redis_url: str
):
    """The ledger dates a decision by the wall clock; what users did afterwards is
    dated by the product's events, so those come a minute later here."""
    rig = make_rig(store, tmp_path)
    keys = {f"u-{n}": rig.nudge(f"u-{n}") for n in range(3)}
    rig.at(datetime.now(UTC) + timedelta(minutes=1))
    for user, key in keys.items():
        rig.event("invite_sent", user, props={"token": rig.token(user, key)})
    key = keys["u-0"]
    rig.event("invite_accepted", "u-new", props={"token": rig.token("u-0", key)})
    rig.event("invitee_activated", "u-new")
    env = _env(
        REDIS_URL=redis_url,
        REFERLOOP_NAMESPACE=store.namespace,
        REFERLOOP_PLAYBOOKS=str(tmp_path / "playbooks"),
    )

    result = _referloop("report", "--format", "json", env=env)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (playbook,) = data["playbooks"]
    assert playbook["nudged"]["users"] == 3
    assert playbook["nudged"]["inviters"] == 3
    assert playbook["nudged"]["accepted"] == 1
    assert playbook["nudged"]["activated"] == 1
    # The rig's events are dated by its own clock, days before the wall clock
    # that dates the sends: what matters is that each send knows its trigger.
    (path, overall) = data["trigger_paths"]
    assert (path["playbook"], path["trigger"], path["nudges"]) == (
        "pack-reviewers",
        "event",
        3,
    )
    assert overall["playbook"] is None


def test_a_report_says_what_it_needs(tmp_path: Path):
    result = _referloop("report", env=_env())

    assert result.returncode == 2
    assert "--events" in result.stderr


def test_a_report_of_an_export_fetched_from_mixpanel(tmp_path: Path):
    """--from and --to fetch the raw export with the worker's Mixpanel settings;
    --keep keeps it, and it reports as the same file would."""
    path = export(tmp_path / "e.jsonl", small_dataset())
    kept = tmp_path / "kept.jsonl"
    with Simulator([MixpanelSim()]) as sim:
        mixpanel = cast(MixpanelSim, sim.vendor("mixpanel"))
        mixpanel.seed_export(path)
        env = _env(**vendor_env(sim))
        days = ("--from", "2026-10-20", "--to", "2026-11-30")

        result = _referloop(
            "report", *days, "--keep", str(kept), "--format", "json", env=env
        )
        denied = _referloop(
            "report", *days, env={**env, "MIXPANEL_SERVICE_SECRET": "wrong-one"}
        )

    assert result.returncode == 0, result.stderr
    # Asked for only the events the report reads: not `Activated`, which the
    # example workspace does not name, nor the one event after 2026-11-30.
    assert "Fetched 17 events from Mixpanel" in result.stderr
    (playbook,) = json.loads(result.stdout)["playbooks"]
    assert playbook["nudged"]["k_factor"] == 0.25
    assert len(kept.read_text().splitlines()) == len(small_dataset()) - 2
    assert denied.returncode != 0
    assert "MIXPANEL_SERVICE_ACCOUNT" in denied.stderr
    assert "wrong-one" not in denied.stderr + denied.stdout


def test_a_fetch_needs_both_days(tmp_path: Path):
    result = _referloop("report", "--from", "2026-11-01", env=_env())

    assert result.returncode == 2
    assert "--from and --to" in result.stderr


def test_fetch_events_writes_the_export_a_backtest_reads(tmp_path: Path):
    path = export(tmp_path / "e.jsonl", small_dataset())
    target = tmp_path / "fetched.jsonl"
    with Simulator([MixpanelSim()]) as sim:
        cast(MixpanelSim, sim.vendor("mixpanel")).seed_export(path)
        env = _env(**vendor_env(sim))
        days = ("--from", "2026-10-20", "--to", "2026-11-30")

        result = _referloop(
            "fetch-events", str(target), *days, "--event", "invite_sent", env=env
        )

    assert result.returncode == 0, result.stderr
    assert "Fetched 4 events" in result.stdout
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert {line["event"] for line in lines} == {"invite_sent"}
    assert len(lines) == 4


def test_a_report_of_an_export_fetched_from_amplitude(tmp_path: Path):
    """With only Amplitude's keys set, --from and --to fetch Amplitude's export,
    which reports as the same events exported by Mixpanel do."""
    path = export(tmp_path / "e.jsonl", small_dataset())
    events = [as_amplitude(json.loads(line)) for line in path.read_text().splitlines()]
    with Simulator([AmplitudeCohortsSim()]) as sim:
        cast(AmplitudeCohortsSim, sim.vendor("amplitude-dashboard")).seed_export(events)
        env = _env(**vendor_env(sim))
        days = ("--from", "2026-10-20", "--to", "2026-11-30")

        result = _referloop("report", *days, "--format", "json", env=env)
        filtered = _referloop(
            "fetch-events",
            str(tmp_path / "f.jsonl"),
            *days,
            "--vendor",
            "amplitude",
            "--event",
            "invite_sent",
            env=env,
        )

    assert result.returncode == 0, result.stderr
    assert "from Amplitude" in result.stderr
    (playbook,) = json.loads(result.stdout)["playbooks"]
    assert playbook["nudged"]["k_factor"] == 0.25
    assert filtered.returncode == 2
    assert "leave out --event" in filtered.stderr

"""`referloop rewards`: pending grants listed, approved and rejected by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.ledger import Outcome
from orchestrator.rewards import grant_id
from orchestrator.state import Store
from tests.orchestrator.loop_rig import PLAYBOOK_ID, make_rig

ROOT = Path(__file__).resolve().parents[2]


def _referloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_pending_grants_are_approved_and_rejected_from_the_command_line(
    store: Store, tmp_path: Path, redis_url: str
):
    rig = make_rig(store, tmp_path, approval="manual")
    key = rig.nudge("u-ref")
    rig.event(
        "invite_accepted",
        "u-new",
        props={"token": rig.token("u-ref", key)},
        email="grace@example.com",
        first_name="Grace",
    )
    rig.event("invitee_activated", "u-new")
    rig.later(days=8)
    rig.settle()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "REFERLOOP_NAMESPACE": store.namespace,
        "REFERLOOP_PLAYBOOKS": str(tmp_path / "playbooks"),
    }
    referrer = grant_id(PLAYBOOK_ID, "referrer", "u-new")
    invitee = grant_id(PLAYBOOK_ID, "invitee", "u-new")

    table = _referloop("rewards", "pending", env=env)
    listed = json.loads(
        _referloop("rewards", "pending", "--format", "json", env=env).stdout
    )
    approved = _referloop("rewards", "approve", referrer, "--by", "marta", env=env)
    rejected = _referloop(
        "rewards",
        "reject",
        invitee,
        "--by",
        "marta",
        "--reason",
        "test account",
        env=env,
    )
    again = _referloop("rewards", "approve", invitee, "--by", "marta", env=env)
    after = _referloop("rewards", "pending", env=env)
    mine = _referloop("rewards", "list", "--user", "u-ref", env=env)

    assert table.returncode == 0, table.stderr
    assert referrer in table.stdout
    assert "awaiting approval" in table.stdout
    assert {row["id"] for row in listed} == {referrer, invitee}
    assert approved.returncode == 0, approved.stderr
    assert "approved; it is being given" in approved.stdout
    assert rejected.returncode == 0, rejected.stderr
    assert again.returncode == 1
    assert "it is rejected already" in again.stdout
    assert "No grant awaits approval." in after.stdout
    assert "granting" in mine.stdout
    for output in (table, approved, rejected, after, mine):
        assert "Grace" not in output.stdout + output.stderr
        assert "example.com" not in output.stdout + output.stderr
    entry = rig.grant_of(referrer)
    assert entry.outcome == Outcome.SCHEDULED
    assert entry.fields["approved_by"] == "marta"


def test_the_rewards_commands_say_what_they_need(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    result = _referloop("rewards", "pending", env=env)

    assert result.returncode == 2
    assert "set REDIS_URL" in result.stderr

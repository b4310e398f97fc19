"""Worker process parts: playbook reloads that keep the last good set, and the
`referloop ledger` command that ops read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine_rig import make_rig

from orchestrator import process

ROOT = Path(__file__).resolve().parents[2]


def _referloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_broken_change_keeps_the_last_good_playbooks_running(store, tmp_path):
    """While workers run, a playbook edited into something broken is reported
    and the last good set stays in use; a fixed one is picked up."""
    rig = make_rig(store, tmp_path)
    folder = tmp_path / "playbooks"
    good = rig.engine.catalog
    stop = process.watch(rig.engine, folder, every_s=0.05)
    try:
        playbook = folder / "pack-reviewers.yaml"
        original = playbook.read_text()
        playbook.write_text(original.replace("holdout: 0%", "holdout: lots"))
        time.sleep(0.5)
        kept = rig.engine.catalog
        playbook.write_text(original.replace("priority: 0", "priority: 7"))
        time.sleep(0.5)
        fixed = rig.engine.catalog
    finally:
        stop.set()

    assert kept is good
    assert fixed.playbooks[0].playbook.priority == 7


def test_the_ledger_command_shows_a_users_deliveries_without_personal_data(
    store, tmp_path, redis_url
):
    """`referloop ledger --user` lists keys, playbooks, outcomes and reasons; the
    user's name and email appear nowhere."""
    rig = make_rig(store, tmp_path)
    occurrence = rig.event("u-7", first_name="Imogen", email="imogen@example.com")
    key = rig.engine.decide(occurrence)[0]
    rig.engine.deliver(key)
    env = {**os.environ, "REDIS_URL": redis_url, "REFERLOOP_NAMESPACE": store.namespace}

    table = _referloop("ledger", "--user", "u-7", env=env)
    raw = _referloop("ledger", "--key", key, "--format", "json", env=env)

    assert table.returncode == 0, table.stderr
    assert key in table.stdout
    assert "pack-reviewers" in table.stdout
    assert "sent" in table.stdout
    assert json.loads(raw.stdout)[0]["outcome"] == "sent"
    for private in ("Imogen", "imogen@example.com"):
        assert private not in table.stdout + raw.stdout


def test_the_ledger_command_needs_redis_and_says_so():
    """With no REDIS_URL there is no ledger to read: one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    result = _referloop("ledger", "--dead", env=env)

    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: the ledger lives in Redis")
    assert "Traceback" not in result.stderr

"""`referloop run` and `referloop plan`: the whole loop in one process, on the
shipped examples, as a newcomer runs it."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from integrations.filesource import FileSource
from orchestrator import local
from orchestrator.loader import load
from orchestrator.tokens import InviteSigner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "triggers.jsonl"
SIGNING_KEY = "s3cret-signing-key-for-the-privacy-test-0123456789"


def _referloop(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _count(label: str, output: str) -> int:
    match = re.search(rf"{re.escape(label)}\s+(\d+)", output)
    assert match, f"no `{label}` in:\n{output}"
    return int(match.group(1))


def test_run_sends_to_the_outbox_and_says_nothing_is_durable(tmp_path):
    """The README's first command: every delivery counted as sent is one line of
    the outbox, bad records are reported, and the run says it is not durable."""
    outbox = tmp_path / "nudges.jsonl"

    result = _referloop("run", "--outbox", str(outbox))

    assert result.returncode == 0, result.stderr
    sent = _count("deliveries sent to the outbox", result.stdout)
    lines = outbox.read_text().splitlines()
    assert sent > 0
    assert len(lines) == sent
    assert "nothing is durable" in result.stdout
    assert "rejected triggers.jsonl:" in result.stdout
    assert all(json.loads(line)["delivery_key"].startswith("dk_") for line in lines)


def test_plan_decides_the_same_and_writes_nothing(tmp_path):
    """A dry run makes the same decisions as a run and sends nothing."""
    result = _referloop("plan", cwd=ROOT)

    assert result.returncode == 0, result.stderr
    assert _count("deliveries would be sent", result.stdout) > 0
    assert _count("held back by a guardrail", result.stdout) > 0


def test_a_run_logs_no_email_and_no_signing_key(tmp_path, caplog):
    """With every logger at DEBUG, a full run's logs hold ids, never the emails
    of the example users nor the key that signs invite links."""
    catalog = load([ROOT / "playbooks"])
    emails = set(re.findall(r"[\w.+-]+@[\w.-]+\.\w+", EXAMPLES.read_text()))
    caplog.set_level(logging.DEBUG)

    triggers = FileSource(EXAMPLES)
    report = local.run(
        catalog,
        triggers,
        {"*": triggers},
        outbox=tmp_path / "nudges.jsonl",
        signer=InviteSigner([SIGNING_KEY]),
    )

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert report.count("sent") > 0
    assert emails
    assert [email for email in emails if email in logged] == []
    assert SIGNING_KEY not in logged


def test_plan_reads_cohorts_from_the_configured_sources(tmp_path):
    """`plan --configured` polls the cohorts the playbooks name through the
    sources the environment configures, as a worker would, and sends nothing."""
    env = {**os.environ, "REFERLOOP_SOURCE_FILE": str(EXAMPLES)}
    env.pop("REDIS_URL", None)

    result = _referloop("plan", "--configured", env=env)

    assert result.returncode == 0, result.stderr
    assert _count("triggers seen", result.stdout) > 0
    assert "collaboration-thanks" in result.stdout


def test_plan_with_no_configured_source_says_what_is_missing():
    """No source configured: one line and exit 2, not an empty plan."""
    env = {k: v for k, v in os.environ.items() if k != "REFERLOOP_SOURCE_FILE"}

    result = _referloop("plan", "--configured", env=env)

    assert result.returncode == 2
    assert result.stderr.startswith("error: no cohort source is configured")

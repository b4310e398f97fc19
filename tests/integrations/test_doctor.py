"""`referloop doctor`, run as ops run it, against the simulated vendors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integrations import vendors
from orchestrator.model import Workspace
from simulator import Simulator, all_vendors
from simulator.env import vendor_env

ROOT = Path(__file__).resolve().parents[2]
VENDOR_VARIABLES = {
    name
    for settings in vendors.SETTINGS.values()
    for name in (
        *settings.required,
        *settings.optional,
        *(n for group in settings.alternatives for n in group),
    )
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(all_vendors()) as running:
        yield running


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A playbooks folder whose workspace file leaves every vendor at its defaults
    (the simulator answers as the US region)."""
    folder = tmp_path_factory.mktemp("playbooks")
    (folder / "referloop.yaml").write_text("name: doctor test\n")
    return folder


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in VENDOR_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "doctor", "--format", "json", *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_vendor_set_up_right_passes(sim: Simulator, workspace: Path) -> None:
    done = doctor(vendor_env(sim), "--playbooks", str(workspace))

    checks = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert {c["vendor"] for c in checks} == set(vendors.SETTINGS)
    assert all(c["ok"] for c in checks)
    assert len([c for c in checks if c["what"] != "settings"]) >= 6


def test_a_wrong_key_fails_and_names_the_setting_never_the_secret(
    sim: Simulator,
) -> None:
    env = vendor_env(sim) | {"BRAZE_API_KEY": "braze-key-typed-wrong-7731"}

    done = doctor(env)

    braze = [c for c in json.loads(done.stdout) if c["vendor"] == "braze"]
    failed = [c for c in braze if not c["ok"]]
    assert done.returncode == 1
    assert failed
    assert "BRAZE_API_KEY" in failed[0]["detail"]
    for secret in (env["BRAZE_API_KEY"], env["INTERCOM_ACCESS_TOKEN"]):
        assert secret not in done.stdout + done.stderr


def test_a_half_configured_vendor_names_what_is_missing() -> None:
    done = doctor({"CUSTOMERIO_SITE_ID": "site-1", "MIXPANEL_SERVICE_ACCOUNT": "sa"})

    checks = {c["vendor"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 1
    assert "CUSTOMERIO_TRACK_API_KEY" in checks["customerio"]["detail"]
    assert "MIXPANEL_SERVICE_SECRET" in checks["mixpanel"]["detail"]
    assert checks["braze"] == {
        "vendor": "braze",
        "what": "settings",
        "ok": True,
        "detail": vendors.NOT_CONFIGURED,
    }


def test_nothing_configured_is_not_a_failure() -> None:
    done = doctor({})

    assert done.returncode == 0
    assert all(c["detail"] == vendors.NOT_CONFIGURED for c in json.loads(done.stdout))


def test_one_vendor_can_be_checked_alone(sim: Simulator) -> None:
    done = doctor(vendor_env(sim), "--vendor", "intercom")

    assert done.returncode == 0
    assert {c["vendor"] for c in json.loads(done.stdout)} == {"intercom"}


def test_credentials_of_another_region_are_caught(sim: Simulator) -> None:
    """The example workspace puts Customer.io in the EU; the simulated account
    answers as a US one, so the doctor says which region to set."""
    done = doctor(vendor_env(sim), "--vendor", "customerio")

    failed = [c for c in json.loads(done.stdout) if not c["ok"]]
    assert done.returncode == 1
    assert "region" in failed[0]["detail"]


def test_an_unknown_vendor_is_a_usage_error() -> None:
    done = doctor({}, "--vendor", "hubspot")

    assert done.returncode == 2
    assert "no vendor called hubspot" in done.stderr


def test_the_table_shows_a_failure_plainly(sim: Simulator) -> None:
    env = vendor_env(sim) | {"BRAZE_API_KEY": "wrong-token-0001"}
    clean = {k: v for k, v in os.environ.items() if k not in VENDOR_VARIABLES}

    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "doctor", "--vendor", "braze"],
        env={**clean, **env, "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 1
    assert "FAIL" in done.stdout
    assert "wrong-token-0001" not in done.stdout


def test_a_worker_leaves_out_a_half_configured_vendor_and_says_why() -> None:
    built = vendors.build(
        Workspace(), {"BRAZE_REST_URL": "x", "BRAZE_API_KEY": ""}, None
    )
    assert built.senders == {}

    built = vendors.build(Workspace(), {"CUSTOMERIO_SITE_ID": "s"}, None)
    assert "customerio" not in built.senders
    assert "CUSTOMERIO_TRACK_API_KEY" in built.problems["customerio"]

"""Amplitude built from the workspace and the environment, and `referloop doctor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integrations import vendors
from integrations.amplitude import AmplitudeSink
from integrations.base import LoopEvent
from integrations.mixpanel import MixpanelAdapter
from orchestrator.model import Workspace
from simulator import Simulator, all_vendors
from simulator.amplitude import API_KEY, AmplitudeSim
from simulator.env import vendor_env

SENT_AT = datetime(2026, 5, 1, tzinfo=UTC)
DOCTOR = [sys.executable, "-m", "orchestrator", "doctor", "--format", "json"]
ROOT = Path(__file__).resolve().parents[3]
VARIABLES = {
    name
    for settings in vendors.SETTINGS.values()
    for name in (
        *settings.required,
        *settings.optional,
        *(n for group in settings.alternatives for n in group),
    )
}


@pytest.fixture(scope="module")
def everything() -> Iterator[Simulator]:
    with Simulator(all_vendors()) as running:
        yield running


def doctor(env: dict[str, str]) -> list[dict[str, object]]:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run(
        [*DOCTOR, "--vendor", "amplitude"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert API_KEY not in done.stdout + done.stderr
    checks: list[dict[str, object]] = json.loads(done.stdout)
    return checks


def amplitude_only(sim: Simulator) -> dict[str, str]:
    env = vendor_env(sim)
    return {k: v for k, v in env.items() if k.startswith("AMPLITUDE_")}


def test_the_api_key_alone_builds_the_sink(everything: Simulator) -> None:
    built = vendors.build(Workspace(), amplitude_only(everything), None)
    try:
        assert isinstance(built.sink, AmplitudeSink)
        assert built.problems == {}
    finally:
        built.close()


def test_with_mixpanel_too_every_event_goes_to_both(everything: Simulator) -> None:
    everything.reset()
    built = vendors.build(Workspace(), vendor_env(everything), None)
    event = LoopEvent("pack:ask:user-1:1", "referloop nudge sent", "user-1", SENT_AT)
    try:
        assert built.sink is not None
        assert set(built.sinks) == {"mixpanel", "amplitude"}
        assert isinstance(built.sinks["mixpanel"], MixpanelAdapter)
        built.sink.record([event])
    finally:
        built.close()

    assert len(everything.received("amplitude", "/2/httpapi")) == 1
    assert len(everything.received("mixpanel", "/import")) == 1


def test_the_secret_key_alone_does_not_configure_amplitude() -> None:
    assert "amplitude" not in vendors.configured({"AMPLITUDE_SECRET_KEY": "s"})


def test_doctor_checks_the_key_with_an_upload_of_no_events(
    everything: Simulator,
) -> None:
    everything.reset()
    kept = everything.vendor("amplitude")
    assert isinstance(kept, AmplitudeSim)
    kept.clear()

    checks = doctor(amplitude_only(everything))

    [upload] = everything.received("amplitude", "/2/httpapi")
    assert upload.json["events"] == []
    assert [(c["what"], c["ok"]) for c in checks] == [
        ("settings", True),
        ("secret key (cohort downloads)", True),
        ("api key", True),
    ]
    assert kept.kept == {}


def test_doctor_names_the_setting_of_a_refused_key(everything: Simulator) -> None:
    env = amplitude_only(everything) | {"AMPLITUDE_API_KEY": "amp-wrong-key-7731"}

    checks = doctor(env)

    failed = [c for c in checks if not c["ok"]]
    # The key is refused by the upload and by the cohort list alike.
    assert [c["what"] for c in failed] == ["secret key (cohort downloads)", "api key"]
    assert all("AMPLITUDE_API_KEY" in str(c["detail"]) for c in failed)
    assert "amp-wrong-key-7731" not in json.dumps(checks)


def test_doctor_names_the_setting_of_a_refused_secret_key(
    everything: Simulator,
) -> None:
    env = amplitude_only(everything) | {"AMPLITUDE_SECRET_KEY": "amp-wrong-secret-19"}

    checks = doctor(env)

    [failed] = [c for c in checks if not c["ok"]]
    assert failed["what"] == "secret key (cohort downloads)"
    assert "AMPLITUDE_SECRET_KEY" in str(failed["detail"])
    assert "amp-wrong-secret-19" not in json.dumps(checks)


def test_doctor_says_when_amplitude_is_unreachable() -> None:
    env = {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_HTTP_URL": "http://127.0.0.1:9"}

    checks = doctor(env)

    [failed] = [c for c in checks if not c["ok"]]
    assert "unreachable" in str(failed["detail"])

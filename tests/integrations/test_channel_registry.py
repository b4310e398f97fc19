"""The registry: built-in channels, adapters from installed packages, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations import channel, channel_names
from integrations.braze import BrazeChannel, BrazeReference
from integrations.customerio import CustomerIOReference
from integrations.intercom import IntercomReference
from integrations.outbox import OutboxChannel
from integrations.registry import ENTRY_POINT_GROUP, reference_models
from integrations.webhook import WebhookReference
from orchestrator.errors import ConfigurationError

EXTRA_ADAPTER = """
from typing import ClassVar

from integrations.base import VendorRequest


class EchoChannel:
    name: ClassVar[str] = "echo"
    reference_model = None

    def __init__(self, url: str = "https://echo.example.com") -> None:
        self.url = url

    def build_request(self, nudge):
        return VendorRequest(method="POST", url=self.url, json={"body": nudge.body})
"""


def _install(site: Path, entry_points: dict[str, str]) -> None:
    """Lay out a distribution on `site` the way pip would, with its entry points."""
    info = site / "referloop_extra-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: referloop-extra\n")
    lines = [f"{name} = {target}" for name, target in entry_points.items()]
    group = "\n".join([f"[{ENTRY_POINT_GROUP}]", *lines, ""])
    (info / "entry_points.txt").write_text(group)


def test_every_built_in_channel_is_listed() -> None:
    """The four built-ins are there, whatever else is installed."""
    names = channel_names()

    assert {"outbox", "customerio", "braze", "intercom", "webhook"} <= set(names)
    assert names == sorted(names)


def test_a_channel_is_built_with_its_settings() -> None:
    """Settings go to the channel's constructor."""
    built = channel("braze", rest_url="https://rest.fra-02.braze.eu")

    assert isinstance(built, BrazeChannel)
    assert built.rest_url == "https://rest.fra-02.braze.eu"


def test_an_unknown_channel_suggests_the_closest_name() -> None:
    """A typo in a channel name gets a did-you-mean."""
    with pytest.raises(ConfigurationError) as raised:
        channel("brazee")

    assert "unknown channel `brazee`" in str(raised.value)
    assert "did you mean `braze`?" in str(raised.value)


def test_an_unknown_setting_is_named_without_values() -> None:
    """The operator learns which setting is wrong; its value is not repeated."""
    with pytest.raises(ConfigurationError) as raised:
        channel("intercom", api_key="fake-secret-7f3a9c")

    assert "api_key" in str(raised.value)
    assert "fake-secret-7f3a9c" not in str(raised.value)


def test_reference_models_cover_the_channels_that_take_one() -> None:
    """The outbox takes no reference, so it has no model."""
    assert reference_models() == {
        "customerio": CustomerIOReference,
        "braze": BrazeReference,
        "intercom": IntercomReference,
        "webhook": WebhookReference,
    }


def test_an_installed_adapter_is_found_and_built(tmp_path, monkeypatch) -> None:
    """A package's `referloop.adapters` entry point adds a channel."""
    (tmp_path / "referloop_echo.py").write_text(EXTRA_ADAPTER)
    _install(tmp_path, {"echo": "referloop_echo:EchoChannel"})
    monkeypatch.syspath_prepend(str(tmp_path))

    built = channel("echo", url="https://echo.example.com/v2")

    assert "echo" in channel_names()
    assert built.name == "echo"
    assert built.url == "https://echo.example.com/v2"


def test_a_broken_adapter_is_named_when_used(tmp_path, monkeypatch) -> None:
    """A bad entry point is listed, and fails with its name only when asked for."""
    _install(tmp_path, {"broken": "referloop_missing_module:Nothing"})
    monkeypatch.syspath_prepend(str(tmp_path))

    names = channel_names()
    with pytest.raises(ConfigurationError) as raised:
        channel("broken")

    assert "broken" in names
    assert "adapter `broken`" in str(raised.value)
    assert "referloop_missing_module:Nothing" in str(raised.value)


def test_a_built_in_name_always_means_the_built_in(tmp_path, monkeypatch) -> None:
    """An installed package cannot replace a built-in channel by reusing its name."""
    _install(tmp_path, {"outbox": "referloop_missing_module:Nothing"})
    monkeypatch.syspath_prepend(str(tmp_path))

    built = channel("outbox", path=tmp_path / "nudges.jsonl")

    assert isinstance(built, OutboxChannel)

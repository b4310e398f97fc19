"""The registry of channels: the built-in ones, then any installed adapter.

An installed package adds a channel by declaring an entry point in the group
`referloop.adapters` (`name = "package.module:ChannelClass"`). Entry points are only
loaded when their channel is asked for, so a broken adapter fails where it is used,
with its name. A built-in name always means the built-in channel.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from integrations.base import Channel, Reference
from integrations.braze import BrazeChannel, BrazeSender
from integrations.customerio import CustomerIOChannel
from integrations.intercom import IntercomChannel, IntercomSender
from integrations.outbox import OutboxChannel
from integrations.webhook import WebhookChannel
from orchestrator.errors import ConfigurationError
from orchestrator.problems import did_you_mean

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "referloop.adapters"

ChannelFactory = Callable[..., Channel]

_BUILT_INS: dict[str, type[Channel]] = {
    built_in.name: built_in
    for built_in in (
        OutboxChannel,
        CustomerIOChannel,
        BrazeChannel,
        IntercomChannel,
        WebhookChannel,
    )
}
# The classes that send for each built-in vendor channel (the outbox is local).
_BUILT_IN_SENDERS: dict[str, type[Any]] = {
    "customerio": CustomerIOChannel,
    "braze": BrazeSender,
    "intercom": IntercomSender,
    "webhook": WebhookChannel,
}


def channel(name: str, **settings: Any) -> Channel:
    """Return the channel called `name`, built with `settings`.

    Raises:
        ConfigurationError: no channel has that name, its adapter cannot be loaded,
            or it takes no such settings.
    """
    factory = _factory(name)
    _check_settings(name, factory, settings)

    built = factory(**settings)
    if not isinstance(built, Channel):
        raise ConfigurationError(
            f"adapter `{name}` does not build a channel: it lacks `name`, "
            "`reference_model` or `build_request`"
        )
    return built


def channel_names() -> list[str]:
    """Return the names of every channel, built-in and installed, sorted."""
    return sorted(_BUILT_INS.keys() | _adapter_entry_points().keys())


def sender_class(name: str) -> type[Any] | None:
    """The class that sends through vendor channel `name`, or None for a channel
    that only builds requests (or the local outbox).

    An installed adapter's class sends when it has `send`.

    Raises:
        ConfigurationError: no channel has that name, or its adapter cannot load.
    """
    if name in _BUILT_INS:
        return _BUILT_IN_SENDERS.get(name)
    loaded = _factory(name)
    return loaded if isinstance(loaded, type) and hasattr(loaded, "send") else None


def reference_models() -> dict[str, type[Reference]]:
    """Return the reference model of each built-in channel that has one, by name.

    The playbook loader validates `nudge.<channel>` with these, and the JSON Schema
    for editors is generated from them.
    """
    return {
        name: built_in.reference_model
        for name, built_in in _BUILT_INS.items()
        if built_in.reference_model is not None
    }


def _factory(name: str) -> ChannelFactory:
    if name in _BUILT_INS:
        return _BUILT_INS[name]

    entry_point = _adapter_entry_points().get(name)
    if entry_point is None:
        hint = did_you_mean(name, channel_names())
        raise ConfigurationError(f"unknown channel `{name}`{hint}")
    return _load(entry_point)


def _load(entry_point: EntryPoint) -> ChannelFactory:
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise ConfigurationError(
            f"adapter `{entry_point.name}` ({entry_point.value}) in "
            f"`{ENTRY_POINT_GROUP}` cannot be loaded: {type(exc).__name__}"
        ) from exc

    if not isinstance(loaded, type):
        raise ConfigurationError(
            f"adapter `{entry_point.name}` ({entry_point.value}) in "
            f"`{ENTRY_POINT_GROUP}` is not a class"
        )
    logger.debug("Loaded adapter %s from %s.", entry_point.name, entry_point.value)
    return loaded


def _adapter_entry_points() -> dict[str, EntryPoint]:
    return _entry_points_on(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _entry_points_on(search_path: tuple[str, ...]) -> dict[str, EntryPoint]:
    """The adapters installed on `search_path`.

    Scanning installed packages takes milliseconds and the loader asks once per
    nudge, so the answer is kept for as long as the import path stays the same.
    """
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def _check_settings(
    name: str, factory: ChannelFactory, settings: dict[str, Any]
) -> None:
    # Bind before calling, so that the error names settings and never their values.
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ConfigurationError(
            f"channel `{name}` cannot take the settings {sorted(settings)}: {exc}"
        ) from exc

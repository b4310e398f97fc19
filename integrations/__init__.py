"""Vendor adapters: one module per vendor, a shared protocol and a registry."""

from integrations.base import (
    Channel,
    Recipient,
    Reference,
    RenderedNudge,
    VendorRequest,
)
from integrations.registry import channel, channel_names

__all__ = [
    "Channel",
    "Recipient",
    "Reference",
    "RenderedNudge",
    "VendorRequest",
    "channel",
    "channel_names",
]

"""Vendor adapters: one module per vendor, a shared protocol and a registry."""

from integrations.base import (
    Channel,
    CohortSource,
    EventSink,
    EventSource,
    GrantRequest,
    LoopEvent,
    Member,
    ProductEvent,
    Recipient,
    Reference,
    Rejected,
    RenderedNudge,
    RewardTarget,
    Sender,
    Sent,
    VendorRequest,
)
from integrations.registry import channel, channel_names

__all__ = [
    "Channel",
    "CohortSource",
    "EventSink",
    "EventSource",
    "GrantRequest",
    "LoopEvent",
    "Member",
    "ProductEvent",
    "Recipient",
    "Reference",
    "Rejected",
    "RenderedNudge",
    "RewardTarget",
    "Sender",
    "Sent",
    "VendorRequest",
    "channel",
    "channel_names",
]

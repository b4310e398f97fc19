"""A synthetic population with planted loop parameters, as a Mixpanel raw export.

Each user of a playbook is decided once: held out with the holdout share, else
nudged. A nudged user invites with probability `invite_nudged`, a held-out one
with `invite_holdout` (the nudge's effect is the difference); an inviter sends
1 + Poisson(`extra_invites`) invites; each invite is accepted with `acceptance`
and each accepted invitee activates with `activation`. Every user activated
before their decision, so loop time is defined for each inviter whose invite
was accepted.

The planted K-factor of an arm is therefore

    invite probability x (1 + extra_invites) x acceptance x activation

and `Planted` says it for both arms. The same seed gives the same file.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

START = datetime(2026, 9, 7, 9, 0, tzinfo=UTC)  # a Monday


@dataclass(frozen=True)
class Planted:
    """The parameters a population is drawn with."""

    users: int = 10_000
    holdout: float = 0.1
    invite_nudged: float = 0.12
    invite_holdout: float = 0.08
    extra_invites: float = 0.5
    acceptance: float = 0.6
    activation: float = 0.5
    playbook: str = "pack-reviewers"
    channels: tuple[str, ...] = ("intercom", "braze")
    variants: tuple[str, ...] = ("a", "b")
    weeks: int = 4

    def k_factor(self, invite_probability: float) -> float:
        return (
            invite_probability
            * (1 + self.extra_invites)
            * self.acceptance
            * self.activation
        )

    @property
    def k_nudged(self) -> float:
        return self.k_factor(self.invite_nudged)

    @property
    def k_holdout(self) -> float:
        return self.k_factor(self.invite_holdout)


def events(planted: Planted, seed: int) -> Iterator[dict[str, Any]]:
    """The population's events, in the Export API's shape, roughly in time order
    per user (an export is not sorted either)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    for n in range(planted.users):
        user = f"{planted.playbook}-u{n}"
        account = f"acct-{n % 97}"
        decided = START + timedelta(seconds=rng.uniform(0, planted.weeks * 7 * 86_400))
        activated = decided - timedelta(days=rng.uniform(1, 60))
        yield _event("Activated", activated, user, account)
        held_out = rng.random() < planted.holdout
        channel = planted.channels[n % len(planted.channels)]
        common = {
            "playbook": planted.playbook,
            "step": "nudge",
            "channel": channel,
            "variant": planted.variants[n % len(planted.variants)],
        }
        if held_out:
            yield _event(
                "referloop nudge held back",
                decided,
                user,
                account,
                reason="holdout",
                **common,
            )
            chance = planted.invite_holdout
        else:
            yield _event("referloop nudge sent", decided, user, account, **common)
            chance = planted.invite_nudged
        if rng.random() >= chance:
            continue
        for k in range(1 + _poisson(rng, planted.extra_invites)):
            sent = decided + timedelta(hours=rng.uniform(1, 72))
            yield _event("invite_sent", sent, user, account, invite_id=f"{user}-i{k}")
            if rng.random() >= planted.acceptance:
                continue
            invitee = f"{user}-i{k}"
            accepted = sent + timedelta(hours=rng.uniform(1, 96))
            yield _event(
                "invite_accepted", accepted, invitee, account, referrer_id=user
            )
            if rng.random() < planted.activation:
                active = accepted + timedelta(hours=rng.uniform(1, 120))
                yield _event(
                    "invitee_activated", active, invitee, account, referrer_id=user
                )


def write(planted: Planted, seed: int, path: Path) -> int:
    """Write the population's export to `path`; return how many events."""
    with path.open("w", encoding="utf-8") as out:
        return write_to(planted, seed, out)


def write_to(planted: Planted, seed: int, out: TextIO) -> int:
    count = 0
    for event in events(planted, seed):
        out.write(json.dumps(event, separators=(",", ":")))
        out.write("\n")
        count += 1
    return count


def write_amplitude(planted: Planted, seed: int, path: Path) -> int:
    """The same population's events as Amplitude's Export API writes them (one
    JSON object a line); return how many."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for event in events(planted, seed):
            out.write(json.dumps(as_amplitude(event), separators=(",", ":")))
            out.write("\n")
            count += 1
    return count


def as_amplitude(event: dict[str, Any]) -> dict[str, Any]:
    """A Mixpanel-shaped export event in the shape of Amplitude's export:
    `event_type`, `user_id`, `event_time` in UTC, `event_properties`."""
    properties = dict(event["properties"])
    at = datetime.fromtimestamp(properties.pop("time"), UTC)
    user = properties.pop("distinct_id")
    insert_id = properties.pop("$insert_id", None)
    return {
        "event_type": event["event"],
        "user_id": user,
        "event_time": at.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "$insert_id": insert_id,
        "event_properties": properties,
        "user_properties": {},
    }


def _event(
    name: str, at: datetime, user: str, account: str, **properties: Any
) -> dict[str, Any]:
    return {
        "event": name,
        "properties": {
            "time": int(at.timestamp()),
            "distinct_id": user,
            "$insert_id": f"{name}:{user}:{int(at.timestamp())}",
            "account_id": account,
            **properties,
        },
    }


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of extra invites."""
    if mean <= 0:
        return 0
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k

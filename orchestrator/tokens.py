"""Signed, expiring invite tokens carried by the invite links of nudges.

A token names the referrer, the account, the playbook, the variant and the
delivery, so that an accepted invite can be credited. It is signed with the newest
of the signing keys and verified with any of them, which lets keys rotate: add a
new key at the end of `REFERLOOP_SIGNING_KEYS`, and drop the old one once the
longest invite expiry has passed.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from orchestrator.errors import ConfigurationError, ReferloopError

KEYS_SETTING = "REFERLOOP_SIGNING_KEYS"
MIN_KEY_CHARS = 32
SALT = "referloop.invite.v1"
_FIELDS = {
    "referrer": "r",
    "account": "a",
    "playbook": "p",
    "variant": "v",
    "delivery_key": "k",
    "share": "s",
    "expires_at": "x",
}


class InvalidToken(ReferloopError):
    """The token was not signed by any current key, or was altered."""


class ExpiredToken(InvalidToken):
    """The token was genuine but its invite has expired."""


@dataclass(frozen=True)
class InviteClaims:
    """What an invite token says; ids only, never personal data."""

    referrer: str
    account: str
    playbook: str
    variant: str
    delivery_key: str
    share: str
    expires_at: int

    def is_expired(self, now_s: float) -> bool:
        return now_s >= self.expires_at


class InviteSigner:
    """Signs and verifies invite tokens with a list of keys, newest last."""

    def __init__(self, keys: Sequence[str], *, ephemeral: bool = False) -> None:
        usable = [key for key in keys if key]
        if not usable:
            raise ConfigurationError(f"{KEYS_SETTING} is not set")
        if any(len(key) < MIN_KEY_CHARS for key in usable):
            raise ConfigurationError(
                f"every key in {KEYS_SETTING} needs {MIN_KEY_CHARS} characters or more"
            )
        self.is_ephemeral = ephemeral
        self._serializer = URLSafeSerializer(usable, salt=SALT)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InviteSigner:
        value = (os.environ if env is None else env).get(KEYS_SETTING, "")
        return cls([key.strip() for key in value.split(",")])

    @classmethod
    def throwaway(cls) -> InviteSigner:
        """A signer with a random key, for previews: its links verify nowhere else."""
        return cls([secrets.token_urlsafe(32)], ephemeral=True)

    def sign(self, claims: InviteClaims) -> str:
        payload = {_FIELDS[name]: value for name, value in asdict(claims).items()}
        return str(self._serializer.dumps(payload))

    def verify(self, token: str, now_s: float | None = None) -> InviteClaims:
        """Return the claims of a genuine, unexpired token.

        Raises:
            InvalidToken: altered, or signed by no current key.
            ExpiredToken: genuine, but past its expiry.
        """
        try:
            payload = self._serializer.loads(token)
        except BadSignature as exc:
            raise InvalidToken("the invite token is not genuine") from exc

        claims = _claims(payload)
        if claims.is_expired(time.time() if now_s is None else now_s):
            raise ExpiredToken("the invite token has expired")
        return claims


def invite_link(base_url: str, token: str) -> str:
    """The invite URL with the token as its only query parameter."""
    return f"{base_url}?{urlencode({'token': token})}"


def _claims(payload: Any) -> InviteClaims:
    try:
        values = {name: payload[short] for name, short in _FIELDS.items()}
        return InviteClaims(**values)
    except (KeyError, TypeError) as exc:
        raise InvalidToken("the invite token does not carry an invite") from exc

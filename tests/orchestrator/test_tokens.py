"""Invite tokens: signed, expiring, rotating keys, and ids only."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer

from orchestrator.errors import ConfigurationError
from orchestrator.tokens import (
    KEYS_SETTING,
    SALT,
    ExpiredToken,
    InvalidToken,
    InviteClaims,
    InviteSigner,
    invite_link,
)

OLD_KEY = "old-signing-key-0123456789abcdefghijklmn"
NEW_KEY = "new-signing-key-0123456789abcdefghijklmn"
NOW_S = 1_750_000_000
EMAIL = "dana.reviewer@example.com"


def claims(**changes: object) -> InviteClaims:
    base = InviteClaims(
        referrer="u_42",
        account="acct_7",
        playbook="pack-reviewers",
        variant="a",
        delivery_key="dk_0123456789abcdef0123456789abcdef",
        share="review_request",
        expires_at=NOW_S + 3_600,
    )
    return dataclasses.replace(base, **changes)


def test_a_signed_token_verifies_to_the_same_claims() -> None:
    """What goes into the link comes back out of it."""
    signer = InviteSigner([NEW_KEY])

    token = signer.sign(claims())

    assert signer.verify(token, now_s=NOW_S) == claims()


def test_a_token_with_another_payload_under_the_signature_is_refused() -> None:
    """Swapping the claims of a genuine token (say, the referrer) is detected."""
    # Given two genuine tokens for two referrers
    signer = InviteSigner([NEW_KEY])
    mine = signer.sign(claims(referrer="u_42"))
    theirs = signer.sign(claims(referrer="u_99"))

    # When the payload of one is put under the signature of the other
    payload = theirs.rsplit(".", 1)[0]
    signature = mine.rsplit(".", 1)[1]
    forged = f"{payload}.{signature}"

    # Then it does not verify
    with pytest.raises(InvalidToken, match="not genuine"):
        signer.verify(forged, now_s=NOW_S)


@pytest.mark.parametrize("token", ["", "not-a-token", "abc.def", "."])
def test_a_token_that_was_never_signed_is_refused(token: str) -> None:
    """Garbage is refused as not genuine, never raised as something else."""
    with pytest.raises(InvalidToken):
        InviteSigner([NEW_KEY]).verify(token, now_s=NOW_S)


def test_a_token_signed_with_an_unknown_key_is_refused() -> None:
    """A token from another installation does not verify here."""
    token = InviteSigner(["someone-elses-key-0123456789abcdefgh"]).sign(claims())

    with pytest.raises(InvalidToken, match="not genuine"):
        InviteSigner([NEW_KEY]).verify(token, now_s=NOW_S)


def test_an_expired_token_is_refused_as_expired() -> None:
    """Genuine but past `expires_at`: ExpiredToken, from the given clock."""
    signer = InviteSigner([NEW_KEY])
    token = signer.sign(claims(expires_at=NOW_S))

    with pytest.raises(ExpiredToken, match="expired"):
        signer.verify(token, now_s=NOW_S)
    assert signer.verify(token, now_s=NOW_S - 1).expires_at == NOW_S


def test_a_token_signed_with_the_old_key_verifies_after_a_new_key_is_added() -> None:
    """Rotation: links already sent keep working while the old key is listed."""
    token = InviteSigner([OLD_KEY]).sign(claims())

    rotated = InviteSigner([OLD_KEY, NEW_KEY])

    assert rotated.verify(token, now_s=NOW_S) == claims()


def test_new_tokens_are_signed_with_the_newest_key() -> None:
    """After rotation, a new token no longer verifies with the old key alone."""
    token = InviteSigner([OLD_KEY, NEW_KEY]).sign(claims())

    with pytest.raises(InvalidToken):
        InviteSigner([OLD_KEY]).verify(token, now_s=NOW_S)
    assert InviteSigner([NEW_KEY]).verify(token, now_s=NOW_S) == claims()


@pytest.mark.parametrize(
    "keys", [[], [""], ["short-key"], [NEW_KEY, "x" * 31]], ids=str
)
def test_a_missing_or_short_key_is_a_configuration_error(keys: list[str]) -> None:
    """Keys need 32 characters; the error names the setting, never the value."""
    with pytest.raises(ConfigurationError, match=KEYS_SETTING) as caught:
        InviteSigner(keys)

    assert "short-key" not in str(caught.value)


def test_keys_come_from_the_environment_comma_separated_newest_last() -> None:
    """`old,new` in the setting: old tokens verify, new ones use the new key."""
    env = {KEYS_SETTING: f" {OLD_KEY} , {NEW_KEY} "}
    old_token = InviteSigner([OLD_KEY]).sign(claims())

    signer = InviteSigner.from_env(env)

    assert signer.verify(old_token, now_s=NOW_S) == claims()
    assert InviteSigner([NEW_KEY]).verify(signer.sign(claims()), now_s=NOW_S)


def test_an_unset_environment_is_a_configuration_error() -> None:
    """No setting at all is the operator's to fix."""
    with pytest.raises(ConfigurationError, match=KEYS_SETTING):
        InviteSigner.from_env({})


def test_a_throwaway_signer_is_marked_ephemeral() -> None:
    """Previews sign with a random key and say so."""
    signer = InviteSigner.throwaway()

    assert signer.is_ephemeral
    assert signer.verify(signer.sign(claims()), now_s=NOW_S) == claims()


def test_the_token_carries_ids_and_no_email() -> None:
    """The payload holds the seven claims by short name, and nothing personal."""
    token = InviteSigner([NEW_KEY]).sign(claims(referrer="u_42"))

    payload = URLSafeSerializer(NEW_KEY, salt=SALT).loads(token)

    assert set(payload) == {"r", "a", "p", "v", "k", "s", "x"}
    assert EMAIL not in json.dumps(payload)
    assert "@" not in json.dumps(payload)


def test_the_invite_link_carries_only_the_token() -> None:
    """The token is the link's one query parameter."""
    link = invite_link("https://app.example.com/invite", "abc.def")

    assert link == "https://app.example.com/invite?token=abc.def"


@settings(max_examples=200)
@given(
    ids=st.tuples(*[st.text()] * 6),
    lifetime_s=st.integers(min_value=1, max_value=10**9),
)
def test_any_ids_round_trip_through_a_token(
    ids: tuple[str, ...], lifetime_s: int
) -> None:
    """Whatever the ids hold (quotes, dots, emoji), they come back unchanged."""
    referrer, account, playbook, variant, delivery, share = ids
    sent = InviteClaims(
        referrer, account, playbook, variant, delivery, share, NOW_S + lifetime_s
    )
    signer = InviteSigner([OLD_KEY, NEW_KEY])

    received = signer.verify(signer.sign(sent), now_s=NOW_S)

    assert received == sent

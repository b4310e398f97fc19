"""The local outbox: one JSON line per nudge, in a file a developer can read."""

from __future__ import annotations

import json

import pytest

from integrations.base import VendorRequest
from integrations.outbox import OutboxChannel


def test_the_record_holds_the_delivery_and_the_content(nudge, tmp_path) -> None:
    """Everything needed to review a nudge, and which delivery it was."""
    sample = nudge()
    outbox = OutboxChannel(tmp_path / "nudges.jsonl")

    request = outbox.build_request(sample)

    assert request.method == "APPEND"
    assert request.url == (tmp_path / "nudges.jsonl").as_uri()
    assert request.json == {
        "delivery_key": sample.delivery_key,
        "playbook": "pack-reviewers",
        "step": "ask",
        "variant": "a",
        "channel": "outbox",
        "user_id": "user-42",
        "account_id": "acct-7",
        "subject": sample.subject,
        "body": sample.body,
        "data": dict(sample.data),
    }


def test_append_writes_one_line_per_nudge(nudge, tmp_path) -> None:
    """The folder is created; each append adds one JSON line."""
    path = tmp_path / "outbox" / "nudges.jsonl"
    outbox = OutboxChannel(path)

    for key in ("k-1", "k-2"):
        outbox.append(outbox.build_request(nudge(delivery_key=key)))

    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["delivery_key"] for line in lines] == ["k-1", "k-2"]


def test_a_relative_path_gives_an_absolute_url(monkeypatch, tmp_path, nudge) -> None:
    """The default path is relative to where referloop runs; the URL says where."""
    monkeypatch.chdir(tmp_path)

    request = OutboxChannel().build_request(nudge())

    assert request.url == (tmp_path / "outbox" / "nudges.jsonl").as_uri()


def test_append_refuses_a_request_for_elsewhere(tmp_path) -> None:
    """A vendor request handed to the outbox by mistake is not written."""
    outbox = OutboxChannel(tmp_path / "nudges.jsonl")
    request = VendorRequest(method="POST", url="https://example.com", json={})

    with pytest.raises(ValueError, match="not a request for this outbox"):
        outbox.append(request)

    assert not outbox.path.exists()

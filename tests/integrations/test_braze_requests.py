"""Braze requests, in the shapes Braze documents (Braze publishes no OpenAPI).

https://www.braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_campaigns/
https://www.braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_canvases/
"""

from __future__ import annotations

import pydantic
import pytest

from integrations.base import SECURE
from integrations.braze import BrazeChannel, BrazeReference


def test_a_campaign_gets_the_data_as_trigger_properties(nudge) -> None:
    """`POST /campaigns/trigger/send` with one recipient by external id."""
    sample = nudge(BrazeReference(campaign="cmp-1"))

    request = BrazeChannel().build_request(sample)

    assert request.method == "POST"
    assert request.url == "https://rest.iad-01.braze.com/campaigns/trigger/send"
    assert request.headers == {"Authorization": SECURE}
    assert request.json == {
        "campaign_id": "cmp-1",
        "recipients": [
            {
                "external_user_id": "user-42",
                "trigger_properties": {
                    **sample.data,
                    "subject": sample.subject,
                    "body": sample.body,
                },
            }
        ],
    }


def test_a_canvas_gets_the_data_as_context(nudge) -> None:
    """`POST /canvas/trigger/send`, with Canvas `context` per recipient."""
    sample = nudge(BrazeReference(canvas="cnv-1"), subject=None)

    request = BrazeChannel().build_request(sample)

    assert request.url == "https://rest.iad-01.braze.com/canvas/trigger/send"
    assert request.json == {
        "canvas_id": "cnv-1",
        "recipients": [
            {
                "external_user_id": "user-42",
                "context": {**sample.data, "body": sample.body},
            }
        ],
    }


def test_the_rest_url_is_the_workspace_instance(nudge) -> None:
    """Another instance, or a simulated vendor, with or without a trailing slash."""
    built = BrazeChannel(rest_url="https://rest.fra-02.braze.eu/")

    request = built.build_request(nudge(BrazeReference(canvas="cnv-1")))

    assert request.url == "https://rest.fra-02.braze.eu/canvas/trigger/send"


@pytest.mark.parametrize("keys", [{}, {"campaign": "cmp-1", "canvas": "cnv-1"}])
def test_a_reference_names_a_campaign_or_a_canvas(keys) -> None:
    """Neither or both is refused, with both keys named."""
    with pytest.raises(pydantic.ValidationError) as raised:
        BrazeReference.model_validate(keys)

    assert "exactly one of `campaign` or `canvas`" in str(raised.value)

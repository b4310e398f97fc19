"""Braze requests, in the shapes Braze documents (Braze publishes no OpenAPI).

https://www.braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_campaigns/
https://www.braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_canvases/
https://www.braze.com/docs/api/endpoints/messaging/send_messages/post_send_messages/
"""

from __future__ import annotations

import pydantic
import pytest

from integrations.base import SECURE
from integrations.braze import BrazeChannel, BrazeEmail, BrazeReference, as_html


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


def test_an_email_is_sent_as_rendered_from_the_app_and_sender_given(nudge) -> None:
    """`POST /messages/send` to one external id, with the rendered subject and body."""
    email = {"app_id": "app-1", "from": "Acme <team@acme.example>"}
    sample = nudge(BrazeReference.model_validate({"email": email}))

    request = BrazeChannel().build_request(sample)

    assert request.url == "https://rest.iad-01.braze.com/messages/send"
    assert request.headers == {"Authorization": SECURE}
    link = sample.data["invite_link"]
    assert request.json == {
        "external_user_ids": ["user-42"],
        "messages": {
            "email": {
                "app_id": "app-1",
                "from": "Acme <team@acme.example>",
                "subject": sample.subject,
                "body": "<p>Your pack is ready. Invite the reviewers who need it: "
                f'<a href="{link}">{link}</a></p>',
                "plaintext_body": sample.body,
            }
        },
    }


def test_an_email_takes_a_reply_to_and_may_have_no_subject(nudge) -> None:
    """`reply_to` goes in when given; a subject only when one was rendered."""
    email = BrazeEmail(app_id="app-1", sender="team@acme.example", reply_to="help@x.io")
    sample = nudge(BrazeReference(email=email), subject=None)

    sent = BrazeChannel().build_request(sample).json["messages"]["email"]

    assert sent == {
        "app_id": "app-1",
        "from": "team@acme.example",
        "reply_to": "help@x.io",
        "body": as_html(sample.body),
        "plaintext_body": sample.body,
    }


def test_an_email_body_is_html_with_its_paragraphs_breaks_and_links() -> None:
    """Braze requires HTML: the text is escaped, and its shape and links kept."""
    text = (
        'Hi Priya,\n\nThe "Q3 <draft>" pack is ready.\n'
        "Invite them: https://app.example.com/invite?t=a&r=b.\n"
    )

    html = as_html(text)

    link = "https://app.example.com/invite?t=a&amp;r=b"
    assert html == (
        "<p>Hi Priya,</p>"
        "<p>The &quot;Q3 &lt;draft&gt;&quot; pack is ready.<br>"
        f'Invite them: <a href="{link}">{link}</a>.</p>'
    )


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"campaign": "cmp-1", "canvas": "cnv-1"},
        {"canvas": "cnv-1", "email": {"app_id": "a", "from": "t@acme.example"}},
    ],
)
def test_a_reference_names_a_campaign_a_canvas_or_an_email(keys) -> None:
    """None, or more than one, is refused, with the three keys named."""
    with pytest.raises(pydantic.ValidationError) as raised:
        BrazeReference.model_validate(keys)

    assert "exactly one of `campaign`, `canvas` or `email`" in str(raised.value)


@pytest.mark.parametrize(
    ("email", "wrong"),
    [
        ({"app_id": "a", "from": "Acme team"}, "Display Name <address@example.com>"),
        ({"app_id": "a"}, "from"),
        ({"from": "t@acme.example"}, "app_id"),
        ({"app_id": "a", "from": "t@acme.example", "form": "x"}, "form"),
    ],
)
def test_an_email_reference_says_what_is_wrong(email, wrong) -> None:
    """A sender that is no address, a missing key or a typo is named."""
    with pytest.raises(pydantic.ValidationError) as raised:
        BrazeReference.model_validate({"email": email})

    assert wrong in str(raised.value)

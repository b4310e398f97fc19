"""Mixpanel's cohort-sync webhook: pages read into cohort members, and the answer.

The bodies follow Mixpanel's "Syncing cohorts to a custom webhook" page: an
`action`, then `parameters` with the project, cohort, session, `page_info` and up
to 1,000 `members`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.base import Member, Rejected
from integrations.mixpanel import (
    CohortSyncError,
    CohortSyncPage,
    cohort_sync_answer,
    parse_cohort_sync,
)
from tests.integrations.conftest import SAMPLE_EMAIL

Body = dict[str, Any]


def sync_body(action: str = "add_members", **parameters: Any) -> Body:
    """A cohort-sync request as Mixpanel sends it, page 6 of 10."""
    members = [
        {
            "email": SAMPLE_EMAIL,
            "mixpanel_distinct_id": "user-42",
            "first_name": "Dana",
            "last_name": "Reviewer",
            "account_id": "acct-7",
        },
        {
            "email": "sam.owner@example.com",
            "mixpanel_distinct_id": "user-43",
            "first_name": "Sam",
            "last_name": "Owner",
        },
    ]
    given = {
        "mixpanel_project_id": "3141592",
        "mixpanel_cohort_name": "Uploaded a pack, invited nobody",
        "mixpanel_cohort_id": "48213",
        "mixpanel_cohort_description": "Pack owners with no reviewers yet",
        "mixpanel_session_id": "a1b2c3d4-session",
        "page_info": {"total_pages": 10, "page_count": 6},
        "members": members,
    }
    return {"action": action, "parameters": {**given, **parameters}}


@pytest.mark.parametrize("action", ["members", "add_members", "remove_members"])
def test_each_action_is_read_into_a_page_of_members(action: str) -> None:
    body = json.dumps(sync_body(action)).encode()

    page = parse_cohort_sync(body)

    assert page == CohortSyncPage(
        cohort="mixpanel:48213",
        project_id="3141592",
        action=action,  # type: ignore[arg-type]
        session_id="a1b2c3d4-session",
        page=6,
        total_pages=10,
        members=(
            Member(
                user_id="user-42",
                account_id="acct-7",
                user={
                    "email": SAMPLE_EMAIL,
                    "first_name": "Dana",
                    "last_name": "Reviewer",
                    "account_id": "acct-7",
                },
            ),
            Member(
                user_id="user-43",
                user={
                    "email": "sam.owner@example.com",
                    "first_name": "Sam",
                    "last_name": "Owner",
                },
            ),
        ),
    )
    assert not page.is_last


def test_ids_sent_as_numbers_are_read_as_text() -> None:
    body = sync_body(mixpanel_project_id=3141592, mixpanel_cohort_id=48213)
    body["parameters"]["members"][0]["mixpanel_distinct_id"] = 42
    body["parameters"]["page_info"] = {"total_pages": 3, "page_count": 3}

    page = parse_cohort_sync(body)

    assert (page.cohort, page.project_id) == ("mixpanel:48213", "3141592")
    assert page.members[0] == Member(
        user_id="42", account_id="acct-7", user=page.members[0].user
    )
    assert page.is_last


def test_the_account_property_is_configurable() -> None:
    body = sync_body()
    body["parameters"]["members"][1]["company_id"] = "acct-9"

    page = parse_cohort_sync(body, account_property="company_id")

    assert [getattr(m, "account_id", None) for m in page.members] == [None, "acct-9"]


def test_a_member_without_a_distinct_id_is_rejected_and_the_page_kept() -> None:
    """One unusable member does not refuse the page (a 400 pauses the sync)."""
    body = sync_body()
    del body["parameters"]["members"][0]["mixpanel_distinct_id"]
    body["parameters"]["members"].append("not a member")

    page = parse_cohort_sync(body)

    first, kept, garbled = page.members
    assert first == Rejected("parameters.members[0]", "no `mixpanel_distinct_id`")
    assert isinstance(kept, Member)
    assert garbled == Rejected("parameters.members[2]", "not a JSON object")
    assert SAMPLE_EMAIL not in repr(first)


MISSING = object()


def _changed(body: Body, path: str, value: Any) -> Body:
    """`body` with the field at the dotted `path` set to `value`, or removed."""
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    if value is MISSING:
        del node[last]
    else:
        node[last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("action", MISSING, None),
        ("action", "upsert_members", None),
        ("parameters", MISSING, None),
        ("parameters.mixpanel_session_id", MISSING, None),
        ("parameters.mixpanel_session_id", "", None),
        ("parameters.mixpanel_project_id", True, None),
        ("parameters.mixpanel_cohort_id", MISSING, None),
        ("parameters.mixpanel_cohort_id", SAMPLE_EMAIL, None),
        ("parameters.page_info", MISSING, None),
        ("parameters.page_info.total_pages", 0, None),
        ("parameters.page_info.page_count", SAMPLE_EMAIL, None),
        ("parameters.page_info.page_count", 11, "parameters.page_info"),
        ("parameters.members", {"email": SAMPLE_EMAIL}, None),
    ],
)
def test_a_bad_request_is_refused_naming_the_field_and_never_the_data(
    path: str, value: Any, named: str | None
) -> None:
    body = _changed(sync_body(), path, value)

    with pytest.raises(CohortSyncError) as caught:
        parse_cohort_sync(json.dumps(body))

    assert str(caught.value).startswith(f"`{named or path}`")
    assert SAMPLE_EMAIL not in str(caught.value)
    assert "Dana" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[]", "the body is not a JSON object"),
        (f'"{SAMPLE_EMAIL}"'.encode(), "the body is not a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(CohortSyncError, match=message) as caught:
        parse_cohort_sync(body)

    assert caught.value.action is None


def test_the_error_keeps_the_action_for_the_answer() -> None:
    body = sync_body("remove_members")
    del body["parameters"]["page_info"]

    with pytest.raises(CohortSyncError) as caught:
        parse_cohort_sync(body)

    assert caught.value.action == "remove_members"
    assert cohort_sync_answer("remove_members", error=str(caught.value)) == {
        "action": "remove_members",
        "status": "failure",
        "error": {"message": "`parameters.page_info`: Field required", "code": 400},
    }


def test_the_answer_echoes_the_action_with_success() -> None:
    assert cohort_sync_answer("members") == {"action": "members", "status": "success"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    top=st.dictionaries(st.sampled_from(["action", "parameters"]), _JSON, max_size=2),
    inner=st.dictionaries(
        st.sampled_from(
            [
                "mixpanel_project_id",
                "mixpanel_cohort_id",
                "mixpanel_session_id",
                "page_info",
                "members",
            ]
        ),
        _JSON,
        max_size=4,
    ),
)
def test_any_body_is_read_or_refused_without_echoing_it(top: Body, inner: Body) -> None:
    """Whatever arrives, the parser answers a page or a CohortSyncError, and the
    error never repeats the personal data the body held."""
    body = sync_body()
    body["parameters"].update(inner)
    body.update(top)

    outcome: CohortSyncPage | CohortSyncError
    try:
        outcome = parse_cohort_sync(json.dumps(body))
    except CohortSyncError as exc:
        outcome = exc

    if isinstance(outcome, CohortSyncError):
        assert SAMPLE_EMAIL not in str(outcome)
    else:
        assert outcome.cohort.startswith("mixpanel:")
        assert all(isinstance(m, Member | Rejected) for m in outcome.members)

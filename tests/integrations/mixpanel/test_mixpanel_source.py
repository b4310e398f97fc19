"""Mixpanel as a cohort source: Engage pages, budgets and concurrent queries, doctor.

Every test reads from the simulated Mixpanel over real HTTP on loopback; budgets
and slots live in the test Redis.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.base import CohortSource, EventSink, Member, Rejected
from integrations.mixpanel import (
    DEFAULT_OUTPUT_PROPERTIES,
    QUERY_AT_ONCE,
    MixpanelAdapter,
)
from orchestrator.budgets import Budget, Slots
from orchestrator.errors import ConfigurationError, PermanentError, TransientError
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Simulator
from simulator.mixpanel import SIM_PROJECT_ID, SIM_SECRET, SIM_USERNAME, MixpanelSim
from tests.integrations.conftest import SAMPLE_EMAIL
from tests.integrations.openapi import body_validator, load_spec, parameter_names

COHORT = "mixpanel:48213"
ENGAGE = "/api/query/engage"
FORM = "application/x-www-form-urlencoded"

AdapterFactory = Callable[..., MixpanelAdapter]


def seed(mixpanel: MixpanelSim, cohort_id: str, count: int) -> None:
    """Put `count` profiles, as Engage returns them, into a cohort."""
    mixpanel.cohorts[cohort_id] = [
        {
            "$distinct_id": f"user-{number}",
            "$properties": {
                "$email": f"user-{number}@example.com",
                "$first_name": "Dana",
                "$timezone": "Europe/Paris",
                "account_id": f"acct-{number % 7}",
                "plan": "enterprise",
            },
        }
        for number in range(count)
    ]


def engage_forms(sim: Simulator) -> list[dict[str, str]]:
    return [item.request.form for item in sim.received("mixpanel", ENGAGE)]


def test_a_cohort_of_2500_is_read_in_three_pages_on_one_session(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    seed(mixpanel, "48213", 2_500)

    pages = list(adapter_for().cohort_pages(COHORT))

    forms = engage_forms(sim)
    first_session = {"page": None, "session_id": None}
    assert [len(page) for page in pages] == [1_000, 1_000, 500]
    assert [form.get("page") for form in forms] == [None, "1", "2"]
    assert {key: forms[0].get(key) for key in first_session} == first_session
    assert forms[1]["session_id"] == forms[2]["session_id"] == "1-SIMSESSION"
    assert {form["filter_by_cohort"] for form in forms} == {'{"id": 48213}'}
    assert {item.request.param("project_id") for item in sim.received()} == {
        str(SIM_PROJECT_ID)
    }


def test_a_cohort_that_fills_its_last_page_ends_on_an_empty_answer(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """Mixpanel's recipe: a page shorter than `page_size` is the last one, so a
    cohort of exactly 2,000 takes a third, empty answer, which yields nothing."""
    seed(mixpanel, "48213", 2_000)

    pages = list(adapter_for().cohort_pages(COHORT))

    assert [len(page) for page in pages] == [1_000, 1_000]
    assert len(engage_forms(sim)) == 3


def test_the_adapter_is_a_cohort_source_and_an_event_sink(
    adapter_for: AdapterFactory,
) -> None:
    adapter = adapter_for()

    assert isinstance(adapter, CohortSource)
    assert isinstance(adapter, EventSink)
    assert adapter.name == "mixpanel"


def test_an_empty_cohort_gives_one_empty_page(
    mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    pages = list(adapter_for().cohort_pages("mixpanel:99"))

    assert pages == [[]]


def test_the_output_properties_are_asked_for_with_the_account_property(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    seed(mixpanel, "48213", 1)
    adapter = adapter_for(output_properties=["$email"], account_property="company")

    list(adapter.cohort_pages(COHORT))

    asked = json.loads(engage_forms(sim)[0]["output_properties"])
    assert asked == ["$email", "company"]


def test_each_result_becomes_a_member_with_its_account_and_profile_fields(
    mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """Reserved profile properties come under the names templates read; others
    keep theirs; only the properties asked for come back."""
    seed(mixpanel, "48213", 1)

    [[member]] = list(adapter_for().cohort_pages(COHORT))

    assert member == Member(
        user_id="user-0",
        account_id="acct-0",
        user={
            "email": "user-0@example.com",
            "first_name": "Dana",
            "time_zone": "Europe/Paris",
            "account_id": "acct-0",
        },
    )
    assert set(DEFAULT_OUTPUT_PROPERTIES) >= {"$email", "$timezone"}


def test_a_result_without_a_distinct_id_is_rejected_without_its_content(
    mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    seed(mixpanel, "48213", 3)
    mixpanel.cohorts["48213"][1] = {"$properties": {"$email": SAMPLE_EMAIL}}
    mixpanel.cohorts["48213"][2] = "not a profile"

    [page] = list(adapter_for().cohort_pages(COHORT))

    first, missing, garbled = page
    assert isinstance(first, Member)
    assert missing == Rejected(f"{COHORT} page 0 result 1", "no `$distinct_id`")
    assert garbled == Rejected(f"{COHORT} page 0 result 2", "not a JSON object")
    assert SAMPLE_EMAIL not in repr(page[1:])


def test_a_page_that_fails_is_asked_again_at_once(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """Engage reads are safe to repeat: a 503 is retried within the call."""
    seed(mixpanel, "48213", 1_500)
    pages = adapter_for().cohort_pages(COHORT)
    next(pages)
    sim.fault("mixpanel", Fault.answer(503), times=1)

    rest = list(pages)

    assert [len(page) for page in rest] == [500]
    assert [r.status for r in sim.received("mixpanel", ENGAGE)] == [200, 503, 200]


@pytest.mark.parametrize("cohort", ["mixpanel:pack-uploaders", "amplitude:48213"])
def test_a_cohort_that_is_not_a_mixpanel_id_is_refused(
    sim: Simulator, adapter_for: AdapterFactory, cohort: str
) -> None:
    with pytest.raises(ConfigurationError, match="mixpanel:<numeric id>"):
        list(adapter_for().cohort_pages(cohort))

    assert sim.received("mixpanel") == []


def test_reading_without_a_project_id_names_the_setting(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    with pytest.raises(ConfigurationError, match=r"vendors\.mixpanel\.project_id"):
        list(adapter_for(project_id=None).cohort_pages(COHORT))

    assert sim.received("mixpanel") == []


def test_refused_credentials_are_permanent(adapter_for: AdapterFactory) -> None:
    adapter = adapter_for(secret="not-the-secret")

    with pytest.raises(PermanentError, match="credentials refused") as caught:
        list(adapter.cohort_pages(COHORT))

    assert caught.value.status == 401


# --- budgets and slots -------------------------------------------------------------


def test_the_hourly_budget_refuses_the_61st_query_with_its_wait(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory, store: Store
) -> None:
    """With all of `60 per 1h` allowed at once, other workers took 59 queries of
    the hour from the shared budget; this read is the 60th, and the next one,
    the 61st, is refused before it is sent, with the wait until there is room."""
    seed(mixpanel, "48213", 1)
    hourly = Cap(60, timedelta(hours=1))
    elsewhere = Budget(store, "mixpanel:query", hourly, burst=60)
    taken = [elsewhere.acquire() for _ in range(59)]
    adapter = adapter_for(
        store=store, budgets={"mixpanel:query": hourly}, query_burst=60
    )

    list(adapter.cohort_pages(COHORT))
    with pytest.raises(TransientError, match="budget") as caught:
        list(adapter.cohort_pages(COHORT))

    assert taken == [0] * 59
    assert 3_500 < (caught.value.retry_after_s or 0) <= 3_600
    assert len(sim.received("mixpanel", ENGAGE)) == 1


def test_the_default_budget_lets_a_burst_go_then_paces_the_hour(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory, store: Store
) -> None:
    """Ten queries go at once; then one per 3600/51 s, so no hour holds more
    than 60; a read that has not begun does not wait that long."""
    seed(mixpanel, "48213", 1)
    adapter = adapter_for(store=store)
    for _ in range(10):
        list(adapter.cohort_pages(COHORT))

    with pytest.raises(TransientError) as caught:
        list(adapter.cohort_pages(COHORT))

    assert 69 < (caught.value.retry_after_s or 0) <= 3_600 / 51 + 1
    assert len(sim.received("mixpanel", ENGAGE)) == 10


def test_a_read_that_has_begun_waits_for_its_next_pages(
    mixpanel: MixpanelSim, adapter_for: AdapterFactory, store: Store
) -> None:
    """Pages after the first wait for their budget slot instead of giving up the
    pages already read."""
    seed(mixpanel, "48213", 2_500)
    paced = {"mixpanel:query": Cap(5, timedelta(seconds=2))}
    adapter = adapter_for(store=store, budgets=paced, query_burst=1)

    pages = list(adapter.cohort_pages(COHORT))

    assert [len(page) for page in pages] == [1_000, 1_000, 500]


def test_no_more_than_five_queries_run_at_once_across_threads(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory, store: Store
) -> None:
    """Ten workers reading at once share five slots: Mixpanel never sees a sixth
    query in flight, and every read completes."""
    seed(mixpanel, "48213", 1)
    mixpanel.engage_delay_s = 0.3
    adapter = adapter_for(store=store, slot_wait_s=5.0)

    outcomes = _read_in_threads(adapter, 10)

    assert outcomes == ["read"] * 10
    assert sim.count("mixpanel", 429) == 0
    assert len(sim.received("mixpanel", ENGAGE)) == 10


def test_without_slots_a_sixth_query_at_once_is_refused_by_mixpanel(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """The contrast: with no shared store there are no slots, and Mixpanel
    answers 429 to queries beyond five at once."""
    seed(mixpanel, "48213", 1)
    mixpanel.engage_delay_s = 0.3
    adapter = adapter_for()

    outcomes = _read_in_threads(adapter, 10)

    assert "rate limited" in outcomes
    assert sim.count("mixpanel", 429) == outcomes.count("rate limited")


def test_no_slot_within_the_wait_is_transient_and_sends_nothing(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory, store: Store
) -> None:
    seed(mixpanel, "48213", 1)
    slots = Slots(store, "mixpanel:query", QUERY_AT_ONCE, lease=timedelta(minutes=2))
    holders = [slots.try_take() for _ in range(QUERY_AT_ONCE)]
    adapter = adapter_for(store=store, slot_wait_s=0.2)

    with pytest.raises(TransientError, match="at once") as caught:
        list(adapter.cohort_pages(COHORT))

    assert all(holders)
    assert caught.value.retry_after_s == 10
    assert sim.received("mixpanel") == []


def _read_in_threads(adapter: MixpanelAdapter, count: int) -> list[str]:
    """Read the cohort from `count` threads at once; say how each read ended."""
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def read() -> None:
        start.wait()
        try:
            list(adapter.cohort_pages(COHORT))
            outcome = "read"
        except TransientError as exc:
            outcome = "rate limited" if "429" in str(exc) else str(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return sorted(outcomes)


# --- the vendor's contract ---------------------------------------------------------


def test_engage_requests_follow_mixpanels_query_spec(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory, specs_dir: Path
) -> None:
    """Every form field and query parameter is one the Query API documents, with
    the documented type (JSON arrays written as text, as the spec says)."""
    spec = load_spec(specs_dir / "mixpanel" / "query.openapi.yaml")
    schema = spec["paths"]["/engage"]["post"]["requestBody"]["content"][FORM]
    fields = schema["schema"]["properties"]
    validator = body_validator(spec, "/engage", "post", FORM)
    seed(mixpanel, "48213", 1_200)

    list(adapter_for().cohort_pages(COHORT))

    received = sim.received("mixpanel", ENGAGE)
    assert len(received) == 2
    for item in received:
        form = item.request.form
        assert set(form) <= set(fields)
        assert set(item.request.query) <= parameter_names(spec, "/engage", "post")
        assert item.request.header("content-type") == FORM
        validator.validate(_typed(form, fields))


def _typed(form: dict[str, str], fields: dict[str, Any]) -> dict[str, Any]:
    """Read each form field as the type its schema gives it."""
    typed: dict[str, Any] = {}
    for name, text in form.items():
        kind = fields[name].get("type")
        if kind == "array":
            typed[name] = json.loads(text)
        elif kind == "integer":
            typed[name] = int(text)
        elif kind == "boolean":
            typed[name] = {"true": True, "false": False}[text]
        else:
            typed[name] = text
    return typed


# --- doctor ------------------------------------------------------------------------


def test_check_says_the_project_is_set_and_the_service_account_works(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    checks = adapter_for().check()

    assert [(c.what, c.ok) for c in checks] == [
        ("project id", True),
        ("service account", True),
    ]
    assert [r.request.path for r in sim.received("mixpanel")] == ["/api/app/me"]


def test_check_reports_a_missing_project_id(adapter_for: AdapterFactory) -> None:
    project, account = adapter_for(project_id=None).check()

    assert not project.ok
    assert "vendors.mixpanel.project_id" in project.detail
    assert account.ok


def test_check_reports_refused_credentials_without_the_secret(
    adapter_for: AdapterFactory,
) -> None:
    _, account = adapter_for(secret="wrong-secret-123").check()

    assert not account.ok
    assert "401" in account.detail
    assert "username and secret" in account.detail
    assert "wrong-secret-123" not in account.detail


def test_check_reports_a_project_the_service_account_cannot_reach(
    adapter_for: AdapterFactory,
) -> None:
    _, account = adapter_for(project_id=2718281).check()

    assert not account.ok
    assert "project 2718281" in account.detail


def test_check_reports_an_unreachable_vendor() -> None:
    with Simulator([MixpanelSim()]) as gone:
        url = gone.url("mixpanel")
    adapter = MixpanelAdapter(
        SIM_USERNAME,
        SIM_SECRET,
        SIM_PROJECT_ID,
        query_url=url,
        ingestion_url=url,
        timeout=httpx.Timeout(0.5),
    )

    _, account = adapter.check()
    adapter.close()

    assert not account.ok
    assert account.detail.startswith("unreachable")


def test_check_reports_missing_credentials_without_calling(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    _, account = adapter_for(secret="").check()

    assert not account.ok
    assert "not set" in account.detail
    assert sim.received("mixpanel") == []


# --- what is said about it ---------------------------------------------------------


def test_no_log_line_or_error_carries_an_email_or_the_secret(
    sim: Simulator,
    mixpanel: MixpanelSim,
    adapter_for: AdapterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seed(mixpanel, "48213", 3)
    mixpanel.cohorts["48213"][0]["$properties"]["$email"] = SAMPLE_EMAIL
    mixpanel.cohorts["48213"][1] = {"$properties": {"$email": SAMPLE_EMAIL}}
    said: list[str] = []

    pages = list(adapter_for().cohort_pages(COHORT))
    said += [repr(item) for item in pages[0] if isinstance(item, Rejected)]
    with pytest.raises(PermanentError) as refused:
        list(adapter_for(secret="sk-do-not-log").cohort_pages(COHORT))
    said.append(str(refused.value))
    sim.fault("mixpanel", Fault.answer(503))
    with pytest.raises(TransientError) as unavailable:
        list(adapter_for().cohort_pages(COHORT))
    said.append(str(unavailable.value))
    said += [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("integrations", "simulator"))
    ]

    text = "\n".join(said)
    for private in (SAMPLE_EMAIL, "sk-do-not-log", SIM_SECRET, "project_id="):
        assert private not in text

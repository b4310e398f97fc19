"""Mixpanel as the sink of referloop's events: strict, gzipped, deduped imports.

Every test imports into the simulated Mixpanel over real HTTP on loopback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.base import EventSink, LoopEvent
from integrations.mixpanel import (
    NUDGE_HELD_BACK,
    NUDGE_SENT,
    REWARD_GRANTED,
    FailedEvent,
    ImportResult,
    MixpanelAdapter,
    insert_id_for,
)
from orchestrator.errors import ConfigurationError, PermanentError, TransientError
from orchestrator.state import Store
from orchestrator.units import Cap
from simulator import Fault, Received, Simulator
from simulator.mixpanel import SIM_PROJECT_ID, SIM_SECRET, MixpanelSim
from tests.integrations.openapi import body_validator, load_spec, parameter_names

IMPORT = "/import"
SENT_AT = datetime(2026, 5, 1, 9, 30, 15, 250_000, tzinfo=UTC)
SENT_AT_MS = 1_777_627_815_250

AdapterFactory = Callable[..., MixpanelAdapter]


def sent(number: int, user_id: str | None = None) -> LoopEvent:
    """A `nudge sent` event for delivery `number`, as the engine reports it."""
    user = user_id or f"user-{number}"
    return LoopEvent(
        insert_id=f"pack-reviewers:ask:{user}:2026-05-01",
        name=NUDGE_SENT,
        user_id=user,
        time=SENT_AT,
        properties={"playbook": "pack-reviewers", "step": "ask", "variant": "a"},
    )


def imports(sim: Simulator) -> list[Received]:
    return sim.received("mixpanel", IMPORT)


def test_events_are_imported_gzipped_with_their_time_and_a_derived_insert_id(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    events = [sent(1), sent(2)]

    result = adapter_for().import_events(events)

    [request] = [item.request for item in imports(sim)]
    compressed = int(request.header("content-length") or 0)
    assert result == ImportResult(imported=2)
    assert request.header("content-encoding") == "gzip"
    assert 0 < compressed < len(request.body)
    assert request.param("strict") == "1"
    assert request.param("project_id") == str(SIM_PROJECT_ID)
    assert request.json[0] == {
        "event": "referloop nudge sent",
        "properties": {
            "playbook": "pack-reviewers",
            "step": "ask",
            "variant": "a",
            "time": SENT_AT_MS,
            "distinct_id": "user-1",
            "$insert_id": insert_id_for(events[0].insert_id),
            "ip": 0,
        },
    }
    assert len(mixpanel.imported) == 2


def test_an_import_is_split_at_2000_events(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    events = [sent(number) for number in range(4_500)]

    result = adapter_for().import_events(events)

    assert result == ImportResult(imported=4_500)
    assert [len(item.json) for item in imports(sim)] == [2_000, 2_000, 500]
    assert len(mixpanel.imported) == 4_500


def test_an_import_is_split_within_the_size_limit(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """Batches stay under the uncompressed size Mixpanel accepts, whatever the
    count: here a limit of 1,000 bytes."""
    events = [sent(number) for number in range(20)]

    result = adapter_for(max_batch_bytes=1_000).import_events(events)

    sizes = [len(item.request.body) for item in imports(sim)]
    assert result.imported == 20
    assert len(sizes) > 1
    assert max(sizes) <= 1_000
    assert sum(len(item.json) for item in imports(sim)) == 20


def test_a_partial_400_counts_the_good_events_and_reports_the_bad_ones(
    sim: Simulator,
    mixpanel: MixpanelSim,
    adapter_for: AdapterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mixpanel keeps the valid events of a strict batch and names the others;
    the batch is not sent again, and each refused event is logged by index and
    insert id."""
    caplog.set_level(logging.WARNING, logger="integrations.mixpanel")
    events = [sent(1), sent(2, user_id="null"), sent(3)]

    result = adapter_for().import_events(events)

    assert result.imported == 2
    assert result.failed == (
        FailedEvent(
            index=1,
            insert_id=events[1].insert_id,
            field="properties.distinct_id",
            message="'properties.distinct_id' is invalid: a placeholder value",
        ),
    )
    assert [item.status for item in imports(sim)] == [400]
    assert {key[2] for key in mixpanel.imported} == {"user-1", "user-3"}
    assert [record.getMessage() for record in caplog.records] == [
        f"Mixpanel refused event 1 (insert id {events[1].insert_id}): "
        "properties.distinct_id."
    ]


def test_a_partial_400_in_one_batch_does_not_stop_the_next(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    events = [sent(number) for number in range(2_001)]
    events[5] = sent(5, user_id="undefined")

    result = adapter_for().import_events(events)

    assert result.imported == 2_000
    assert [failure.index for failure in result.failed] == [5]
    assert [item.status for item in imports(sim)] == [400, 200]


def test_a_resend_is_deduped_by_insert_id(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    """The same events imported twice (a retried actor) are kept once: same
    `$insert_id`, same time, same distinct id."""
    events = [sent(1), sent(2), sent(3)]
    adapter = adapter_for()

    first = adapter.import_events(events)
    again = adapter.import_events(events)

    ids = [[e["properties"]["$insert_id"] for e in item.json] for item in imports(sim)]
    assert first == again == ImportResult(imported=3)
    assert ids[0] == ids[1]
    assert len(mixpanel.imported) == 3


def test_a_5xx_is_retried_at_once_since_the_import_is_deduped(
    sim: Simulator, mixpanel: MixpanelSim, adapter_for: AdapterFactory
) -> None:
    sim.fault("mixpanel", Fault.answer(503), times=1)

    result = adapter_for().import_events([sent(1)])

    assert result == ImportResult(imported=1)
    assert [item.status for item in imports(sim)] == [503, 200]


def test_a_rate_limited_import_is_transient_with_the_wait(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    sim.fault("mixpanel", Fault.rate_limited(7), times=1)

    with pytest.raises(TransientError) as caught:
        adapter_for().import_events([sent(1)])

    assert caught.value.retry_after_s == 7
    assert len(imports(sim)) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.answer(400, body={"error": "malformed", "status": "error"}),
        Fault.answer(413, body={"error": "too large", "status": "error"}),
    ],
)
def test_a_batch_refused_whole_is_permanent(
    sim: Simulator, adapter_for: AdapterFactory, fault: Fault
) -> None:
    sim.fault("mixpanel", fault, times=1)

    with pytest.raises(PermanentError) as caught:
        adapter_for().import_events([sent(1)])

    assert caught.value.status == fault.status
    assert len(imports(sim)) == 1


def test_the_import_budget_is_shared_and_refuses_when_used_up(
    sim: Simulator, adapter_for: AdapterFactory, store: Store
) -> None:
    budgets = {"mixpanel:import": Cap(1, timedelta(hours=1))}
    adapter_for(store=store, budgets=budgets).import_events([sent(1)])

    with pytest.raises(TransientError, match="budget") as caught:
        adapter_for(store=store, budgets=budgets).import_events([sent(2)])

    assert (caught.value.retry_after_s or 0) > 3_500
    assert len(imports(sim)) == 1


def test_the_sink_records_and_nothing_is_sent_for_no_events(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    adapter = adapter_for()

    assert isinstance(adapter, EventSink)
    assert adapter.import_events([]) == ImportResult(0)
    assert adapter.record([sent(1)]) is None
    assert len(imports(sim)) == 1


def test_importing_without_a_project_id_sends_nothing(
    sim: Simulator, adapter_for: AdapterFactory
) -> None:
    with pytest.raises(ConfigurationError, match=r"vendors\.mixpanel\.project_id"):
        adapter_for(project_id=None).import_events([sent(1)])

    assert imports(sim) == []


@given(key=st.text(min_size=1, max_size=300))
def test_the_insert_id_fits_mixpanel_and_is_always_the_same(key: str) -> None:
    """`$insert_id`: at most 36 bytes of letters, digits and dashes."""
    derived = insert_id_for(key)

    assert re.fullmatch(r"[A-Za-z0-9-]{1,36}", derived)
    assert derived == insert_id_for(key)
    assert derived != insert_id_for(key + ":")


def test_imports_follow_mixpanels_ingestion_spec(
    sim: Simulator, adapter_for: AdapterFactory, specs_dir: Path
) -> None:
    """Each kind of loop event, as sent, is a valid `/import` body, with only
    documented query parameters."""
    spec = load_spec(specs_dir / "mixpanel" / "ingestion.openapi.yaml")
    validator = body_validator(spec, "/import", "post")
    held = LoopEvent(
        "pack-reviewers:ask:user-2:2026-05-01",
        NUDGE_HELD_BACK,
        "user-2",
        SENT_AT,
        {"playbook": "pack-reviewers", "reason": "quiet_hours"},
    )
    granted = LoopEvent(
        "pack-reviewers:reward:user-3:2026-05-02",
        REWARD_GRANTED,
        "user-3",
        SENT_AT,
        {"playbook": "pack-reviewers", "grant": "guest_seats", "amount": 3},
    )

    adapter_for().import_events([sent(1), held, granted])

    [request] = [item.request for item in imports(sim)]
    validator.validate(request.json)
    assert set(request.query) <= parameter_names(spec, "/import", "post")
    assert [event["event"] for event in request.json] == [
        "referloop nudge sent",
        "referloop nudge held back",
        "referloop reward granted",
    ]


def test_no_log_line_or_error_carries_the_secret_or_a_query_string(
    sim: Simulator,
    adapter_for: AdapterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    said: list[str] = []

    adapter_for().import_events([sent(1, user_id="null"), sent(2)])
    with pytest.raises(PermanentError) as refused:
        adapter_for(secret="sk-do-not-log").import_events([sent(3)])
    said.append(str(refused.value))
    sim.fault("mixpanel", Fault.hang(2), times=3)
    with pytest.raises(TransientError) as unanswered:
        adapter_for(timeout=httpx.Timeout(0.3)).import_events([sent(4)])
    said.append(str(unanswered.value))
    said += [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("integrations", "simulator"))
    ]

    text = "\n".join(said)
    for private in ("sk-do-not-log", SIM_SECRET, "project_id=", "strict="):
        assert private not in text

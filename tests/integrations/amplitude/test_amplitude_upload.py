"""Amplitude as the sink of referloop's events: HTTP V2 uploads, deduped by
`insert_id`, with refused, throttled and oversized batches handled per event.

Every test uploads to the simulated Amplitude over real HTTP on loopback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integrations.amplitude import AmplitudeSink, UploadResult
from integrations.base import EventSink, LoopEvent
from integrations.mixpanel import insert_id_for
from orchestrator.errors import PermanentError, TransientError
from simulator import Fault, Received, Simulator
from simulator.amplitude import API_KEY, AmplitudeSim
from tests.integrations.openapi import body_validator, load_spec

UPLOAD = "/2/httpapi"
SENT_AT = datetime(2026, 5, 1, 9, 30, 15, 250_000, tzinfo=UTC)
SENT_AT_MS = 1_777_627_815_250

SinkFactory = Callable[..., AmplitudeSink]


def sent(number: int, user_id: str | None = None, name: str = "") -> LoopEvent:
    """A `nudge sent` event for delivery `number`, as the engine reports it."""
    user = user_id or f"user-{number}"
    return LoopEvent(
        insert_id=f"pack-reviewers:ask:{user}:{number}",
        name=name or "referloop nudge sent",
        user_id=user,
        time=SENT_AT,
        properties={"playbook": "pack-reviewers", "step": "ask", "variant": "a"},
    )


def uploads(sim: Simulator) -> list[Received]:
    return sim.received("amplitude", UPLOAD)


def test_events_are_uploaded_with_their_time_and_a_derived_insert_id(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    sink = sink_for()

    result = sink.upload([sent(1), sent(2)])

    [request] = [item.request for item in uploads(sim)]
    assert isinstance(sink, EventSink)
    assert result == UploadResult(uploaded=2)
    assert request.header("content-type") == "application/json"
    assert request.json["api_key"] == API_KEY
    assert "options" not in request.json
    assert request.json["events"][0] == {
        "user_id": "user-1",
        "event_type": "referloop nudge sent",
        "time": SENT_AT_MS,
        "insert_id": insert_id_for("pack-reviewers:ask:user-1:1"),
        "event_properties": {
            "playbook": "pack-reviewers",
            "step": "ask",
            "variant": "a",
        },
    }
    assert len(amplitude.kept) == 2


def test_every_upload_body_is_what_amplitudes_openapi_document_describes(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory, specs_dir: Path
) -> None:
    spec = load_spec(specs_dir / "amplitude" / "http-v2.openapi.yaml")
    validator = body_validator(spec, UPLOAD, "post")

    sink_for().upload([sent(1), sent(2)])
    sink_for().upload([sent(3, user_id="u-7")])

    first, second = (item.json for item in uploads(sim))
    errors = [error.message for error in validator.iter_errors(first)]
    # The document's `minLength: 5` is the default that `min_id_length` lowers.
    short = [e.validator for e in validator.iter_errors(second)]
    assert errors == []
    assert short == ["minLength"]
    assert second["options"] == {"min_id_length": 3}
    assert "https://api2.amplitude.com" in [s["url"] for s in spec["servers"]]
    assert "https://api.eu.amplitude.com" in [s["url"] for s in spec["servers"]]


def test_user_ids_shorter_than_five_characters_set_min_id_length(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    result = sink_for().upload([sent(1, user_id="u-42"), sent(2, user_id="u7")])

    [request] = uploads(sim)
    assert result == UploadResult(uploaded=2)
    assert request.json["options"] == {"min_id_length": 2}
    assert len(amplitude.kept) == 2


def test_more_than_two_thousand_events_go_in_batches_of_two_thousand(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    events = [sent(n, user_id=f"user-{n % 100:03d}") for n in range(2_500)]
    amplitude.events_per_user = 1_000

    result = sink_for().upload(events)

    sizes = [len(item.json["events"]) for item in uploads(sim)]
    assert result == UploadResult(uploaded=2_500)
    assert sizes == [2_000, 500]
    assert len(amplitude.kept) == 2_500


def test_batches_stay_under_the_size_limit(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    events = [sent(n) for n in range(30)]

    result = sink_for(max_batch_bytes=2_000).upload(events)

    sizes = [len(item.request.body) for item in uploads(sim)]
    assert result == UploadResult(uploaded=30)
    assert len(sizes) > 1
    assert max(sizes) < 2_000
    assert len(amplitude.kept) == 30


def test_an_upload_sent_again_is_kept_once(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    sink = sink_for()

    sink.upload([sent(1), sent(2)])
    sink.upload([sent(1), sent(2)])

    assert len(uploads(sim)) == 2
    assert len(amplitude.kept) == 2
    assert amplitude.duplicates == 2


def test_a_429_sends_only_the_throttled_events_again_after_the_wait(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    # Given a user allowed 3 events in 0.3 s, and a 429 that asks for 0.35 s
    amplitude.events_per_user = 3
    amplitude.user_window_s = 0.3
    amplitude.throttle_retry_after_s = 0.35
    events = [sent(n, user_id="user-busy") for n in range(5)]

    # When five of that user's events are uploaded at once
    result = sink_for().upload(events)

    # Then the two throttled ones go again, alone, once the wait is over
    first, second = uploads(sim)
    again = [event["insert_id"] for event in second.json["events"]]
    assert first.status == 429
    assert first.json is not None
    assert again == [insert_id_for(e.insert_id) for e in events[3:]]
    assert second.request.at - first.request.at >= 0.35
    assert result == UploadResult(uploaded=5)
    assert len(amplitude.kept) == 5
    assert amplitude.duplicates == 0


def test_a_429_asking_for_longer_than_the_sink_waits_goes_back_to_the_engine(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    """With no header, Amplitude's documented wait is 30 s."""
    amplitude.events_per_user = 1

    with pytest.raises(TransientError) as raised:
        sink_for(max_throttle_wait_s=5).upload([sent(1, "user-a"), sent(2, "user-a")])

    assert raised.value.retry_after_s == 30
    assert len(uploads(sim)) == 1
    assert len(amplitude.kept) == 1


def test_a_500_after_the_events_were_kept_leaves_no_duplicate(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    amplitude.fail_after_keeping = 1

    result = sink_for().upload([sent(1), sent(2)])

    assert [item.status for item in uploads(sim)] == [500, 200]
    assert result == UploadResult(uploaded=2)
    assert len(amplitude.kept) == 2
    assert amplitude.duplicates == 2


def test_an_unavailable_amplitude_is_transient(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    sim.fault("amplitude", Fault.answer(503))

    with pytest.raises(TransientError):
        sink_for().upload([sent(1)])

    assert amplitude.kept == {}


def test_a_413_splits_the_batch_and_sends_each_half(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    amplitude.max_bytes = 1_500
    events = [sent(n) for n in range(12)]

    result = sink_for().upload(events)

    statuses = [item.status for item in uploads(sim)]
    assert statuses[0] == 413
    assert 413 not in statuses[-1:]
    assert result == UploadResult(uploaded=12)
    assert len(amplitude.kept) == 12


def test_a_400_naming_events_reports_them_and_sends_the_rest(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    # Given an upload whose second and fourth events have no event type
    untyped = [LoopEvent(f"k:{n}", "", f"user-{n}", SENT_AT) for n in (1, 3)]
    events = [sent(0), untyped[0], sent(2), untyped[1]]

    # When it is uploaded
    result = sink_for().upload(events)

    # Then those two are reported by index, and the others kept
    statuses = [item.status for item in uploads(sim)]
    assert statuses == [400, 200]
    assert result.uploaded == 2
    assert [(f.index, f.insert_id, f.field) for f in result.failed] == [
        (1, "k:1", "event_type"),
        (3, "k:3", "event_type"),
    ]
    assert len(amplitude.kept) == 2


def test_an_event_without_a_user_id_is_reported_and_not_sent(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    events = [sent(1), LoopEvent("k:none", "referloop nudge sent", "", SENT_AT)]

    result = sink_for().upload(events)

    [request] = uploads(sim)
    assert len(request.json["events"]) == 1
    assert [(f.index, f.field) for f in result.failed] == [(1, "user_id")]


def test_a_wrong_key_is_permanent_and_never_quoted(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    with pytest.raises(PermanentError) as raised:
        sink_for(api_key="amp-key-typed-wrong-0042").upload([sent(1)])

    assert raised.value.status == 400
    assert "API key" in str(raised.value)
    assert "amp-key-typed-wrong-0042" not in str(raised.value)


def test_no_key_user_id_or_property_reaches_a_log_line_or_an_error(
    sim: Simulator,
    amplitude: AmplitudeSim,
    sink_for: SinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    amplitude.events_per_user = 1
    amplitude.throttle_retry_after_s = 0.05
    amplitude.user_window_s = 0.05
    user = "dana.reviewer@example.com"
    events = [sent(1, user), sent(2, user), LoopEvent("k:x", "", user, SENT_AT)]
    errors: list[str] = []

    sink_for().upload(events)
    sim.fault("amplitude", Fault.answer(503))
    for key in (API_KEY, "amp-key-typed-wrong-0042"):
        try:
            sink_for(api_key=key).upload(events)
        except (TransientError, PermanentError) as exc:
            errors.append(str(exc))

    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    assert len(errors) == 2
    for secret in (API_KEY, "amp-key-typed-wrong-0042", user, "pack-reviewers"):
        assert secret not in logged
        assert all(secret not in error for error in errors)


def test_the_eu_residency_uploads_to_the_eu_host() -> None:
    sink = AmplitudeSink(API_KEY, residency="eu")
    try:
        assert str(sink._http.client.base_url) == "https://api.eu.amplitude.com"
    finally:
        sink.close()


def test_a_slow_amplitude_still_takes_the_upload(
    sim: Simulator, amplitude: AmplitudeSim, sink_for: SinkFactory
) -> None:
    sim.fault("amplitude", Fault.slow(0.2), times=1)
    began = time.monotonic()

    result = sink_for().upload([sent(1)])

    assert result == UploadResult(uploaded=1)
    assert time.monotonic() - began >= 0.2

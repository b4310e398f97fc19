"""Playbooks that trigger on, gate on or exclude an Amplitude cohort."""

from __future__ import annotations

import pytest

from orchestrator.engine import Engine
from orchestrator.state import Store
from orchestrator.tokens import InviteSigner


def on_cohort(playbook: str, cohort: str) -> str:
    return playbook.replace("event: report_shared", f"cohort: {cohort}")


def test_an_amplitude_cohort_trigger_loads_as_a_mixpanel_one_does(
    folder, minimal_playbook
) -> None:
    """`amplitude:<id>` is a cohort trigger whose source is the cohort itself."""
    book = folder.playbook(on_cohort(minimal_playbook, "amplitude:7khm89cz"))

    catalog = folder.load()

    assert book.problems_in(catalog) == []
    trigger = catalog.playbooks[0].playbook.trigger
    assert trigger.kind == "cohort"
    assert trigger.source == "amplitude:7khm89cz"


def test_the_engine_names_amplitude_cohorts_that_trigger_gate_and_exclude(
    folder, minimal_playbook, store: Store
) -> None:
    """Triggers, exclusions: the engine keeps a membership for each."""
    text = on_cohort(minimal_playbook, "amplitude:7khm89cz")
    text += "audience:\n  exclude: [amplitude:0x4Bq2, mixpanel:61002]\n"
    folder.playbook(text)
    catalog = folder.load()
    assert not catalog.has_errors, catalog.problems

    engine = Engine(store, catalog, InviteSigner(["k" * 40]), {}, lambda k, ms: None)

    assert engine.cohorts() == {
        "amplitude:7khm89cz": True,
        "amplitude:0x4Bq2": False,
        "mixpanel:61002": False,
    }


@pytest.mark.parametrize(
    "cohort",
    [
        "amplitude:7khm-89cz",
        "amplitude:7khm_89cz",
        "amplitude:7khm%89cz",
        "amplitde:7khm89cz",
    ],
)
def test_a_malformed_amplitude_cohort_is_reported_at_its_line(
    folder, minimal_playbook, cohort: str
) -> None:
    """Amplitude cohort ids are letters and digits; the problem says so, there."""
    book = folder.playbook(on_cohort(minimal_playbook, cohort))

    catalog = folder.load()

    problems = book.problems_in(catalog)
    assert len(problems) == 1, problems
    assert problems[0].position == book.at(cohort)
    assert "amplitude:7khm89cz" in problems[0].message
    assert "letters and digits" in problems[0].message
    assert book.path in catalog.skipped


def test_a_malformed_amplitude_exclusion_is_reported_at_its_line(
    folder, minimal_playbook
) -> None:
    """An exclusion is checked as a trigger is."""
    text = minimal_playbook + "audience:\n  exclude:\n    - amplitude:no.dots\n"
    book = folder.playbook(text)

    problems = book.problems_in(folder.load())

    assert [p.position for p in problems] == [book.at("amplitude:no.dots")]

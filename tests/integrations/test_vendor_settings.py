"""Vendor settings from the workspace file: budgets by name, checked at load."""

from __future__ import annotations

from pathlib import Path

from integrations import vendors
from orchestrator.loader import load
from orchestrator.state import Store
from orchestrator.units import parse_cap

WORKSPACE = """\
name: budgets
vendors:
  customerio:
    budget: 100 per 1s
    budgets:
      customerio:broadcast: 1 per 30s
  braze:
    budgets:
      {braze_budget}: 1000 per 3s
"""

ENV = {
    "CUSTOMERIO_APP_API_KEY": "app-key",
    "BRAZE_API_KEY": "braze-key",
}


def _folder(tmp_path: Path, braze_budget: str = "braze:users-track") -> Path:
    (tmp_path / "referloop.yaml").write_text(
        WORKSPACE.format(braze_budget=braze_budget)
    )
    return tmp_path


def test_every_budget_of_a_vendor_can_be_set_in_the_workspace(
    tmp_path: Path, store: Store
) -> None:
    catalog = load([_folder(tmp_path)])
    built = vendors.build(catalog.workspace, ENV, store)
    try:
        customerio = built.senders["customerio"]
        braze = built.senders["braze"]
        budgets = {
            **customerio._budgets,  # type: ignore[attr-defined]
            **braze._budgets,  # type: ignore[attr-defined]
        }
    finally:
        built.close()

    assert not catalog.has_errors
    assert budgets["customerio:track"].cap == parse_cap("98 per 1s")  # 2% headroom
    assert budgets["customerio:broadcast"].cap == parse_cap("1 per 30s")
    assert budgets["customerio:app"].cap == parse_cap("10 per 1s")
    assert budgets["braze:users-track"].cap == parse_cap("980 per 3s")
    assert budgets["braze:messaging"].cap == parse_cap("245000 per 1h")


def test_a_budget_the_vendor_does_not_have_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    catalog = load([_folder(tmp_path, braze_budget="braze:sends")])

    problems = [p for p in catalog.problems if p.is_error]
    assert len(problems) == 1
    assert problems[0].position.line == 9
    assert "braze:sends" in problems[0].message
    assert "braze:users-track" in problems[0].message

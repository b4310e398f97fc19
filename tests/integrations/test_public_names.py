"""The public names of `integrations` and `orchestrator` are what `__all__` says."""

from __future__ import annotations

import inspect

import integrations
import orchestrator
from integrations import base
from orchestrator import errors


def test_every_public_class_of_the_adapter_contract_is_exported():
    """A class added to `integrations.base` is exported, or it is private."""
    public = {
        name
        for name, value in vars(base).items()
        if inspect.isclass(value)
        and value.__module__ == base.__name__
        and not name.startswith("_")
    }

    assert public <= set(integrations.__all__)


def test_every_error_is_exported_from_the_package():
    """Every error class of `orchestrator.errors` can be imported from the top."""
    public = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and value.__module__ == errors.__name__
    }

    assert public <= set(orchestrator.__all__)


def test_everything_in_all_exists():
    """No name in `__all__` is stale."""
    for package in (integrations, orchestrator):
        assert [n for n in package.__all__ if not hasattr(package, n)] == []

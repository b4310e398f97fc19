"""The referloop engine: the playbook language, its loader and the command line.

This package's top level holds only the error tree and problems, which the vendor
adapters in `integrations` import too; import the rest from its module
(`orchestrator.loader.load`, `orchestrator.model.Playbook`).
"""

from orchestrator.errors import (
    AmbiguousError,
    ConfigurationError,
    NotDue,
    PermanentError,
    PlaybookError,
    ReferloopError,
    TemplateError,
    TransientError,
    UsageError,
    VendorError,
)
from orchestrator.problems import Position, Problem, Severity

__all__ = [
    "AmbiguousError",
    "ConfigurationError",
    "NotDue",
    "PermanentError",
    "PlaybookError",
    "Position",
    "Problem",
    "ReferloopError",
    "Severity",
    "TemplateError",
    "TransientError",
    "UsageError",
    "VendorError",
]

"""The error tree of referloop, one branch for each party who must act.

ReferloopError
├── PlaybookError        the playbook author: file, line, what to write instead
├── ConfigurationError   the operator: the name of a missing or bad setting
├── UsageError           the person at the command line: what to ask for instead
├── TemplateError        a template that failed to render for one recipient
└── VendorError          a vendor's answer, mapped once at the adapter boundary
    ├── TransientError   try again later (timeouts, 5xx, 429), maybe after retry_after_s
    ├── PermanentError   do not try again (other 4xx), with the status
    └── AmbiguousError   the request may have been applied; resending may duplicate
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.problems import Problem


class ReferloopError(Exception):
    """The root of every error referloop raises on purpose."""


class PlaybookError(ReferloopError):
    """One or more playbooks or the workspace file cannot be used as written."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class ConfigurationError(ReferloopError):
    """A setting is missing or unusable; the message names it, never its value."""


class UsageError(ReferloopError):
    """A command asked for something that does not exist, such as an unknown step."""


class TemplateError(ReferloopError):
    """A Liquid template failed to render for one recipient's data.

    Only that delivery fails; the message names the playbook and the field, never
    the data that was rendered.
    """


class VendorError(ReferloopError):
    """A vendor answered in a way the engine must act on."""

    def __init__(self, vendor: str, message: str) -> None:
        self.vendor = vendor
        super().__init__(f"{vendor}: {message}")


class TransientError(VendorError):
    """The vendor may accept the same request later."""

    def __init__(
        self, vendor: str, message: str, retry_after_s: float | None = None
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(vendor, message)


class PermanentError(VendorError):
    """The vendor refused the request and will refuse it again."""

    def __init__(self, vendor: str, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(vendor, message)


class AmbiguousError(VendorError):
    """The request went out and no answer came back: it may have been applied."""


class NotDue(ReferloopError):
    """A cohort is not downloaded now, and nothing was sent for it.

    `reason` is `unchanged` (Amplitude has not recomputed it since the last
    download) or `too_soon` (within the minimum interval); `retry_after_s`
    says when a download may go, if ever sooner than the next recompute. The
    current snapshot stands: the caller skips this reconciliation.
    """

    def __init__(self, cohort: str, reason: str, retry_after_s: float | None) -> None:
        self.cohort = cohort
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"{cohort} is not downloaded now: {reason}")

"""Which vendors this process speaks to, built from the workspace and the environment.

Settings that are not secrets (regions, the Braze instance, the Mixpanel project,
Amplitude's residency, budgets) live in the workspace file, where a pull request
reviews them; credentials come from the environment, never from a file. A vendor
is configured when any of its credentials is set; a vendor half configured is
reported by `referloop doctor`, and a worker leaves it out with a warning that
names the settings missing.

`*_URL` variables replace a vendor's base URL, for a staging vendor or the
simulator; production leaves them unset.

Mixpanel and Amplitude both take referloop's events. With both configured (while
a team moves from one to the other), every event goes to each; both dedupe by
insert id, so an export that one of them could not take is sent to both again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from integrations import webhook
from integrations.amplitude import AmplitudeSink
from integrations.amplitude_cohorts import AmplitudeCohorts
from integrations.amplitude_export import AmplitudeExport
from integrations.base import (
    Check,
    CohortSource,
    EventSink,
    LoopEvent,
    RewardTarget,
    Sender,
)
from integrations.braze import BrazeSender
from integrations.customerio import CustomerIOChannel
from integrations.intercom import IntercomSender
from integrations.mixpanel import DEFAULT_OUTPUT_PROPERTIES, MixpanelAdapter
from integrations.mixpanel_export import MixpanelExport
from integrations.webhook import WebhookChannel, WebhookRewards
from orchestrator.errors import (
    ConfigurationError,
    PermanentError,
    ReferloopError,
    TransientError,
)
from orchestrator.model import Workspace
from orchestrator.state import Store
from orchestrator.units import Cap

logger = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured"


@dataclass(frozen=True)
class VendorSettings:
    """The environment variables of one vendor: which are secret, which required."""

    vendor: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    # Any one of these groups complete is enough (Customer.io's two APIs).
    alternatives: tuple[tuple[str, ...], ...] = ()

    def given(self, env: Mapping[str, str]) -> dict[str, str]:
        names = {*self.required, *self.optional, *_flat(self.alternatives)}
        return {name: env[name] for name in names if env.get(name)}

    def configured(self, env: Mapping[str, str]) -> bool:
        secrets = {*self.required, *_flat(self.alternatives)}
        return any(env.get(name) for name in secrets)

    def missing(self, env: Mapping[str, str]) -> list[str]:
        absent = [name for name in self.required if not env.get(name)]
        if self.alternatives and not any(
            all(env.get(name) for name in group) for group in self.alternatives
        ):
            absent += [
                " + ".join(group)
                for group in self.alternatives
                if not all(env.get(name) for name in group)
            ]
        return absent


def _flat(groups: tuple[tuple[str, ...], ...]) -> list[str]:
    return [name for group in groups for name in group]


SETTINGS: dict[str, VendorSettings] = {
    "customerio": VendorSettings(
        "customerio",
        required=(),
        optional=("CUSTOMERIO_APP_URL", "CUSTOMERIO_TRACK_URL"),
        alternatives=(
            ("CUSTOMERIO_APP_API_KEY",),
            ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_TRACK_API_KEY"),
        ),
    ),
    "braze": VendorSettings(
        "braze", required=("BRAZE_API_KEY",), optional=("BRAZE_REST_URL",)
    ),
    "intercom": VendorSettings(
        "intercom", required=("INTERCOM_ACCESS_TOKEN",), optional=("INTERCOM_URL",)
    ),
    "mixpanel": VendorSettings(
        "mixpanel",
        required=("MIXPANEL_SERVICE_ACCOUNT", "MIXPANEL_SERVICE_SECRET"),
        optional=(
            "MIXPANEL_PROJECT_ID",
            "MIXPANEL_QUERY_URL",
            "MIXPANEL_INGESTION_URL",
            "MIXPANEL_EXPORT_URL",
            "MIXPANEL_ACCOUNT_PROPERTY",
        ),
    ),
    "amplitude": VendorSettings(
        "amplitude",
        required=("AMPLITUDE_API_KEY",),
        # The secret key is for the cohort API; uploading events needs none.
        optional=(
            "AMPLITUDE_SECRET_KEY",
            "AMPLITUDE_HTTP_URL",
            "AMPLITUDE_DASHBOARD_URL",
            "AMPLITUDE_ACCOUNT_PROPERTY",
        ),
    ),
    "webhook": VendorSettings(
        "webhook",
        required=("WEBHOOK_BASE_URL", "WEBHOOK_SECRETS"),
        optional=("WEBHOOK_GRANTS_PATH", "WEBHOOK_NUDGES_PATH", "WEBHOOK_HEALTH_PATH"),
    ),
}

# User fields Mixpanel keeps under a reserved `$` name, asked for by that name.
_RESERVED = {"email", "first_name", "last_name", "name", "time_zone"}

# The budget each workspace `vendors.<name>.budget` sets.
MAIN_BUDGETS = {
    "customerio": "customerio:track",
    "braze": "braze:messaging",
    "intercom": "intercom:api",
    "mixpanel": "mixpanel:query",
    "amplitude": "amplitude:upload",
}


@dataclass
class Vendors:
    """The adapters of the configured vendors, ready to use.

    `senders` by channel name, `sources` by cohort vendor (`mixpanel`), the
    analytics `sinks` by vendor and the `sink` that records to all of them, the
    product's `rewards`; `problems` names each vendor that
    is half configured, with what is missing.
    """

    senders: dict[str, Sender] = field(default_factory=dict)
    sources: dict[str, CohortSource] = field(default_factory=dict)
    sink: EventSink | None = None
    sinks: dict[str, EventSink] = field(default_factory=dict)
    rewards: RewardTarget | None = None
    problems: dict[str, str] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self._closers:
            close()

    def every_adapter(self) -> list[Any]:
        """Every adapter built, once each, whatever its role or name: one vendor
        may serve several roles through one adapter, or through several."""
        return _unique(
            [
                *self.senders.values(),
                *self.sources.values(),
                *self.sinks.values(),
                *([self.rewards] if self.rewards is not None else []),
            ]
        )

    def adapters(self) -> dict[str, Any]:
        """Every adapter built, by vendor name (a vendor may serve several roles)."""
        found: dict[str, Any] = dict(self.senders)
        for source in self.sources.values():
            found.setdefault(source.name, source)
        for sink in self.sinks.values():
            found.setdefault(sink.name, sink)
        if self.rewards is not None:
            found.setdefault(self.rewards.name, self.rewards)
        return found

    def add_sink(self, sink: EventSink) -> None:
        """Take `sink` as an analytics sink, beside any other one."""
        self.sinks[sink.name] = sink
        found = list(self.sinks.values())
        self.sink = found[0] if len(found) == 1 else EverySink(found)


class EverySink:
    """Records each batch of events to several sinks (Mixpanel and Amplitude).

    Every sink is tried. A `TransientError` from any of them is raised once all
    were tried, so the batch is exported again to all: each dedupes by insert id.
    A `PermanentError` is raised only when every sink refused the batch; a
    refusal by one while another took it is logged.
    """

    name: ClassVar[str] = "analytics"

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = sinks

    def record(self, events: Sequence[LoopEvent]) -> None:
        transient: TransientError | None = None
        refused: list[PermanentError] = []
        for sink in self.sinks:
            try:
                sink.record(events)
            except TransientError as exc:
                transient = transient or exc
            except PermanentError as exc:
                logger.warning("%s refused %d events: %s", sink.name, len(events), exc)
                refused.append(exc)
        if transient is not None:
            raise transient
        if len(refused) == len(self.sinks):
            raise refused[0]


def configured(env: Mapping[str, str]) -> list[str]:
    """The vendors with any credential set in `env`."""
    return [name for name, settings in SETTINGS.items() if settings.configured(env)]


def build(workspace: Workspace, env: Mapping[str, str], store: Store | None) -> Vendors:
    """Build an adapter for each configured vendor.

    A vendor whose settings are incomplete or wrong is left out and named in
    `problems`; the others are built.
    """
    vendors = Vendors()
    for name in configured(env):
        missing = SETTINGS[name].missing(env)
        if missing:
            vendors.problems[name] = "missing " + ", ".join(missing)
            continue
        try:
            _BUILDERS[name](vendors, workspace, env, store)
        except ReferloopError as exc:
            vendors.problems[name] = str(exc)
    for name, problem in vendors.problems.items():
        logger.warning("Vendor %s is not used: %s.", name, problem)
    return vendors


def checks(workspace: Workspace, env: Mapping[str, str]) -> list[Check]:
    """What `referloop doctor` reports: each vendor's settings, then its calls."""
    found: list[Check] = []
    for name, settings in SETTINGS.items():
        if not settings.configured(env):
            found.append(Check(name, "settings", True, NOT_CONFIGURED))
            continue
        missing = settings.missing(env)
        if missing:
            found.append(
                Check(name, "settings", False, "missing " + ", ".join(missing))
            )
            continue
        found.append(Check(name, "settings", True, "complete"))
        built = Vendors()
        try:
            _BUILDERS[name](built, workspace, env, None)
            for adapter in built.every_adapter():
                found += adapter.check()
        except ReferloopError as exc:
            found.append(Check(name, "settings", False, str(exc)))
        finally:
            built.close()
    return found


def _unique(adapters: Any) -> list[Any]:
    seen: list[Any] = []
    for adapter in adapters:
        if all(adapter is not other for other in seen):
            seen.append(adapter)
    return seen


def _budgets(
    name: str, cap: Cap, others: Mapping[str, Cap] | None = None
) -> dict[str, Cap]:
    return {MAIN_BUDGETS[name]: cap, **(others or {})}


def _customerio(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    settings = workspace.vendors.customerio
    sender = CustomerIOChannel(
        settings.region,
        env.get("CUSTOMERIO_APP_URL") or None,
        env.get("CUSTOMERIO_TRACK_URL") or None,
        app_api_key=env.get("CUSTOMERIO_APP_API_KEY") or None,
        site_id=env.get("CUSTOMERIO_SITE_ID") or None,
        track_api_key=env.get("CUSTOMERIO_TRACK_API_KEY") or None,
        store=store,
        budgets=_budgets("customerio", settings.budget, settings.budgets),
    )
    vendors.senders[sender.name] = sender
    vendors._closers.append(sender.close)


def _braze(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    settings = workspace.vendors.braze
    sender = BrazeSender(
        env["BRAZE_API_KEY"],
        env.get("BRAZE_REST_URL") or settings.rest_url,
        store=store,
        budgets=_budgets("braze", settings.budget, settings.budgets),
    )
    vendors.senders[sender.name] = sender
    vendors._closers.append(sender.close)


def _intercom(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    settings = workspace.vendors.intercom
    sender = IntercomSender(
        env["INTERCOM_ACCESS_TOKEN"],
        region=settings.region,
        base_url=env.get("INTERCOM_URL") or None,
        store=store,
        budgets=_budgets("intercom", settings.budget),
    )
    vendors.senders[sender.name] = sender
    vendors._closers.append(sender.close)


def _mixpanel(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    settings = workspace.vendors.mixpanel
    extra: dict[str, Any] = {"output_properties": _profile_properties(workspace)}
    if env.get("MIXPANEL_ACCOUNT_PROPERTY"):
        extra["account_property"] = env["MIXPANEL_ACCOUNT_PROPERTY"]
    adapter = MixpanelAdapter(
        env["MIXPANEL_SERVICE_ACCOUNT"],
        env["MIXPANEL_SERVICE_SECRET"],
        _mixpanel_project(workspace, env),
        residency=settings.residency,
        query_url=env.get("MIXPANEL_QUERY_URL") or None,
        ingestion_url=env.get("MIXPANEL_INGESTION_URL") or None,
        store=store,
        budgets=_budgets("mixpanel", settings.budget, settings.budgets),
        **extra,
    )
    vendors.sources[adapter.name] = adapter
    vendors.add_sink(adapter)
    vendors._closers.append(adapter.close)


def _amplitude(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    settings = workspace.vendors.amplitude
    sink = AmplitudeSink(
        env["AMPLITUDE_API_KEY"],
        residency=settings.residency,
        base_url=env.get("AMPLITUDE_HTTP_URL") or None,
        store=store,
        budgets=_budgets("amplitude", settings.budget, settings.budgets),
    )
    vendors.add_sink(sink)
    vendors._closers.append(sink.close)
    if env.get("AMPLITUDE_SECRET_KEY"):
        # Cohorts come by webhook; a download now and then reconciles them. Its
        # budgets are shared in Redis; `doctor`, with no Redis, counts alone.
        extra: dict[str, Any] = {}
        if env.get("AMPLITUDE_ACCOUNT_PROPERTY"):
            extra["account_property"] = env["AMPLITUDE_ACCOUNT_PROPERTY"]
        cohorts = AmplitudeCohorts(
            env["AMPLITUDE_API_KEY"],
            env["AMPLITUDE_SECRET_KEY"],
            store or Store.in_memory(),
            residency=settings.residency,
            base_url=env.get("AMPLITUDE_DASHBOARD_URL") or None,
            properties=list(workspace.fields.user),
            min_interval=settings.download_every,
            monthly_downloads=settings.downloads_per_month,
            **extra,
        )
        vendors.sources[cohorts.name] = cohorts
        vendors._closers.append(cohorts.close)


def mixpanel_export(workspace: Workspace, env: Mapping[str, str]) -> MixpanelExport:
    """Mixpanel's raw event export, set up from the same settings as the worker's
    and `referloop doctor`'s Mixpanel: the service account and project id from
    `env` (or the project id from the workspace), the residency from the
    workspace, and MIXPANEL_EXPORT_URL in place of the residency's host.

    Close it when done, or use it as a context manager.

    Raises:
        ConfigurationError: a setting is missing or wrong; the message names it.
    """
    missing = SETTINGS["mixpanel"].missing(env)
    if missing:
        raise ConfigurationError(
            "the Mixpanel export needs the service account: set " + ", ".join(missing)
        )
    return MixpanelExport(
        env["MIXPANEL_SERVICE_ACCOUNT"],
        env["MIXPANEL_SERVICE_SECRET"],
        _mixpanel_project(workspace, env),
        residency=workspace.vendors.mixpanel.residency,
        export_url=env.get("MIXPANEL_EXPORT_URL") or None,
    )


def amplitude_export(workspace: Workspace, env: Mapping[str, str]) -> AmplitudeExport:
    """Amplitude's raw event export, set up from the same settings as the
    worker's cohort downloads: the project's keys from `env`, the residency from
    the workspace, and AMPLITUDE_DASHBOARD_URL in place of the residency's host.

    Close it when done, or use it as a context manager.

    Raises:
        ConfigurationError: a key is missing; the message names it.
    """
    keys = ("AMPLITUDE_API_KEY", "AMPLITUDE_SECRET_KEY")
    missing = [name for name in keys if not env.get(name)]
    if missing:
        raise ConfigurationError(
            "the Amplitude export needs the project's keys: set " + ", ".join(missing)
        )
    return AmplitudeExport(
        env["AMPLITUDE_API_KEY"],
        env["AMPLITUDE_SECRET_KEY"],
        residency=workspace.vendors.amplitude.residency,
        base_url=env.get("AMPLITUDE_DASHBOARD_URL") or None,
    )


def _mixpanel_project(workspace: Workspace, env: Mapping[str, str]) -> int:
    project = env.get("MIXPANEL_PROJECT_ID") or workspace.vendors.mixpanel.project_id
    if project is None:
        raise ConfigurationError(
            "Mixpanel needs a project: set `vendors.mixpanel.project_id` in the "
            "workspace file or MIXPANEL_PROJECT_ID"
        )
    if not str(project).isdigit():
        raise ConfigurationError("MIXPANEL_PROJECT_ID must be a number")
    return int(project)


def _profile_properties(workspace: Workspace) -> tuple[str, ...]:
    """The profile properties to ask Engage for: the reserved ones referloop reads
    and every user field the workspace declares (templates and gates may read
    only those), so that pages stay small."""
    declared = [name for name in workspace.fields.user if name not in _RESERVED]
    return (*DEFAULT_OUTPUT_PROPERTIES, *declared)


def _webhook(
    vendors: Vendors, workspace: Workspace, env: Mapping[str, str], store: Store | None
) -> None:
    url, keys = env["WEBHOOK_BASE_URL"], env["WEBHOOK_SECRETS"]
    health = env.get("WEBHOOK_HEALTH_PATH") or webhook.DEFAULT_HEALTH_PATH
    channel = WebhookChannel(
        url,
        keys,
        nudges_path=env.get("WEBHOOK_NUDGES_PATH") or webhook.DEFAULT_NUDGES_PATH,
        health_path=health,
        store=store,
    )
    rewards = WebhookRewards(
        url,
        keys,
        grants_path=env.get("WEBHOOK_GRANTS_PATH") or webhook.DEFAULT_GRANTS_PATH,
        health_path=health,
        store=store,
    )
    vendors.senders[channel.name] = channel
    vendors.rewards = rewards
    vendors._closers += [channel.close, rewards.close]


_BUILDERS: dict[
    str, Callable[[Vendors, Workspace, Mapping[str, str], Store | None], None]
] = {
    "customerio": _customerio,
    "braze": _braze,
    "intercom": _intercom,
    "mixpanel": _mixpanel,
    "amplitude": _amplitude,
    "webhook": _webhook,
}

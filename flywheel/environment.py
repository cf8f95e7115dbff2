"""Every stage's settings, read from the environment once, at an edge: a CLI command, a flow run, a worker start.

Library code never reads the environment: it takes its stage's settings object as an argument, so a caller (or a
test) decides every value. `Environment.load()` is what an edge calls; `GROUPS` names each stage's settings, their
variables' prefix and where they live, for `flywheel config` and for the test that fails when a `FLYWHEEL_*`
variable the code mentions is missing from it.

This module sits at the edge with the CLI and the flows: it imports every stage's settings, and nothing below the
edge imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flywheel.config import ENV_PREFIX, Settings, describe
from flywheel.flows.settings import ServeSettings
from flywheel.infra.demo import DemoSettings
from flywheel.logs import LogSettings
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.metrics import MetricsSettings
from flywheel.streams.signals import SignalSettings
from flywheel.warehouse.alerts.outbox import AlertSettings
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.jobs.settings import JobSettings
from flywheel.warehouse.maintenance import MaintenanceSettings
from flywheel.warehouse.quality.settings import QualitySettings


@dataclass(frozen=True)
class Environment:
    """The settings of every stage, as one value an edge reads once and passes down piece by piece."""

    core: Settings
    quality: QualitySettings
    maintenance: MaintenanceSettings
    drift: DriftSettings
    alerts: AlertSettings
    signals: SignalSettings
    demo: DemoSettings
    evaluation: EvalSettings
    jobs: JobSettings
    collector: CollectorSettings
    serve: ServeSettings
    datasets: DatasetSettings
    logs: LogSettings
    metrics: MetricsSettings

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """Read and check every setting; a malformed one is a `ConfigError` naming its variable."""
        return cls(core=Settings.from_env(environ), quality=QualitySettings.from_env(environ),
                   maintenance=MaintenanceSettings.from_env(environ), drift=DriftSettings.from_env(environ),
                   alerts=AlertSettings.from_env(environ), signals=SignalSettings.from_env(environ),
                   demo=DemoSettings.from_env(environ), evaluation=EvalSettings.from_env(environ),
                   jobs=JobSettings.from_env(environ), collector=CollectorSettings.from_env(environ),
                   serve=ServeSettings.from_env(environ),
                   datasets=DatasetSettings.from_env(environ), logs=LogSettings.from_env(environ),
                   metrics=MetricsSettings.from_env(environ))

    @classmethod
    def defaults(cls, core: Settings | None = None) -> Environment:
        """Every stage at its defaults (on `core`, if given): what a program that sets nothing gets."""
        return cls(core=core or Settings(), quality=QualitySettings(), maintenance=MaintenanceSettings(),
                   drift=DriftSettings(), alerts=AlertSettings(), signals=SignalSettings(), demo=DemoSettings(),
                   evaluation=EvalSettings(), jobs=JobSettings(), collector=CollectorSettings(),
                   serve=ServeSettings(), datasets=DatasetSettings(), logs=LogSettings(),
                   metrics=MetricsSettings())


@dataclass(frozen=True)
class Group:
    """One stage's settings: a title, the attribute of `Environment` holding them, their class and prefix."""

    title: str
    attribute: str
    cls: type
    prefix: str

    def rows(self, env: Environment | None = None) -> list[tuple[str, str, str, str]]:
        """(variable, default, current value or '', doc) per setting; secrets never show their value."""
        current = getattr(env, self.attribute) if env is not None else None
        out = []
        for var, default, doc in describe(self.cls, self.prefix):
            name = next(f for f in _field_names(self.cls) if _variable(self.cls, self.prefix, f) == var)
            v = getattr(current, name) if current is not None else None
            if current is None:
                value = ""
            elif hasattr(v, "reveal"):  # a secret: say whether it is set, never what it is
                value = "(set)" if v else "(not set)"
            else:
                value = str(v)
            out.append((var, default, value, doc))
        return out


def _field_names(cls: type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls) if f.init]


def _variable(cls: type, prefix: str, name: str) -> str:
    return getattr(cls, "ENV_NAMES", {}).get(name, prefix + name.upper())


GROUPS: tuple[Group, ...] = (
    Group("Core: broker, topics, landing worker, lake", "core", Settings, ENV_PREFIX),
    Group("Quality gates (flywheel quality)", "quality", QualitySettings, "FLYWHEEL_QUALITY_"),
    Group("Lake maintenance (flywheel lake)", "maintenance", MaintenanceSettings, "FLYWHEEL_LAKE_"),
    Group("Drift detection (flywheel drift)", "drift", DriftSettings, "FLYWHEEL_DRIFT_"),
    Group("Alerts and Slack (flywheel alerts)", "alerts", AlertSettings, "FLYWHEEL_ALERTS_"),
    Group("Live signals (flywheel signals)", "signals", SignalSettings, "FLYWHEEL_SIGNALS_"),
    Group("Evaluation and releases (flywheel eval, flywheel release)", "evaluation", EvalSettings, "FLYWHEEL_EVAL_"),
    Group("Triggers and jobs (flywheel jobs)", "jobs", JobSettings, "FLYWHEEL_JOBS_"),
    Group("Curation and datasets (flywheel curate, flywheel datasets)", "datasets", DatasetSettings,
          "FLYWHEEL_DATASETS_"),
    Group("The demo (flywheel demo)", "demo", DemoSettings, "FLYWHEEL_DEMO_"),
    Group("HTTP and OpenTelemetry collector (flywheel collect)", "collector", CollectorSettings,
          "FLYWHEEL_COLLECTOR_"),
    Group("Schedules and serving (flywheel serve)", "serve", ServeSettings, "FLYWHEEL_SERVE_"),
    Group("Operations: logs (every command)", "logs", LogSettings, ENV_PREFIX),
    Group("Operations: metrics (flywheel ingest, flywheel signals)", "metrics", MetricsSettings, ENV_PREFIX),
)


def group(attribute: str) -> Group:
    return next(g for g in GROUPS if g.attribute == attribute)


def variables() -> set[str]:
    """Every `FLYWHEEL_*` variable a setting is read from."""
    return {var for g in GROUPS for var, _default, _doc in describe(g.cls, g.prefix)}

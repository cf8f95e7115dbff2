"""Every Prefect deployment of flywheel, in one declarative list, and `serve()`, which registers and runs them.

`DEPLOYMENTS` is the single source: `flywheel serve` builds its deployments from it (schedules from
`ServeSettings`), and `infra/prefect.yaml` (for `prefect deploy` on a work pool) is checked against it by
tests/flows/test_deployments.py. A new stage's flow is one more `Deployment(...)` row (plus its schedule field in
`ServeSettings` and its block in infra/prefect.yaml), as `dispatch` is.

A drift alert turns into curation through an automation: the `drift` flow emits one `flywheel.drift.alert` event
per alert (resource `flywheel.segment.<segment>`, see `flywheel.flows.drift.announce`), and every deployment marked
`on_drift_alert` carries a trigger on that event. Prefect creates the trigger's automation when the deployment is
registered and replaces it on every registration (it is owned by the deployment), so serving twice never makes two.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flywheel.errors import ConfigError, FlywheelError
from flywheel.flows.settings import ServeSettings

if TYPE_CHECKING:  # Prefect is imported when deployments are built, not when this module is
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger

log = logging.getLogger(__name__)

DRIFT_ALERT_EVENT = "flywheel.drift.alert"
"""The event the `drift` flow emits per alert; its resource id is `SEGMENT_RESOURCE` + the alert's segment."""

SEGMENT_RESOURCE = "flywheel.segment."


class PrefectUnavailable(FlywheelError):
    """The Prefect API in PREFECT_API_URL (`api_url`) does not answer. Retryable: start `prefect server start`, or
    fix PREFECT_API_URL (and PREFECT_API_KEY for Prefect Cloud)."""

    retryable = True

    def __init__(self, message: str, *, api_url: str) -> None:
        super().__init__(message, api_url=api_url)
        self.api_url = api_url


@dataclass(frozen=True)
class Deployment:
    """One deployment: its name (also its flow's name), the flow as `module:function`, and the `ServeSettings`
    field holding its cron."""

    name: str
    flow: str
    schedule: str
    optional: bool = False
    """A flow still being written: when its module does not import, serving skips it with a log line."""
    on_drift_alert: bool = False
    """Also run on every `flywheel.drift.alert` event (through a deployment trigger, i.e. an automation)."""

    @property
    def module(self) -> str:
        return self.flow.partition(":")[0]

    @property
    def entrypoint(self) -> str:
        """Its `prefect deploy` entrypoint: the flow's file relative to the repository root, and function."""
        module, _, function = self.flow.partition(":")
        return f"{module.removeprefix('flywheel.').replace('.', '/')}.py:{function}"

    def load(self) -> Flow | None:
        """The flow object; None (logged) for an optional flow whose module does not import. A required flow
        that does not import, or an attribute that is not a flow, is a `ConfigError`."""
        from prefect import Flow

        module, _, function = self.flow.partition(":")
        try:
            obj = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            if self.optional:
                # Not written yet is expected; written but broken is a bug to see (the tests import it too).
                missing = isinstance(exc, ModuleNotFoundError) and exc.name == module
                log.log(logging.WARNING if missing else logging.ERROR,
                        "deployment %s skipped: %s does not import %s(%s: %s)", self.name, self.flow,
                        "yet " if missing else "", type(exc).__name__, exc)
                return None
            raise ConfigError(f"deployment {self.name}: {self.flow} does not import ({type(exc).__name__}: {exc}); "
                              "fix the module or its row in flywheel.flows.deployments.DEPLOYMENTS") from exc
        if not isinstance(obj, Flow) or obj.name != self.name:
            raise ConfigError(f"deployment {self.name}: {self.flow} is not a Prefect flow named {self.name!r}")
        return obj


DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("lake-maintenance", "flywheel.flows.maintenance:maintenance_flow", "schedule_lake_maintenance"),
    Deployment("quality", "flywheel.flows.quality:quality_flow", "schedule_quality"),
    Deployment("drift", "flywheel.flows.drift:drift_flow", "schedule_drift"),
    Deployment("curate", "flywheel.flows.curate:curate_flow", "schedule_curate", optional=True, on_drift_alert=True),
    Deployment("dispatch", "flywheel.flows.dispatch:dispatch_flow", "schedule_dispatch"),
)


def drift_alert_trigger(deployment: str) -> DeploymentEventTrigger:
    """Run `deployment` (with its default parameters) once per drift alert, whatever the segment."""
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    return DeploymentEventTrigger(name=f"{deployment} on {DRIFT_ALERT_EVENT}", expect={DRIFT_ALERT_EVENT},
                                  match={"prefect.resource.id": f"{SEGMENT_RESOURCE}*"}, posture=Posture.Reactive,
                                  threshold=1)


def build(settings: ServeSettings, deployments: tuple[Deployment, ...] = DEPLOYMENTS) -> list[RunnerDeployment]:
    """The runner deployments to serve: every row whose flow imports, with its cron (none when its setting is
    `off`) and, for `on_drift_alert` rows, the drift-alert trigger (unless `drift_triggers` is off). Runs of one
    deployment never overlap."""
    from prefect.deployments.runner import RunnerDeployment

    out = []
    for d in deployments:
        flow = d.load()
        if flow is None:
            continue
        cron = settings.schedule(d.schedule)
        triggered = d.on_drift_alert and settings.drift_triggers
        dep = flow.to_deployment(
            name=d.name, cron=cron or None, tags=["flywheel"], concurrency_limit=1,
            triggers=[drift_alert_trigger(d.name)] if triggered else None,
            description=(flow.description or "").split("\n\n")[0] or None)
        assert isinstance(dep, RunnerDeployment)  # called outside an event loop, so not a coroutine
        out.append(dep)
    return out


def serve(settings: ServeSettings, deployments: tuple[Deployment, ...] = DEPLOYMENTS) -> None:
    """Register the deployments (and their automations) with the Prefect API in PREFECT_API_URL, then run their
    scheduled and triggered runs in this process until Ctrl-C or SIGTERM (Prefect's runner cancels the runs in
    flight); once the runner has started, the deployments are paused on the way out, so a stopped `flywheel serve`
    leaves no schedule piling up runs nobody executes."""
    from prefect import serve as prefect_serve
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    built = build(settings, deployments)
    url = PREFECT_API_URL.value()
    if url:  # without one, Prefect starts a temporary server of its own
        with get_client(sync_client=True) as client:
            failure = client.api_healthcheck()
        if failure is not None:
            raise PrefectUnavailable(f"the Prefect API at {url} does not answer ({type(failure).__name__}: "
                                     f"{failure}); start `prefect server start` or fix PREFECT_API_URL "
                                     "(and PREFECT_API_KEY for Prefect Cloud)", api_url=url)
    for dep in built:
        log.info("serving %s/%s (%s)", dep.flow_name, dep.name,
                 ", ".join(str(s.schedule.cron) for s in dep.schedules or []  # type: ignore[union-attr]
                           ) or "not scheduled")
    prefect_serve(*built, limit=settings.limit)

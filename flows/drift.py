"""The `drift` flow: batch drift detection, then delivery of its alerts, as a Prefect flow.

A thin wrapper over `flywheel.warehouse.drift.run_drift` and `flywheel.warehouse.alerts.outbox.SlackSender` (which work
without Prefect). Drift found is a result, not a failure: the flow succeeds and returns what drifted. Errors a
retry can help with (`retryable`) are retried; alerts Slack did not take yet stay in the outbox for the next run
(or `flywheel alerts send`), so a Slack outage never fails or loses a run. Each alert is also announced to Prefect as
a `flywheel.drift.alert` event (`announce`), which the `curate` deployment's automation answers with a curation run,
and handed to the `dispatch` flow (a subflow: the trigger policies' `drift_alert` jobs, each started once). A failed
job is recorded in the jobs table and in the result (`jobs`), not a failure of the drift run.

    from flywheel.flows.drift import drift_flow
    drift_flow.serve(name="daily-drift", cron="15 0 * * *")   # or drift_flow(current="1d") once
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flywheel.commands.options import alert_next_steps
from flywheel.environment import Environment
from flywheel.flows.deployments import DRIFT_ALERT_EVENT, SEGMENT_RESOURCE
from flywheel.flows.dispatch import dispatch_flow
from flywheel.flows.retry import retry_if_retryable
from flywheel.schemas.alerts import Alert
from flywheel.warehouse.alerts.outbox import Outbox, SlackSender
from flywheel.warehouse.drift.run import run_drift


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def detect(env: Environment, current: str | None, reference: str | None, by: str | None,
           reports: bool) -> dict[str, Any]:
    """One drift run (stored in `drift_runs`, alerts queued in the outbox)."""
    settings, alerts = env.core, env.alerts
    run = run_drift(settings, env.drift, current=current, reference=reference, by=by,
                    reports=reports, sink=Outbox.from_settings(settings.home, alerts),
                    next_steps=next_steps(env))
    return {"run_id": run.run_id, "window": run.window.label, "reference": run.reference,
            "n_current": run.n_current, "n_reference": run.n_reference, "checks": len(run.effects),
            "drifted": sorted({f"{e.segment}: {e.feature}" for e in run.drifted}),
            "alerts": [json.loads(a.to_json()) for a in run.alerts],
            "reports": run.reports, "timings": run.timings}


def next_steps(env: Environment) -> Callable[[Alert], tuple[str, ...]]:
    """What follows a drift alert of this flow run: the trigger policies the `dispatch` subflow hands it to
    (`alert_next_steps`, the policy file read once), and the `curate` automation, which `flywheel serve`
    registers with the deployments it serves (unless FLYWHEEL_SERVE_DRIFT_TRIGGERS is off); a run outside a
    deployment starts no automation."""
    from prefect.runtime import deployment

    from flywheel.warehouse.jobs.dispatch import NOTHING_RUNS

    policy_steps = alert_next_steps(env)
    automation = (("the Prefect automation starts a `curate` run (FLYWHEEL_SERVE_DRIFT_TRIGGERS)",)
                  if env.serve.drift_triggers and deployment.id else ())

    def steps(alert: Alert) -> tuple[str, ...]:
        found = tuple(s for s in policy_steps(alert) if s != NOTHING_RUNS) + automation
        return found or ("nothing runs automatically (no trigger policy matches, and no drift-alert automation: "
                         "FLYWHEEL_SERVE_DRIFT_TRIGGERS is off or the flow runs outside `flywheel serve`)",)

    return steps


@task(cache_policy=NO_CACHE)
def deliver(env: Environment, wait_s: float) -> dict[str, int]:
    """Post due alerts; what Slack does not take now waits in the outbox (never an error)."""
    settings, alerts = env.core, env.alerts
    box = Outbox.from_settings(settings.home, alerts)
    if not alerts.webhook:
        return {"delivered": 0, "pending": box.pending(), "failed": 0}
    sender = SlackSender(box, alerts)
    rep = sender.drain(wait_s) if wait_s > 0 else sender.deliver()
    return {"delivered": rep.delivered, "pending": box.pending(), "failed": rep.failed}


def announce(alerts: Sequence[Alert]) -> int:
    """Emit one `flywheel.drift.alert` Prefect event per alert (resource `flywheel.segment.<segment>`, the alert as
    payload); returns how many were handed to Prefect's events client (0 when none is configured). The event id
    derives from `Alert.dedup_key`, so a re-run over the same window repeats the id rather than minting a new alert."""
    sent = 0
    for alert in alerts:
        event = emit_event(
            DRIFT_ALERT_EVENT, id=uuid.uuid5(uuid.NAMESPACE_URL, f"{DRIFT_ALERT_EVENT}:{alert.dedup_key}"),
            resource={"prefect.resource.id": SEGMENT_RESOURCE + alert.segment, "prefect.resource.name": alert.segment,
                      "flywheel.kind": alert.kind, "flywheel.window": alert.window},
            payload=json.loads(alert.to_json()))
        sent += event is not None
    return sent


@flow(name="drift")
def drift_flow(current: str | None = None, reference: str | None = None, by: str | None = None,
               reports: bool = True, deliver_wait_s: float = 30.0) -> dict[str, Any]:
    """Detect drift for the current window (default: the last complete FLYWHEEL_DRIFT_WINDOW) against the
    reference (default: FLYWHEEL_DRIFT_REFERENCE), then deliver alerts for up to `deliver_wait_s` seconds."""
    env = Environment.load()  # a flow run is an edge: its settings are read once, here, and passed down
    result = detect(env, current, reference, by, reports)
    result["announced"] = announce([Alert.from_json(json.dumps(a)) for a in result["alerts"]])
    if result["alerts"]:
        state = dispatch_flow(alerts=result["alerts"], datasets=False, return_state=True)
        result["jobs"] = state.result() if state.is_completed() else {"error": state.message}
    result["delivery"] = deliver(env, deliver_wait_s)
    get_run_logger().info("drift %s: %d checks, %d drifted, %d alerts, delivery %s", result["window"],
                          result["checks"], len(result["drifted"]), len(result["alerts"]), result["delivery"])
    return result

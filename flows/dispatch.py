"""The `dispatch` flow: events handed to the trigger policies (`flywheel.warehouse.jobs`), as a Prefect flow.

Two ways in: the `drift` flow hands it its run's alerts (a subflow call: it works with a Prefect server and without
one), and its schedule (FLYWHEEL_SCHEDULE_DISPATCH) hands it the latest version of every dataset a `dataset` policy
watches, which catches up on versions nobody dispatched (curated before the policy file existed, a run stopped
before it dispatched; only the latest version counts: an older one it skipped stays skipped), and the latest tick
of every `schedule` policy's cron (a tick starts its job once, at the first dispatch at or after it: the flow's
schedule is how late a tick can start).

Guarantees:
- Each (policy, event) starts once, whoever dispatches it: this flow, another run of it, `flywheel curate` or
  `flywheel drift run`; the jobs table's claim decides (see `flywheel.warehouse.jobs.store`).
- Errors a retry can help with (the registry busy: `retryable`) are retried; a malformed policy or targets file fails
  the run at once, naming the file and the key. A job whose target failed is recorded with its output and fails the
  run at the end (`JobsFailed`, naming the jobs), so a scheduler notices; `flywheel jobs retry ID` starts it again.

    from flywheel.flows.dispatch import dispatch_flow
    dispatch_flow()                       # the latest versions of the watched datasets
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flywheel.commands.options import JobsRuntime, due_ticks, jobs_runtime, watched_versions
from flywheel.environment import Environment
from flywheel.errors import FlywheelError
from flywheel.flows.retry import retry_if_retryable
from flywheel.schemas.alerts import Alert
from flywheel.warehouse.jobs.dispatch import DatasetVersion, Event, Tick, dispatch
from flywheel.warehouse.jobs.store import Job


class JobsFailed(FlywheelError):
    """Jobs this run started failed (`job_ids`); each is recorded with its error and output."""

    def __init__(self, message: str, *, job_ids: list[int]) -> None:
        super().__init__(message, job_ids=job_ids)
        self.job_ids = job_ids


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def latest_versions(env: Environment, rt: JobsRuntime) -> list[DatasetVersion]:
    """The latest published version of every dataset a `dataset` policy watches (none yet: nothing)."""
    return watched_versions(env, rt)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def schedule_ticks(env: Environment, rt: JobsRuntime) -> list[Tick]:
    """The latest cron tick of every `schedule` policy (each starts its job once: the tick is its subject)."""
    return due_ticks(env, rt)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def start_jobs(rt: JobsRuntime, events: list[Event]) -> list[Job]:
    """Start every matching job not started before (a retry of this task skips what the first attempt claimed)."""
    return dispatch(rt.policies.values(), events, rt.store, rt.secrets, rt.evaluation, rt.latest)


@flow(name="dispatch")
def dispatch_flow(alerts: list[dict[str, Any]] | None = None, datasets: bool = True) -> dict[str, Any]:
    """Hand `alerts` (drift alerts as JSON objects, as the `drift` flow returns them) and, with `datasets`, the
    latest version of every watched dataset to the trigger policies. Returns the jobs it started; fails, naming
    them, when any of them failed."""
    env = Environment.load()  # a flow run is an edge: its settings are read once, here, and passed down
    log = get_run_logger()
    rt = jobs_runtime(env)
    if rt is None:
        log.info("no policy file at %s: nothing to dispatch", env.jobs.policies_path(env.core.home))
        return {"events": 0, "jobs": []}
    events: list[Event] = [Alert.from_json(json.dumps(a)) for a in alerts or []]
    if datasets:
        events += latest_versions(env, rt)
        events += schedule_ticks(env, rt)
    started = start_jobs(rt, events) if events else []
    for j in started:
        log.info("policy %s started job %d (%s) on %s: %s", j.policy, j.id, j.target, j.subject, j.status)
    out = {"events": len(events), "jobs": [{"id": j.id, "policy": j.policy, "subject": j.subject,
                                             "target": j.target, "status": j.status, "result": j.result,
                                             "error": j.error} for j in started]}
    failed = [j for j in started if j.status == "failed"]
    if failed:
        raise JobsFailed("jobs failed: " + "; ".join(f"{j.id} ({j.policy} on {j.subject}): {j.error}" for j in failed)
                         + " (recorded with their output: `flywheel jobs show ID`, `flywheel jobs retry ID`)",
                         job_ids=[j.id for j in failed])
    return out

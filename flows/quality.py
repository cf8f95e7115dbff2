"""The `quality` flow: the quality gates over the window since the previous run, as a Prefect flow.

A thin wrapper over `flywheel.warehouse.quality.run_quality` (which works without Prefect). A failed gate fails the
flow run (`QualityGateFailed`), so a scheduler, an automation or a human notices; the results and the suspect
window are already stored in `quality_runs` by then. Errors that a retry can help with (`retryable`) are retried.

    from flywheel.flows.quality import quality_flow
    quality_flow.serve(name="hourly-quality", cron="5 * * * *")   # or call quality_flow() once
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flywheel.environment import Environment
from flywheel.flows.retry import retry_if_retryable
from flywheel.warehouse.quality.gates import QualityGateFailed, QualityRun, run_quality
from flywheel.warehouse.quality.report import summary


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def run_gates(env: Environment, since: datetime | None, until: datetime | None,
              tables: list[str] | None) -> QualityRun:
    """Validate and store one run; retried only on errors marked retryable (a failed gate is not an error here)."""
    return run_quality(env.core, env.quality, since=since, until=until, tables=tables)


@flow(name="quality")
def quality_flow(since: datetime | None = None, until: datetime | None = None,
                 tables: list[str] | None = None) -> dict[str, Any]:
    """Validate what landed in `[since, until)` (default: from where the previous run ended to just past the latest row landed when it reads); fail on a failed
    gate. Returns the run id, verdict, report path and per-table row counts."""
    env = Environment.load()  # a flow run is an edge: its settings are read once, here, and passed down
    run = run_gates(env, since, until, tables)
    get_run_logger().info("%s", summary(run))
    if not run.success:
        raise QualityGateFailed(run)
    return {"run_id": run.run_id, "success": run.success, "report": str(run.report) if run.report else None,
            "rows": {s.table: s.rows for s in run.suites}}

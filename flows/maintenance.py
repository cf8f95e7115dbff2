"""The `lake-maintenance` flow: compaction, then retention and vacuum, per lake table, as Prefect tasks.

A thin wrapper over `flywheel.warehouse.maintenance`. Each table is its own task so one table's failure (or a
concurrent maintenance run holding it: `MaintenanceBusy`, retried) does not hide the others' results. Safe to run
while the ingest worker lands events and queries read (see the module's guarantees).

    from flywheel.flows.maintenance import maintenance_flow
    maintenance_flow.serve(name="nightly-lake", cron="30 2 * * *")
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flywheel.environment import Environment
from flywheel.flows.retry import retry_if_retryable
from flywheel.warehouse import maintenance as m


@task(retries=3, retry_delay_seconds=10, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def maintain_table(env: Environment, table: str, vacuum: bool = True) -> dict[str, Any]:
    """Compact `table`, then (with `vacuum`) apply its retention and vacuum it; returns before/after stats."""
    settings, ms = env.core, env.maintenance
    before = m.stats(settings, table, ms)
    compacted = m.compact(settings, table, ms)
    out: dict[str, Any] = {"table": table, "files_before": before.files, "files_removed": compacted.files_removed,
                           "files_added": compacted.files_added}
    if vacuum:
        days = ms.retention_days().get(table)
        if days is not None and table in m.DATE_COLUMN:
            out["rows_expired"] = m.apply_retention(settings, table, days, ms).rows_deleted
        out["files_vacuumed"] = m.vacuum(settings, table, ms).files_deleted
    after = m.stats(settings, table, ms)
    out.update(files_after=after.files, rows=after.rows, bytes=after.bytes, version=after.version)
    return out


@flow(name="lake-maintenance")
def maintenance_flow(tables: list[str] | None = None, vacuum: bool = True) -> list[dict[str, Any]]:
    """Maintain `tables` (default: every Delta table in the lake); fails if any table's task failed."""
    env = Environment.load()  # a flow run is an edge: its settings are read once, here, and passed down
    names = tables or m.lake_tables(env.core)
    # One table after another (two cores; compaction is CPU-bound), every table even when one fails.
    states = [maintain_table(env, t, vacuum, return_state=True) for t in names]
    failed = [t for t, st in zip(names, states) if not st.is_completed()]
    results = [st.result() for st in states if st.is_completed()]
    for r in results:
        get_run_logger().info("%s", r)
    if failed:
        raise m.MaintenanceError(f"maintenance failed for {', '.join(failed)} (the other tables were maintained)")
    return results

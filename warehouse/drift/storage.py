"""The `drift_runs` table: one row per (run, segment, feature) check, appended to a Delta table in the lake (a
DuckDB view `drift_runs`), and read back for decisions, the overview and tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from flywheel.config import Settings
from flywheel.warehouse import tables
from flywheel.warehouse.drift.features import DriftError, drift_kind
from flywheel.warehouse.drift.windows import Window

if TYPE_CHECKING:
    from flywheel.warehouse.drift.decisions import Decision

RUNS_TABLE = "drift_runs"
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("run_at", pa.timestamp("us", tz="UTC")),
    ("window_start", pa.timestamp("us", tz="UTC")), ("window_end", pa.timestamp("us", tz="UTC")),
    ("reference", pa.string()), ("level", pa.string()), ("segment", pa.string()), ("feature", pa.string()),
    ("drift_kind", pa.string()), ("method", pa.string()), ("score", pa.float64()), ("threshold", pa.float64()),
    ("p_value", pa.float64()), ("drifted", pa.bool_()), ("alert", pa.bool_()), ("alert_reason", pa.string()),
    ("n_reference", pa.int64()), ("n_current", pa.int64()), ("reference_value", pa.float64()),
    ("current_value", pa.float64()), ("before", pa.string()), ("after", pa.string()), ("report_path", pa.string()),
])


def store(settings: Settings, run_id: str, window: Window, reference: str, decided: Sequence[Decision],
          reports: dict[str, str]) -> None:
    """Append one row per decided check to `<lake>/drift_runs` (nothing when there are none)."""
    if not decided:
        return
    now = datetime.now(timezone.utc)
    rows: dict[str, list[object]] = {name: [] for name in RUNS_SCHEMA.names}
    for e, alert, reason in decided:
        for k, v in (("run_id", run_id), ("run_at", now), ("window_start", window.start),
                     ("window_end", window.end), ("reference", reference), ("level", e.level),
                     ("segment", e.segment), ("feature", e.feature), ("drift_kind", drift_kind(e.feature)),
                     ("method", e.method), ("score", e.score), ("threshold", e.threshold), ("p_value", e.p_value),
                     ("drifted", e.drifted), ("alert", alert), ("alert_reason", reason or None),
                     ("n_reference", e.n_reference), ("n_current", e.n_current),
                     ("reference_value", e.reference_value), ("current_value", e.current_value),
                     ("before", e.before), ("after", e.after), ("report_path", reports.get(e.segment))):
            rows[k].append(v)
    try:
        # Appends never conflict in Delta, so concurrent runs need no lock.
        tables.append(settings.lake_location, RUNS_TABLE, pa.table(rows, schema=RUNS_SCHEMA))
    except tables.TableError as exc:
        raise DriftError(f"could not append the drift run: {exc}") from exc


def read_runs(settings: Settings, where: str = "TRUE", params: dict[str, object] | None = None) -> pa.Table:
    """Rows of `drift_runs` matching a SQL condition written by the caller, never from input: values go in
    `params` (`$name` in `where`). An empty table when there are none."""
    return tables.query(settings.lake_location, RUNS_TABLE,
                        f"SELECT * FROM t WHERE {where} ORDER BY window_start, level, segment, feature",
                        params, empty=RUNS_SCHEMA)

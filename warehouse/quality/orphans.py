"""Feedback whose inference has not landed: `pending_feedback` (still within the horizon) and `orphan_feedback`.

Feedback may land before its inference (two topics, two partitions, producers that buffer) or days after it; the
`interactions` view joins by `inference_id` whatever the order or the event dates, so nothing here is needed for
the join itself. What is needed is to tell *late* from *never*: feedback unmatched for longer than
`QualitySettings.orphan_horizon_hours` after it landed is an orphan (its inference was lost, never logged, or the
id is wrong). The horizon is measured against the wall clock at query time.

Registered on every `flywheel.warehouse.query.connect()` through its `VIEW_MODULES` hook.
"""

from __future__ import annotations

import duckdb

from flywheel.config import Settings
from flywheel.warehouse.quality.settings import QualitySettings

VIEWS_SQL = """
CREATE OR REPLACE VIEW unmatched_feedback AS
SELECT f.*,
  (epoch(now()) - epoch(f._ingested_at)) / 3600.0 AS waiting_hours,
  f._ingested_at < now() - to_microseconds({horizon_us}) AS orphaned
FROM feedback f
WHERE NOT EXISTS (SELECT 1 FROM inferences i WHERE i.inference_id = f.inference_id);
CREATE OR REPLACE VIEW orphan_feedback AS SELECT * EXCLUDE (orphaned) FROM unmatched_feedback WHERE orphaned;
CREATE OR REPLACE VIEW pending_feedback AS SELECT * EXCLUDE (orphaned) FROM unmatched_feedback WHERE NOT orphaned;
"""


def register_views(con: duckdb.DuckDBPyConnection, settings: Settings,
                   qsettings: QualitySettings | None = None) -> None:
    """Define `unmatched_feedback`, `orphan_feedback` and `pending_feedback` on `con` (which has `feedback` and
    `inferences`)."""
    qsettings = qsettings or QualitySettings.from_env()
    con.execute(VIEWS_SQL.format(horizon_us=int(qsettings.orphan_horizon_hours * 3600 * 1_000_000)))

"""DuckDB over the lake: stable views and the Python entry points to query them.

Views (each is a snapshot of the lake as of `connect()`; reconnect to see newer data):
- `inferences`, `feedback`: one row per event id (a re-sent event is shown once: the first landed);
- `quarantine`: one row per rejected Kafka message, with its reason and original bytes;
- `interactions`: each inference with its feedback aggregated;
- `lake_inferences`, `lake_feedback`, `lake_quarantine`: the raw tables, one row per landed message;
- `unmatched_feedback`, split into `pending_feedback` (its inference may still land) and `orphan_feedback`
  (unmatched for longer than `orphan_horizon_hours` after it landed: the inference was lost or never logged);
- any other Delta table directly under the lake root (e.g. `quality_runs`), under its directory name.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from flywheel.config import Settings
from flywheel.warehouse import tables
from flywheel.schemas.arrow import SCHEMAS
from flywheel.warehouse.lake import Lake

INTERACTIONS_SQL = """
CREATE OR REPLACE VIEW interactions AS
WITH fb AS (
  SELECT inference_id,
    count(*) AS feedback_count,
    count(*) FILTER (WHERE kind = 'thumbs' AND value = 1) AS thumbs_up,
    count(*) FILTER (WHERE kind = 'thumbs' AND value = -1) AS thumbs_down,
    count(*) FILTER (WHERE kind = 'rating') AS ratings,
    avg((value - scale_min) / (scale_max - scale_min)) FILTER (WHERE kind = 'rating') AS rating_mean,
    arg_max(correction, timestamp) FILTER (WHERE kind = 'correction') AS latest_correction,
    count(*) FILTER (WHERE kind = 'correction') AS corrections,
    count(*) FILTER (WHERE kind = 'flag') AS flags,
    list_distinct(list(reason) FILTER (WHERE kind = 'flag')) AS flag_reasons,
    count(*) FILTER (WHERE kind = 'preference') AS preferences,
    list(signal ORDER BY timestamp) FILTER (WHERE kind = 'implicit') AS implicit_signals,
    min(timestamp) AS first_feedback_at,
    max(timestamp) AS last_feedback_at
  FROM feedback GROUP BY inference_id
)
SELECT i.*,
  coalesce(fb.feedback_count, 0) AS feedback_count,
  coalesce(fb.thumbs_up, 0) AS thumbs_up,
  coalesce(fb.thumbs_down, 0) AS thumbs_down,
  coalesce(fb.ratings, 0) AS ratings,
  fb.rating_mean,
  fb.latest_correction,
  coalesce(fb.corrections, 0) AS corrections,
  coalesce(fb.flags, 0) AS flags,
  coalesce(fb.flag_reasons, []) AS flag_reasons,
  coalesce(fb.preferences, 0) AS preferences,
  coalesce(fb.implicit_signals, []) AS implicit_signals,
  fb.first_feedback_at,
  fb.last_feedback_at
FROM inferences i LEFT JOIN fb USING (inference_id)
"""

ORPHAN_HORIZON_HOURS = 72.0
"""Feedback unmatched for longer than this after it landed is an orphan (`QualitySettings.orphan_horizon_hours`)."""

# Feedback may land before its inference (two topics, producers that buffer) or days after it: `interactions` joins
# whatever the order. What these views tell apart is *late* from *never*: feedback whose inference has not landed
# for longer than the horizon after the feedback did (measured against the wall clock at query time) is an orphan.
ORPHANS_SQL = """
CREATE OR REPLACE VIEW unmatched_feedback AS
SELECT f.*,
  (epoch(now()) - epoch(f._ingested_at)) / 3600.0 AS waiting_hours,
  f._ingested_at < now() - to_microseconds({horizon_us}) AS orphaned
FROM feedback f
WHERE NOT EXISTS (SELECT 1 FROM inferences i WHERE i.inference_id = f.inference_id);
CREATE OR REPLACE VIEW orphan_feedback AS SELECT * EXCLUDE (orphaned) FROM unmatched_feedback WHERE orphaned;
CREATE OR REPLACE VIEW pending_feedback AS SELECT * EXCLUDE (orphaned) FROM unmatched_feedback WHERE NOT orphaned;
"""

_FIRST = "ORDER BY _ingested_at, _topic, _partition, _offset"
_EVENT_ID = {"inferences": "inference_id", "feedback": "feedback_id"}
_DEDUP = {
    "inferences": f"PARTITION BY inference_id {_FIRST}",
    "feedback": f"PARTITION BY feedback_id {_FIRST}",
    # A message is its coordinates within one incarnation of its topic: after a broker restart offsets repeat.
    "quarantine": "PARTITION BY _topic, _topic_id, _partition, _offset ORDER BY _ingested_at",
}


def sql_type(t: pa.DataType) -> str:
    """DuckDB's name of the type of a nullable column a table can lack in its older files (or have narrower)."""
    if pa.types.is_list(t):
        return f"{sql_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {sql_type(f.type)}' for f in t) + ")"
    if pa.types.is_string(t):
        return "VARCHAR"
    raise TypeError(f"no DuckDB type here for the Arrow type {t}: add it to flywheel.warehouse.query.sql_type")


def _source(con: duckdb.DuckDBPyConnection, lake: Lake, table: str) -> str:
    """`_scan` of a core table, or an empty relation of its schema when it has no files yet."""
    scan = tables.scan(con, lake.location, table)
    if scan is not None:
        # Files landed before a nullable column was added to the table do not have it: read it as null there.
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
        # Nested columns are read as this build types them: files from before their structs gained fields have the
        # narrower structs (and when only such files exist, so does the scan), and DuckDB's cast fills in nulls.
        cols = [(f'CAST("{f.name}" AS {sql_type(f.type)}) AS "{f.name}"' if pa.types.is_nested(f.type)
                 else f'"{f.name}"') if f.name in have else f'CAST(NULL AS {sql_type(f.type)}) AS "{f.name}"'
                for f in SCHEMAS[table]]
        scan = f"(SELECT {', '.join(cols)} FROM {scan})"
    else:
        scan = f"_empty_{table}"
        con.register(scan, SCHEMAS[table].empty_table())
    return scan


def connect(settings: Settings, database: str = ":memory:", *,
            orphan_horizon_hours: float = ORPHAN_HORIZON_HOURS) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's views defined on it."""
    lake = Lake(settings.lake_location)
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    for table in SCHEMAS:
        con.execute(f"CREATE OR REPLACE VIEW lake_{table} AS SELECT * FROM {_source(con, lake, table)}")
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM lake_{table} "
                    f"QUALIFY row_number() OVER ({_DEDUP[table]}) = 1")
    con.execute(INTERACTIONS_SQL)
    # Tables other stages keep in the lake (quality runs, drift runs, alert outbox, ...) get a view of their name.
    for name in lake.location.children():
        scan = None if name in SCHEMAS or name.startswith("_") else tables.scan(con, lake.location, name)
        if scan is not None:
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM {scan}')
    con.execute(ORPHANS_SQL.format(horizon_us=int(orphan_horizon_hours * 3600 * 1_000_000)))
    return con


def first_landed(table: str, columns: str) -> str:
    """SQL (a subquery): the rows of the view `table` (`inferences` or `feedback`, one per event id, the first
    landed copy) with `columns` only (SQL over the raw table's columns).

    For reads of millions of rows: the view's window partitions and sorts every row it carries, while re-sent
    events are few; here only the ids landed more than once go through the window and the others pass by an anti
    join (1.0 s instead of 1.8 s for the narrow columns of 2.9M inferences, 0.8 s instead of 1.3 s for 3M
    feedback). Event ids are never null (the contract requires them), so the join and the window agree. Not the
    view itself: a `count(*)` over this union reads every column of both branches (DuckDB 2.0), 7x the view."""
    key = _EVENT_ID[table]
    return f"""(WITH _repeated AS (SELECT {key} FROM lake_{table} GROUP BY {key} HAVING count(*) > 1)
      SELECT {columns} FROM lake_{table} ANTI JOIN _repeated USING ({key})
      UNION ALL
      (SELECT {columns} FROM lake_{table} SEMI JOIN _repeated USING ({key})
       QUALIFY row_number() OVER (PARTITION BY {key} {_FIRST}) = 1))"""


def query(sql: str, settings: Settings) -> pa.Table:
    """Run `sql` against the views and return an Arrow table."""
    con = connect(settings)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()

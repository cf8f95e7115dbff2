"""DuckDB over the lake: stable views and the Python entry points to query them.

Views (each is a snapshot of the lake as of `connect()`; reconnect to see newer data):
- `inferences`, `feedback`: one row per event id (a re-sent event is shown once: the first landed);
- `quarantine`: one row per rejected Kafka message, with its reason and original bytes;
- `interactions`: each inference with its feedback aggregated;
- `lake_inferences`, `lake_feedback`, `lake_quarantine`: the raw tables, one row per landed message;
- any other Delta table directly under the lake root (e.g. `quality_runs`), under its directory name.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from flywheel.config import Settings
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

VIEW_MODULES: list[str] = ["flywheel.warehouse.quality.orphans"]
"""Modules of later stages that define views over the ones above: each has `register_views(con, settings)`."""

_DEDUP = {
    "inferences": "PARTITION BY inference_id ORDER BY _ingested_at, _topic, _partition, _offset",
    "feedback": "PARTITION BY feedback_id ORDER BY _ingested_at, _topic, _partition, _offset",
    # A message is its coordinates within one incarnation of its topic: after a broker restart offsets repeat.
    "quarantine": "PARTITION BY _topic, _topic_id, _partition, _offset ORDER BY _ingested_at",
}


def _scan(path: Path, columns: list[str] | None = None) -> str | None:
    """A SQL table expression over the files of the Delta table's current version at `path` (None if it has
    none). Delta keeps partition values in paths, not in the files: hive_partitioning reads them back."""
    if not DeltaTable.is_deltatable(str(path)):
        return None
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return None
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    cols = ", ".join(f'"{n}"' for n in columns) if columns else "*"
    return f"(SELECT {cols} FROM read_parquet([{listed}], hive_partitioning = true, union_by_name = true))"


_SQL_TYPE = {pa.string(): "VARCHAR"}
"""SQL types of the nullable columns a table can lack in its older files."""


def _source(con: duckdb.DuckDBPyConnection, lake: Lake, table: str) -> str:
    """`_scan` of a core table, or an empty relation of its schema when it has no files yet."""
    scan = _scan(lake.path(table))
    if scan is not None:
        # Files landed before a nullable column was added to the table do not have it: read it as null there.
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
        cols = [f'"{f.name}"' if f.name in have else f'CAST(NULL AS {_SQL_TYPE[f.type]}) AS "{f.name}"'
                for f in SCHEMAS[table]]
        scan = f"(SELECT {', '.join(cols)} FROM {scan})"
    else:
        scan = f"_empty_{table}"
        con.register(scan, SCHEMAS[table].empty_table())
    return scan


def connect(settings: Settings | None = None, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's views defined on it."""
    settings = settings or Settings.from_env()
    lake = Lake(settings.lake)
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    for table in SCHEMAS:
        con.execute(f"CREATE OR REPLACE VIEW lake_{table} AS SELECT * FROM {_source(con, lake, table)}")
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM lake_{table} "
                    f"QUALIFY row_number() OVER ({_DEDUP[table]}) = 1")
    con.execute(INTERACTIONS_SQL)
    # Tables other stages keep in the lake (quality runs, drift runs, alert outbox, ...) get a view of their name.
    if lake.root.is_dir():
        for path in sorted(lake.root.iterdir()):
            scan = None if path.name in SCHEMAS or path.name.startswith("_") else _scan(path)
            if scan is not None:
                con.execute(f'CREATE OR REPLACE VIEW "{path.name}" AS SELECT * FROM {scan}')
    for name in VIEW_MODULES:
        importlib.import_module(name).register_views(con, settings)
    return con


def query(sql: str, settings: Settings | None = None) -> pa.Table:
    """Run `sql` against the views and return an Arrow table."""
    con = connect(settings)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()

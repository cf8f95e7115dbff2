"""Reading the two sides of a drift run: the inferences of a window of the lake (one streaming DuckDB scan, only
the window's date partitions), described once each and cached in the lake table `descriptors`, with each
inference's feedback signals joined; or a fixed reference dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.warehouse import tables
from flywheel.warehouse.drift.descriptors import describe_batches
from flywheel.warehouse.drift.features import CATEGORICAL, FEEDBACK_FEATURES, DriftError
from flywheel.warehouse.drift.settings import SEGMENT_COLUMNS, DriftSettings
from flywheel.warehouse.drift.windows import Dataset, Window

log = logging.getLogger("flywheel.drift")

DESCRIPTORS_TABLE = "descriptors"
DESCRIPTOR_VERSION = 1
"""Bump when a descriptor's definition changes: cached rows of other versions are then computed again."""
_INFERENCE_COLS = ("inference_id", "timestamp", *SEGMENT_COLUMNS, "input", "output", "latency_ms",
                   "input_tokens", "output_tokens", "cost_usd")
_LINEAGE = ("_ingested_at", "_topic", "_partition", "_offset")

_FEEDBACK_SQL = """
WITH fb AS (
  SELECT feedback_id, inference_id, timestamp, kind, value, scale_min, scale_max, signal, _ingested_at, _topic,
    _partition, _offset
  FROM lake_feedback WHERE event_date BETWEEN $d0 AND $d1
  QUALIFY row_number() OVER (PARTITION BY feedback_id ORDER BY _ingested_at, _topic, _partition, _offset) = 1
), agg AS (
  SELECT fb.inference_id,
    count(*) FILTER (WHERE kind = 'thumbs') AS thumbs,
    count(*) FILTER (WHERE kind = 'thumbs' AND value = 1) AS ups,
    avg((value - scale_min) / (scale_max - scale_min)) FILTER (WHERE kind = 'rating') AS rating,
    count(*) FILTER (WHERE kind = 'correction') AS corrections,
    count(*) FILTER (WHERE kind = 'flag') AS flags,
    count(*) FILTER (WHERE kind = 'implicit') AS implicits,
    count(*) FILTER (WHERE kind = 'implicit' AND signal IN ('regenerate', 'abandon')) AS regen
  FROM fb JOIN _ids ON fb.inference_id = _ids.inference_id
  -- like with like: only the feedback of the horizon's first $h after each inference, and only for inferences
  -- that have had all of it by now (the others' feedback features are null, not 0)
  WHERE fb.timestamp < _ids.timestamp + $h AND _ids.timestamp + $h <= $now
  GROUP BY fb.inference_id
)
SELECT _rn,
  CASE WHEN agg.thumbs > 0 THEN agg.ups::DOUBLE / agg.thumbs END AS thumbs_up_rate,
  agg.rating AS rating,
  CASE WHEN _ids.timestamp + $h <= $now THEN (coalesce(agg.corrections, 0) > 0)::DOUBLE END AS correction_rate,
  CASE WHEN _ids.timestamp + $h <= $now THEN (coalesce(agg.flags, 0) > 0)::DOUBLE END AS flag_rate,
  CASE WHEN agg.implicits > 0 THEN (agg.regen > 0)::DOUBLE END AS regenerate_abandon_rate
FROM _ids LEFT JOIN agg USING (inference_id)
ORDER BY _rn
"""

_DEDUP_SQL = """
SELECT _rn FROM _ids
QUALIFY row_number() OVER (PARTITION BY inference_id ORDER BY _ingested_at, _topic, _partition, _offset) = 1
ORDER BY _rn
"""


def connect(settings: Settings, ds: DriftSettings) -> duckdb.DuckDBPyConnection:
    """A connection to the lake's views, bounded by the run's threads and memory limit."""
    from flywheel.warehouse.query import connect as connect_lake

    con = connect_lake(settings)
    con.execute(f"SET threads = {ds.threads}")
    con.execute(f"SET memory_limit = '{ds.memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    return con


@dataclass(frozen=True)
class FeedbackHorizon:
    """Which feedback counts in a run: an event counts for its inference only if it came within `length` after
    the inference, and an inference has feedback features only if it is at least `length` old at `now` (younger
    ones have null features: left out, not counted as "no correction"). The same horizon for both windows means
    both are judged on feedback of the same age, however much later feedback the older window has collected."""

    length: timedelta
    now: datetime

    @classmethod
    def for_run(cls, current: Window, ds: DriftSettings, now: datetime) -> "FeedbackHorizon":
        """`ds.feedback_maturity`, shortened to the age of the current window's end when that is younger, so every
        inference of the current window (and of any older reference) has had the whole horizon."""
        return cls(max(timedelta(0), min(ds.maturity, now - current.end)), now)


def load_window(con: duckdb.DuckDBPyConnection, window: Window, ds: DriftSettings, lake: tables.Where | None = None,
                batch_rows: int = 50_000, *, horizon: FeedbackHorizon | None = None) -> pa.Table:
    """Descriptors and feedback signals of the inferences stamped in `window` (one row per inference id).

    Feedback signals count the feedback within `horizon` (default: `ds.feedback_maturity` as of now) of each
    inference; see `FeedbackHorizon`.

    With `lake`, descriptors are cached in its `descriptors` table: each inference is described once in its life
    (a window is usually the current window of one run and the reference of the next ones), and only inferences
    not described yet are read with their text.
    """
    horizon = horizon or FeedbackHorizon(ds.maturity, datetime.now(timezone.utc))
    params = {"s": window.start, "e": window.end, "d0": window.start.date(),
              "d1": (window.end - timedelta(microseconds=1)).date()}
    cached = _cached(con, lake, params) if lake is not None else None
    cols = ", ".join(_INFERENCE_COLS + _LINEAGE)
    sql = (f"SELECT {cols} FROM lake_inferences WHERE timestamp >= $s AND timestamp < $e "
           "AND event_date BETWEEN $d0 AND $d1")
    if cached is not None and cached.num_rows:
        con.register("_cached_ids", cached.select(["inference_id"]))
        sql += " AND inference_id NOT IN (SELECT inference_id FROM _cached_ids)"
    reader = con.sql(sql, params=params).to_arrow_reader(batch_rows)
    described = describe_batches(reader, threads=ds.threads)
    if described is not None and lake is not None:
        _cache(lake, described)
    parts = [t for t in (cached, described) if t is not None and t.num_rows]
    if not parts:
        return _with_feedback(con, None, window, horizon)
    both = parts[0] if len(parts) == 1 else pa.concat_tables(
        [parts[0], parts[1].cast(parts[0].schema)] if len(parts) == 2 else parts)
    return _with_feedback(con, both, window, horizon)


def _cached(con: duckdb.DuckDBPyConnection, lake: tables.Where, params: dict[str, Any]) -> pa.Table | None:
    scan = tables.scan(con, lake, DESCRIPTORS_TABLE)
    if scan is None:
        return None
    t = con.sql(f"SELECT * EXCLUDE (event_date, descriptor_version) FROM {scan} WHERE descriptor_version = $v "
                "AND timestamp >= $s AND timestamp < $e AND event_date BETWEEN $d0 AND $d1",
                params={**params, "v": DESCRIPTOR_VERSION}).to_arrow_table()
    for c in CATEGORICAL:  # stored as strings; described batches carry them as dictionaries
        t = t.set_column(t.column_names.index(c), c, pc.dictionary_encode(t[c]))
    return t


def _cache(lake: tables.Where, described: pa.Table) -> None:
    t = described
    for c in CATEGORICAL:
        t = t.set_column(t.column_names.index(c), c, pc.cast(t[c], pa.string()))
    t = t.append_column("event_date", pc.cast(t["timestamp"], pa.date32()))
    t = t.append_column("descriptor_version", pa.array(np.full(t.num_rows, DESCRIPTOR_VERSION, np.int32)))
    try:
        # Appends never conflict in Delta; two runs describing the same rows at once only duplicate cache rows,
        # which the per-inference dedup of every read removes.
        tables.append(lake, DESCRIPTORS_TABLE, t, partition_by=["event_date"])
    except tables.TableError as exc:  # the cache only saves time: a run must not fail on it
        log.warning("could not cache %d descriptors in %s: %s", t.num_rows, tables.uri(lake, DESCRIPTORS_TABLE), exc)


def load_dataset(con: duckdb.DuckDBPyConnection, dataset: Dataset, ds: DriftSettings,
                 batch_rows: int = 50_000) -> pa.Table:
    """Descriptors of a reference dataset; feedback signals are taken from its columns when it has them."""
    import pyarrow.dataset as pds

    path = dataset.path
    try:
        is_delta = path.is_dir() and DeltaTable.is_deltatable(str(path))
        src = DeltaTable(str(path)).to_pyarrow_dataset() if is_delta else pds.dataset(str(path), format="parquet")
    except Exception as exc:
        raise DriftError(f"cannot read reference dataset {path}: {exc}") from exc
    names = set(src.schema.names)
    if not {"input", "output"} <= names:
        raise DriftError(f"reference dataset {path} needs at least the columns `input` and `output`")
    wanted = [c for c in _INFERENCE_COLS + FEEDBACK_FEATURES if c in names]

    def batches() -> Iterator[pa.RecordBatch]:
        n = 0
        for b in src.to_batches(columns=wanted, batch_size=batch_rows):
            t = pa.Table.from_batches([b])
            for c in _INFERENCE_COLS + FEEDBACK_FEATURES:
                if c not in t.column_names:
                    typ = pa.float64() if c in ("latency_ms", "cost_usd") + FEEDBACK_FEATURES else (
                        pa.int64() if c.endswith("_tokens") else pa.string())
                    t = t.append_column(c, pa.nulls(t.num_rows, typ))
            if "inference_id" not in names:
                t = t.set_column(t.column_names.index("inference_id"), "inference_id",
                                 pa.array([f"ref-{n + i}" for i in range(t.num_rows)]))
            n += t.num_rows
            yield from t.combine_chunks().to_batches()

    described = describe_batches(batches(), threads=ds.threads)
    if described is None:
        raise DriftError(f"reference dataset {path} has no rows")
    return described


def _with_feedback(con: duckdb.DuckDBPyConnection, described: pa.Table | None, window: Window,
                   horizon: FeedbackHorizon) -> pa.Table:
    """One row per inference id (the first landed), with its feedback signals appended.

    Only narrow columns (ids, lineage, row numbers) go through DuckDB: joining the descriptor table itself there
    would materialize more copies of it."""
    if described is None:
        return pa.table({})

    def register(t: pa.Table, cols: list[str]) -> None:
        con.register("_ids", t.select(cols).append_column("_rn", pa.array(np.arange(t.num_rows, dtype=np.int64))))

    try:
        if pc.count_distinct(described["inference_id"]).as_py() != described.num_rows:  # re-sent events landed twice
            register(described, ["inference_id", *_LINEAGE])
            described = described.take(con.sql(_DEDUP_SQL).to_arrow_table()["_rn"])
        register(described, ["inference_id", "timestamp"])
        fb = con.sql(_FEEDBACK_SQL, params={"d0": window.start.date(), "d1": (window.end + horizon.length).date(),
                                            "h": horizon.length, "now": horizon.now}).to_arrow_table()
    finally:
        con.unregister("_ids")
    out = described.drop_columns([c for c in _LINEAGE if c in described.column_names])
    for c in FEEDBACK_FEATURES:
        out = out.append_column(c, fb[c])
    return out


"""Batch drift detection: reference vs current samples from the lake, per segment, into the `drift_runs` table.

A run (`run_drift`):
1. reads the inferences of each side with one streaming DuckDB scan (only the window's date partitions, text never
   held whole in memory), computes their descriptors (`flywheel.warehouse.drift.descriptors`) and joins each inference's
   feedback signals (thumbs-up rate, normalized rating, correction, flag, regenerate/abandon);
2. compares every feature in every segment of every level (`--by app,model,prompt_version` gives three levels)
   with the effect sizes of `flywheel.warehouse.drift.effects`, on all rows;
3. decides alerts: a drifted feature alerts when it drifted in `sustain` consecutive windows (read back from
   `drift_runs`) or its effect is `large_factor` times its threshold;
4. writes Evidently HTML reports for the segments that drifted (or all, see `DriftSettings.reports`) on a random
   sample of `report_sample` rows per side: Evidently is the human-facing view, not the decision (it would cost
   minutes on millions of rows; the decision statistics above take seconds);
5. appends one row per (segment, feature) to the Delta table `<lake>/drift_runs` (a DuckDB view `drift_runs`);
6. hands the alerts (`flywheel.schemas.alerts.Alert`) to the sink it was given: the outbox of
   `flywheel.warehouse.alerts`, which delivers them to Slack.

Data drift is about what users send (input descriptors); model drift about what the model answers and how users
take it (output descriptors, latency, cost, feedback signals).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.schemas.alerts import Alert, AlertItem, AlertSink
from flywheel.warehouse.drift.descriptors import SCRIPTS, describe_batches
from flywheel.warehouse.drift.settings import DEFAULT_METHODS, SEGMENT_COLUMNS, DriftSettings
from flywheel.warehouse.drift.effects import Effect, compare, segment_levels

log = logging.getLogger("flywheel.drift")

DATA_FEATURES = ("input_chars", "input_tokens", "input_words", "input_sentences", "input_non_letter",
                 "input_script")
MODEL_FEATURES = ("output_chars", "output_tokens", "output_words", "output_sentences", "output_non_letter",
                  "output_script", "refusal", "apology", "has_code", "has_json", "has_link", "latency_ms",
                  "cost_usd")
FEEDBACK_FEATURES = ("thumbs_up_rate", "rating", "correction_rate", "flag_rate", "regenerate_abandon_rate")
FEATURES = DATA_FEATURES + MODEL_FEATURES + FEEDBACK_FEATURES
CATEGORICAL = ("input_script", "output_script")
REPORT_COLUMNS = 8
"""Features shown in an Evidently report: the segment's drifted ones, most drifted first."""
assert set(FEATURES) == set(DEFAULT_METHODS)

LOCAL_FACTOR = 1.5
"""A sub-segment alerts on features its parent already alerts on only with an effect this many times larger."""

DESCRIPTORS_TABLE = "descriptors"
DESCRIPTOR_VERSION = 1
"""Bump when a descriptor's definition changes: cached rows of other versions are then computed again."""

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


class DriftError(FlywheelError):
    """A drift run could not be done; the message says which window or table and what to do."""


def drift_kind(feature: str) -> str:
    return "data" if feature in DATA_FEATURES else "model"


# --------------------------------------------------------------------------------------------------- windows

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text)
    if not m:
        raise DriftError(f"{text!r} is not a duration like 30m, 6h, 1d or 2w")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DriftError(f"{text!r} is not an ISO date or timestamp (e.g. 2026-11-01 or 2026-11-01T12:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise DriftError(f"window {self.label} ends before it starts")

    @property
    def label(self) -> str:
        return f"{self.start.isoformat(timespec='seconds')}/{self.end.isoformat(timespec='seconds')}"

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def before(self, length: timedelta | None = None) -> "Window":
        length = length or self.length
        return Window(self.start - length, self.start)

    @classmethod
    def parse(cls, spec: str, now: datetime | None = None) -> "Window":
        """`START/END` (ISO dates or timestamps) or a duration `1d`: the last complete window of that length,
        aligned to multiples of it since the epoch (so successive runs see successive windows)."""
        if "/" in spec:
            a, b = spec.split("/", 1)
            return cls(_parse_time(a), _parse_time(b))
        length = parse_duration(spec)
        now = now or datetime.now(timezone.utc)
        step = length.total_seconds()
        end = datetime.fromtimestamp(int(now.timestamp() // step) * step, timezone.utc)
        return cls(end - length, end)


@dataclass(frozen=True)
class Dataset:
    """A fixed reference: a Parquet file or directory, or a Delta table, with the inferences' columns."""

    path: Path

    @property
    def label(self) -> str:
        return f"dataset:{self.path}"


def parse_reference(spec: str, current: Window) -> Window | Dataset:
    """A duration (the time right before `current`), `START/END`, or the path of a dataset."""
    if _DURATION.match(spec):
        return current.before(parse_duration(spec))
    if Path(spec).exists():
        return Dataset(Path(spec))
    if "/" in spec:
        return Window.parse(spec)
    raise DriftError(f"reference {spec!r} is neither a duration, a window START/END nor an existing dataset")


# --------------------------------------------------------------------------------------------------- loading

_INFERENCE_COLS = ("inference_id", "timestamp", *SEGMENT_COLUMNS, "input", "output", "latency_ms",
                   "input_tokens", "output_tokens", "cost_usd")
_LINEAGE = ("_ingested_at", "_topic", "_partition", "_offset")

_FEEDBACK_SQL = """
WITH fb AS (
  SELECT feedback_id, inference_id, kind, value, scale_min, scale_max, signal, _ingested_at, _topic, _partition,
    _offset
  FROM lake_feedback WHERE event_date >= $d0
  QUALIFY row_number() OVER (PARTITION BY feedback_id ORDER BY _ingested_at, _topic, _partition, _offset) = 1
), agg AS (
  SELECT inference_id,
    count(*) FILTER (WHERE kind = 'thumbs') AS thumbs,
    count(*) FILTER (WHERE kind = 'thumbs' AND value = 1) AS ups,
    avg((value - scale_min) / (scale_max - scale_min)) FILTER (WHERE kind = 'rating') AS rating,
    count(*) FILTER (WHERE kind = 'correction') AS corrections,
    count(*) FILTER (WHERE kind = 'flag') AS flags,
    count(*) FILTER (WHERE kind = 'implicit') AS implicits,
    count(*) FILTER (WHERE kind = 'implicit' AND signal IN ('regenerate', 'abandon')) AS regen
  FROM fb WHERE inference_id IN (SELECT inference_id FROM _ids) GROUP BY inference_id
)
SELECT _rn,
  CASE WHEN agg.thumbs > 0 THEN agg.ups::DOUBLE / agg.thumbs END AS thumbs_up_rate,
  agg.rating AS rating,
  (coalesce(agg.corrections, 0) > 0)::DOUBLE AS correction_rate,
  (coalesce(agg.flags, 0) > 0)::DOUBLE AS flag_rate,
  CASE WHEN agg.implicits > 0 THEN (agg.regen > 0)::DOUBLE END AS regenerate_abandon_rate
FROM _ids LEFT JOIN agg USING (inference_id)
ORDER BY _rn
"""

_DEDUP_SQL = """
SELECT _rn FROM _ids
QUALIFY row_number() OVER (PARTITION BY inference_id ORDER BY _ingested_at, _topic, _partition, _offset) = 1
ORDER BY _rn
"""


def _connect(settings: Settings, ds: DriftSettings) -> duckdb.DuckDBPyConnection:
    from flywheel.warehouse.query import connect

    con = connect(settings)
    con.execute(f"SET threads = {ds.threads}")
    con.execute(f"SET memory_limit = '{ds.memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def load_window(con: duckdb.DuckDBPyConnection, window: Window, ds: DriftSettings, lake: Path | None = None,
                batch_rows: int = 50_000) -> pa.Table:
    """Descriptors and feedback signals of the inferences stamped in `window` (one row per inference id).

    With `lake`, descriptors are cached in its `descriptors` table: each inference is described once in its life
    (a window is usually the current window of one run and the reference of the next ones), and only inferences
    not described yet are read with their text.
    """
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
        return _with_feedback(con, None, window.start.date())
    both = parts[0] if len(parts) == 1 else pa.concat_tables(
        [parts[0], parts[1].cast(parts[0].schema)] if len(parts) == 2 else parts)
    return _with_feedback(con, both, window.start.date())


def _cached(con: duckdb.DuckDBPyConnection, lake: Path, params: dict[str, Any]) -> pa.Table | None:
    path = lake / DESCRIPTORS_TABLE
    if not DeltaTable.is_deltatable(str(path)):
        return None
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return None
    t = con.sql("SELECT * EXCLUDE (event_date, descriptor_version) FROM read_parquet($f, hive_partitioning = true, "
                "union_by_name = true) WHERE descriptor_version = $v AND timestamp >= $s AND timestamp < $e AND "
                "event_date BETWEEN $d0 AND $d1", params={**params, "f": files, "v": DESCRIPTOR_VERSION}
                ).to_arrow_table()
    for c in CATEGORICAL:  # stored as strings; described batches carry them as dictionaries
        t = t.set_column(t.column_names.index(c), c, pc.dictionary_encode(t[c]))
    return t


def _cache(lake: Path, described: pa.Table) -> None:
    t = described
    for c in CATEGORICAL:
        t = t.set_column(t.column_names.index(c), c, pc.cast(t[c], pa.string()))
    t = t.append_column("event_date", pc.cast(t["timestamp"], pa.date32()))
    t = t.append_column("descriptor_version", pa.array(np.full(t.num_rows, DESCRIPTOR_VERSION, np.int32)))
    try:
        # Appends never conflict in Delta; two runs describing the same rows at once only duplicate cache rows,
        # which the per-inference dedup of every read removes.
        write_deltalake(str(lake / DESCRIPTORS_TABLE), t, mode="append", partition_by=["event_date"])
    except Exception as exc:  # the cache only saves time: a run must not fail on it
        log.warning("could not cache %d descriptors in %s: %s", t.num_rows, lake / DESCRIPTORS_TABLE, exc)


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


def _with_feedback(con: duckdb.DuckDBPyConnection, described: pa.Table | None, since: date) -> pa.Table:
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
        register(described, ["inference_id"])
        fb = con.sql(_FEEDBACK_SQL, params={"d0": since}).to_arrow_table()
    finally:
        con.unregister("_ids")
    out = described.drop_columns([c for c in _LINEAGE if c in described.column_names])
    for c in FEEDBACK_FEATURES:
        out = out.append_column(c, fb[c])
    return out


# --------------------------------------------------------------------------------------------------- running


@dataclass
class DriftRun:
    run_id: str
    window: Window
    reference: str
    effects: list[Effect]
    alerts: list[Alert]
    """One per (segment, drift kind) that alerted, with its features and report."""
    reports: dict[str, str] = field(default_factory=dict)
    """segment -> path of its Evidently HTML report."""
    n_reference: int = 0
    n_current: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    frames: tuple[pa.Table, pa.Table] | None = field(default=None, repr=False)
    """(reference, current) descriptor tables, when `run_drift(keep_frames=True)` (benchmarks, notebooks)."""

    @property
    def drifted(self) -> list[Effect]:
        return [e for e in self.effects if e.drifted]


def _features(table: pa.Table, name: str) -> np.ndarray:
    col = table[name]
    if name in CATEGORICAL:
        codes = pc.index_in(pc.cast(col, pa.string()), value_set=pa.array(SCRIPTS))
        return np.asarray(pc.fill_null(codes, 0), dtype=np.int64)
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _dataset_levels(ref: pa.Table, ds: DriftSettings, by: str | None) -> str:
    """The segment columns a reference dataset can serve: those it has values for, in order. A golden set without
    an `app` column is the reference of all traffic, not of an app named null."""
    cols = [c for lv in ds.levels(by)[-1:] for c in lv]
    usable = []
    for c in cols:
        if c not in ref.column_names or ref[c].null_count == ref.num_rows:
            break
        usable.append(c)
    if usable != cols:
        log.info("reference dataset has no %s: segmenting by %s only", cols[len(usable)],
                 ",".join(usable) or "nothing (all traffic)")
    return ",".join(usable)


def compute_effects(ref: pa.Table, cur: pa.Table, ds: DriftSettings, by: str | None = None,
                    features: Sequence[str] = FEATURES) -> list[Effect]:
    """Every feature's effect in every segment with enough data (pure: no I/O)."""
    if ref.num_rows == 0 or cur.num_rows == 0:
        return []
    segs = segment_levels(ref, cur, ds.levels(by))
    out: list[Effect] = []
    for feature in features:
        method, threshold = ds.method(feature)
        r, c = _features(ref, feature), _features(cur, feature)
        out.extend(compare(feature, method, threshold, r, c, segs, ds.alpha, ds.min_samples, SCRIPTS))
    return out


def run_drift(settings: Settings, ds: DriftSettings | None = None, *, current: Window | str | None = None,
              reference: Window | Dataset | str | None = None, by: str | None = None,
              now: datetime | None = None, reports: bool = True, sink: AlertSink | None = None,
              keep_frames: bool = False) -> DriftRun:
    """Run drift detection for one current window (see the module docstring). `sink`: where alerts go (the
    outbox of `flywheel.warehouse.alerts`; None: do not enqueue, only record)."""
    ds = ds or DriftSettings.from_env()
    t0 = time.perf_counter()
    if current is None or isinstance(current, str):
        current = Window.parse(current or ds.window, now)
    if reference is None or isinstance(reference, str):
        reference = parse_reference(reference or ds.reference, current)
    timings: dict[str, float] = {}
    con = _connect(settings, ds)
    try:
        lake = Path(settings.lake) if ds.cache else None
        ref = (load_dataset(con, reference, ds) if isinstance(reference, Dataset)
               else load_window(con, reference, ds, lake))
        timings["load_reference_s"] = time.perf_counter() - t0
        cur = load_window(con, current, ds, lake)
        timings["load_current_s"] = time.perf_counter() - t0 - timings["load_reference_s"]
        t1 = time.perf_counter()
        if isinstance(reference, Dataset):
            by = _dataset_levels(ref, ds, by)
        effects = compute_effects(ref, cur, ds, by)
        timings["effects_s"] = time.perf_counter() - t1
        run_id = f"{current.start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        history = _history(settings, current, ds, effects)
        # An alert from one window alone must stand out from every check of the run (Bonferroni), or a stationary
        # stream's chance extremes (p ~ 1e-4 among ~60 checks per run, seen on the real data) would page people.
        large_alpha = ds.alpha / max(len(effects), 1)
        decided = [_decide(e, current, ds, history, large_alpha) for e in effects]
        alerts = _alerts(decided, current)
        t2 = time.perf_counter()
        report_paths = (write_reports(ref, cur, decided, settings, ds, run_id, current, reference.label,
                                      first=[(a.level, a.segment) for a in alerts])
                        if reports and ds.reports != "none" else {})
        timings["reports_s"] = time.perf_counter() - t2
    finally:
        con.close()
    alerts = [a.with_report(_report_link(report_paths.get(a.segment, ""), ds)) for a in alerts]
    run = DriftRun(run_id, current, reference.label, effects, alerts, report_paths, ref.num_rows, cur.num_rows,
                   timings, (ref, cur) if keep_frames else None)
    _store(settings, run, decided, report_paths)
    if sink is not None:
        for a in alerts:
            sink.enqueue(a)
    timings["total_s"] = time.perf_counter() - t0
    log.info("drift run %s over %s: %d effects, %d drifted, %d alerts", run_id, current.label, len(effects),
             len(run.drifted), len(alerts))
    return run


# --------------------------------------------------------------------------------------------------- decisions


def _history(settings: Settings, current: Window, ds: DriftSettings,
             effects: Sequence[Effect]) -> dict[tuple[str, str, str, datetime, datetime], bool]:
    """(level, segment, feature, window_end) -> drifted, for the windows right before `current`."""
    path = Path(settings.lake) / RUNS_TABLE
    if ds.sustain <= 1 or not effects or not DeltaTable.is_deltatable(str(path)):
        return {}
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return {}
    since = current.start - current.length * (ds.sustain - 1)
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT level, segment, feature, window_start, window_end, bool_or(drifted) FROM read_parquet($f) "
            "WHERE window_end <= $s AND window_start >= $since GROUP BY ALL",
            {"f": files, "s": current.start, "since": since}).fetchall()
    finally:
        con.close()
    return {(lv, seg, feat, ws, we): d for lv, seg, feat, ws, we, d in rows}


def _decide(e: Effect, current: Window, ds: DriftSettings,
            history: dict[tuple[str, str, str, datetime, datetime], bool],
            large_alpha: float | None = None) -> tuple[Effect, bool, str]:
    if not e.drifted:
        return e, False, ""
    if e.score >= ds.large_factor * e.threshold and e.p_value < (ds.alpha if large_alpha is None else large_alpha):
        return e, True, f"large: {e.score:.3g} >= {ds.large_factor:g} x threshold {e.threshold:g}"
    end, length = current.start, current.length
    for _ in range(ds.sustain - 1):
        if not history.get((e.level, e.segment, e.feature, end - length, end), False):
            return e, False, ""
        end -= length
    return e, True, f"sustained: drifted in {ds.sustain} consecutive windows"


def _report_link(path: str, ds: DriftSettings) -> str:
    if path and ds.report_base_url:
        return ds.report_base_url.rstrip("/") + "/" + "/".join(Path(path).parts[-2:])
    return path


def _alerts(decided: Sequence[tuple[Effect, bool, str]], current: Window) -> list[Alert]:
    groups: dict[tuple[str, str, str], list[tuple[Effect, str]]] = {}
    for e, alert, reason in decided:
        if alert:
            groups.setdefault((e.level, e.segment, drift_kind(e.feature)), []).append((e, reason))
    out = []
    seen: list[tuple[str, str, dict[str, float]]] = []
    for (level, segment, kind), items in sorted(groups.items(), key=lambda kv: (len(kv[0][0]), kv[0])):
        items.sort(key=lambda x: -x[0].score / x[0].threshold)
        # A sub-segment whose shift is just its share of a shift its parent already alerts on (the whole app's
        # users switched language, ...) would repeat the parent's alert: it alerts only if its features are new
        # or its effect is clearly larger than the parent's (the cause is local to it: one model's new version).
        mine = {e.feature: e.score for e, _ in items}
        if any(k == kind and segment.startswith(parent + ",") and set(mine) <= set(theirs)
               and all(mine[f] <= LOCAL_FACTOR * theirs[f] for f in mine) for parent, k, theirs in seen):
            continue
        seen.append((segment, kind, mine))
        out.append(Alert(f"{kind}-drift", segment, current.label,
                         tuple(AlertItem(e.feature, e.before, e.after, e.method, round(e.score, 4), e.threshold,
                                         reason, e.n_reference, e.n_current) for e, reason in items),
                         level=level))
    return out


# --------------------------------------------------------------------------------------------------- storage


def _store(settings: Settings, run: DriftRun, decided: Sequence[tuple[Effect, bool, str]],
           reports: dict[str, str]) -> None:
    if not decided:
        return
    now = datetime.now(timezone.utc)
    rows = {name: [] for name in RUNS_SCHEMA.names}  # type: dict[str, list[Any]]
    for e, alert, reason in decided:
        for k, v in (("run_id", run.run_id), ("run_at", now), ("window_start", run.window.start),
                     ("window_end", run.window.end), ("reference", run.reference), ("level", e.level),
                     ("segment", e.segment), ("feature", e.feature), ("drift_kind", drift_kind(e.feature)),
                     ("method", e.method), ("score", e.score), ("threshold", e.threshold), ("p_value", e.p_value),
                     ("drifted", e.drifted), ("alert", alert), ("alert_reason", reason or None),
                     ("n_reference", e.n_reference), ("n_current", e.n_current),
                     ("reference_value", e.reference_value), ("current_value", e.current_value),
                     ("before", e.before), ("after", e.after), ("report_path", reports.get(e.segment))):
            rows[k].append(v)
    table = pa.table(rows, schema=RUNS_SCHEMA)
    path = Path(settings.lake) / RUNS_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Appends never conflict in Delta, so concurrent runs need no lock.
        write_deltalake(str(path), table, mode="append")
    except Exception as exc:
        raise DriftError(f"could not append the drift run to {path}: {exc}") from exc


def read_runs(settings: Settings, where: str = "TRUE") -> pa.Table:
    """Rows of `drift_runs` matching a SQL condition (empty table when there are none)."""
    path = Path(settings.lake) / RUNS_TABLE
    if not DeltaTable.is_deltatable(str(path)):
        return RUNS_SCHEMA.empty_table()
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return RUNS_SCHEMA.empty_table()
    con = duckdb.connect()
    try:
        return con.sql(f"SELECT * FROM read_parquet($f) WHERE {where} ORDER BY window_start, level, segment, "
                       "feature", params={"f": files}).to_arrow_table()
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------- reports


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._=-]+", "_", text)[:80]
    return f"{s}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def write_reports(ref: pa.Table, cur: pa.Table, decided: Sequence[tuple[Effect, bool, str]], settings: Settings,
                  ds: DriftSettings, run_id: str, current: Window, reference_label: str,
                  first: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """One Evidently data-drift report per chosen segment (the `first` ones, those that alerted, then the most
    drifted), on at most `report_sample` rows per side, at most `max_reports` of them."""
    if ref.num_rows == 0 or cur.num_rows == 0:
        return {}
    scores: dict[tuple[str, str], float] = {}
    moved: dict[str, dict[str, float]] = {}
    for e, _alert, _ in decided:
        key = (e.level, e.segment)
        if ds.reports == "all" or (ds.reports == "drifted" and e.drifted):
            scores[key] = max(scores.get(key, 0.0), e.score / e.threshold)
        if e.drifted:
            moved.setdefault(e.segment, {})[e.feature] = e.score / e.threshold
    chosen = list(dict.fromkeys([*first, *sorted(scores, key=lambda k: -scores[k])]))[:ds.max_reports]
    if not chosen:
        return {}
    out_dir = ds.reports_path(settings.home) / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = list(dict.fromkeys(tuple(lv.split(",")) if lv else () for lv, _ in chosen))
    segs = {s.level: s for s in segment_levels(ref, cur, levels)}
    out: dict[str, str] = {}
    rng = np.random.default_rng(0)
    for level, segment in chosen:
        s = segs[tuple(level.split(",")) if level else ()]
        k = s.labels.index(segment)
        ri, ci = np.flatnonzero(s.ref == k), np.flatnonzero(s.cur == k)
        ri = rng.choice(ri, min(len(ri), ds.report_sample), replace=False)
        ci = rng.choice(ci, min(len(ci), ds.report_sample), replace=False)
        path = out_dir / f"{_slug(segment)}.html"
        # Evidently's cost grows with columns (about 1 s for 3, 5-9 s for 22 here): show what moved, most first.
        columns = sorted(moved.get(segment, {}), key=lambda f: -moved[segment][f])[:REPORT_COLUMNS] or None
        try:
            evidently_report(ref.take(np.sort(ri)), cur.take(np.sort(ci)), ds, path,
                             title=f"{segment} | {current.label} vs {reference_label}", columns=columns)
        except Exception:  # a report is for people: the decisions, the run and its alerts must not fail with it
            log.exception("Evidently report for %s failed; the run is stored without it", segment)
            continue
        out[segment] = str(path)
    return out


def _frame(t: pa.Table) -> Any:
    cols = [f for f in FEATURES if f in t.column_names]
    df = t.select(cols).to_pandas()
    for c in CATEGORICAL:
        if c in df:
            df[c] = df[c].astype(str)
    for c in df.columns:
        if df[c].dtype == bool:
            df[c] = df[c].astype(int)
    return df


def evidently_report(ref: pa.Table, cur: pa.Table, ds: DriftSettings, path: Path, title: str = "",
                     columns: Sequence[str] | None = None) -> Path:
    """Evidently's DataDriftPreset over `columns` (default: every descriptor and feedback signal), saved as
    self-contained HTML."""
    from evidently import DataDefinition, Dataset as EvDataset, Report
    from evidently.presets import DataDriftPreset

    rdf, cdf = _frame(ref), _frame(cur)
    if columns:
        rdf, cdf = rdf[list(columns)], cdf[list(columns)]
    # Evidently cannot judge a column that is empty on one side: leave those out of the report.
    cols = [c for c in rdf.columns if rdf[c].notna().any() and cdf[c].notna().any()]
    # proportions are yes/no per inference: Evidently tests them as categories (its z-test needs that)
    cat = [c for c in cols if c in CATEGORICAL or ds.method(c)[0] == "prop_diff"]
    num = [c for c in cols if c not in cat]
    for c in cat:
        if c not in CATEGORICAL:
            rdf[c], cdf[c] = rdf[c].round(), cdf[c].round()
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    methods = {"wasserstein": "wasserstein", "psi": "psi", "js": "jensenshannon", "prop_diff": "z",
               "mean_diff": "t_test"}
    per_method = {c: methods[ds.method(c)[0]] for c in cols}
    per_threshold = {c: (ds.method(c)[1] if ds.method(c)[0] in ("wasserstein", "psi", "js") else ds.alpha)
                     for c in cols}
    report = Report([DataDriftPreset(columns=cols, per_column_method=per_method,
                                     per_column_threshold=per_threshold)],
                    metadata={"title": title} if title else None)
    snapshot = report.run(EvDataset.from_pandas(cdf[cols], data_definition=definition),
                          EvDataset.from_pandas(rdf[cols], data_definition=definition))
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path

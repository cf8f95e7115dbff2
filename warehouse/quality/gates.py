"""Quality gates: validate the rows that landed in a window against the expectation suites with Great Expectations,
record every result in the `quality_runs` lake table, and mark failed windows suspect.

How a run works, per table with a suite (`flywheel.warehouse.quality.suites`):
1. DuckDB reads the raw landed rows of the window (`_ingested_at` in `[since, until)`, one row per landed message,
   so duplicates show) and computes the suite's per-row derived columns and PII flags in one pass. Only the
   columns the expectations read reach pandas: text is scanned in DuckDB, never copied to Python.
2. Great Expectations validates that frame (pandas engine; GX through SQL on DuckDB does not work, see
   STACK-NOTES).
3. The results (suite, window, success, observed value, unexpected count and a sample) are appended to
   `<lake>/quality_runs`, one row per expectation, with the suite's gate verdict (`gate_success`, `suspect`).

A window is *suspect* when the latest run over exactly that table and window failed a `critical` expectation
(`suspect_windows`); a later passing run over the same window clears it.

Windows are by landing time, `_ingested_at`, which `Lake.commit` stamps itself, under the table's commit lock, and
strictly increasing from commit to commit (never at or below the previous commit's stamp, recorded in the table).
Commits therefore land in the order of their stamps, and a reader's snapshot of the table (what
`flywheel.warehouse.query.connect` lists at connect time) holds every row stamped up to its latest stamp and none
after: any commit it does not hold is stamped later. So a scheduled run ends its window just past the latest stamp
its snapshot holds (`snapshot_end`), not at the wall clock, and the next run starts there: a row committed after
the read (a batch stamped, then committed a moment later) lands after the window's end and is checked by the next
run. Every landed row is in exactly one scheduled window, and a window that has ended never gains rows, so a run
over it can be repeated with the same outcome. Why not the wall clock: a batch stamped at prepare time and
committed after a run read the lake would be stamped inside that run's ended window, and checked by no run. Why
not Delta versions: `quality_runs` keeps time windows (`flywheel curate`'s `quality_gate` step excludes rows by
`_ingested_at`), and versions would need a second mapping to times that stamps in the commit already give.

Two ways to step outside that guarantee, both explicit: rows committed with `Lake.commit(keep_ingested_at=True)`
(backfills and tests at chosen landing times) can land in windows that have ended; and an explicit `until` is taken
as given, so a window ending between the snapshot's end and the clock can miss a commit that was in flight at the
read. An `until` in the future is refused: a window must have ended to be checked.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.schemas.arrow import SCHEMAS, TS
from flywheel.warehouse import pii, tables
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.quality.suites import ExpectationSpec, Suite, gx_class, load_suites

log = logging.getLogger("flywheel.quality")

RUNS_TABLE = "quality_runs"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("run_at", TS, nullable=False),
    pa.field("suite", pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("window_start", TS, nullable=False),
    pa.field("window_end", TS, nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("expectation", pa.string(), nullable=False),
    pa.field("column_name", pa.string()),
    pa.field("kwargs", pa.string()),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("notes", pa.string()),
    pa.field("success", pa.bool_(), nullable=False),
    pa.field("observed_value", pa.string()),
    pa.field("element_count", pa.int64()),
    pa.field("unexpected_count", pa.int64()),
    pa.field("unexpected_percent", pa.float64()),
    pa.field("unexpected_sample", pa.string()),
    pa.field("exception", pa.string()),
    pa.field("gate_success", pa.bool_(), nullable=False),
    pa.field("suspect", pa.bool_(), nullable=False),
])
"""`quality_runs`: one row per expectation per run; the last two columns are the suite's verdict on the window."""


class QualityError(FlywheelError):
    """A quality run could not be carried out (bad window, unreadable lake, GX failure)."""


class QualityGateFailed(QualityError):
    """A critical expectation failed: the window is marked suspect. Terminal until the data (or suite) is fixed."""

    def __init__(self, run: "QualityRun") -> None:
        self.run = run
        parts = [f"{s.table} ({', '.join(_short_name(r.spec) for r in s.failed())})"
                 for s in run.suites if not s.gate_success]
        super().__init__(f"quality gate failed for {'; '.join(parts)}; the windows are marked suspect"
                         + (f", report: {run.report}" if run.report else ""))


def _short_name(spec: ExpectationSpec) -> str:
    return f"{spec.type.removeprefix('expect_')}({spec.column})"


@dataclass(frozen=True)
class ExpectationResult:
    spec: ExpectationSpec
    success: bool
    observed_value: Any = None
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[Any] = field(default_factory=list)
    exception: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    table: str
    window_start: datetime
    window_end: datetime
    rows: int
    results: tuple[ExpectationResult, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: `load` (DuckDB: read, derive, PII scan) and `validate` (GX)."""

    @property
    def gate_success(self) -> bool:
        return all(r.success for r in self.results if r.spec.severity == "critical")

    def failed(self, severity: str = "critical") -> list[ExpectationResult]:
        return [r for r in self.results if not r.success and r.spec.severity == severity]

    def result(self, expectation: str, column: str) -> ExpectationResult:
        """The result of the expectation of type `expectation` on `column` (the first, if several)."""
        for r in self.results:
            if r.spec.type == expectation and r.spec.column == column:
                return r
        raise KeyError((expectation, column))


@dataclass(frozen=True)
class QualityRun:
    run_id: str
    run_at: datetime
    suites: tuple[SuiteResult, ...]
    report: Path | None = None

    @property
    def success(self) -> bool:
        return all(s.gate_success for s in self.suites)

    def suite(self, table: str) -> SuiteResult:
        for s in self.suites:
            if s.table == table:
                return s
        raise KeyError(table)


@dataclass(frozen=True)
class SuspectWindow:
    table: str
    window_start: datetime
    window_end: datetime
    run_id: str
    failed: tuple[str, ...]


# ------------------------------------------------------------------------------------------------------ running


def run_quality(settings: Settings, qsettings: QualitySettings, *, since: datetime | None = None,
                until: datetime | None = None, tables: Sequence[str] | None = None, report: bool = True,
                store: bool = True) -> QualityRun:
    """Validate the window `[since, until)` of each table (default: every table with a suite).

    `until` defaults to just past the latest row the run's snapshot of the table holds (`snapshot_end`; an
    explicit `until` must not be in the future); `since` to where the table's previous run ended (so scheduled
    runs cover the stream without gaps or overlaps, see the module docstring), or to the table's first landed
    row. The run is stored in `quality_runs` and, with
    `report`, rendered to HTML under `QualitySettings.reports_dir`. Raises nothing on a failed gate: callers decide
    (`QualityGateFailed(run)` is what the CLI and the flow raise).
    """
    from flywheel.warehouse.query import connect

    suites = load_suites(qsettings.params(), qsettings.suites_dir or None)
    chosen = list(tables) if tables else [t for t in SCHEMAS if t in suites]
    unknown = [t for t in chosen if t not in suites]
    if unknown:
        raise QualityError(f"no expectation suite for {', '.join(unknown)}; suites exist for {', '.join(suites)}")
    not_landed = [t for t in chosen if t not in SCHEMAS]
    if not_landed:  # windows are by landing time (`_ingested_at`), which only the landed tables have
        raise QualityError(f"quality gates apply to the landed tables ({', '.join(SCHEMAS)}), not to "
                           f"{', '.join(not_landed)}")
    run_at = datetime.now(timezone.utc)
    for bound, name in ((since, "starts"), (until, "ends")):
        if bound and _utc(bound) > run_at:  # the next scheduled run would start there, after rows yet to land
            raise QualityError(f"window {name} in the future ({_utc(bound).isoformat()}, now {run_at.isoformat()}):"
                               " a window must have ended to be checked; leave `until` out to check up to what "
                               "has landed")
    # Milliseconds in the id keep runs (and their report files) in time order when two start in the same second.
    run_id = f"{run_at:%Y%m%dT%H%M%S}.{run_at.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:8]}"
    con = connect(settings)
    try:
        con.execute(pii.LUHN_MACRO)
        results = []
        for table in chosen:
            start = _utc(since) if since else (last_window_end(settings, table) or _first_landed(con, table) or EPOCH)
            end = _utc(until) if until else snapshot_end(con, table, start)
            if start > end:
                raise QualityError(f"window of {table} starts after it ends: {start.isoformat()} > {end.isoformat()}")
            t0 = time.perf_counter()
            frame = load_window(con, suites[table], start, end)
            t1 = time.perf_counter()
            checked = tuple(validate(suites[table], frame, qsettings.sample_size))
            results.append(SuiteResult(table, start, end, frame.num_rows, checked,
                                       {"load": t1 - t0, "validate": time.perf_counter() - t1}))
    finally:
        con.close()
    run = QualityRun(run_id, run_at, tuple(results))
    if store:
        store_run(settings, run)
    if report:
        from flywheel.warehouse.quality.report import write_report

        run = QualityRun(run.run_id, run.run_at, run.suites, write_report(run, reports_dir(settings, qsettings)))
    return run


def reports_dir(settings: Settings, qsettings: QualitySettings) -> Path:
    return Path(qsettings.reports_dir) if qsettings.reports_dir else Path(settings.home) / "quality"


def window_sql(suite: Suite, table_columns: list[str]) -> str:
    """The query that turns a table's window (parameters `$since`, `$until`) into the frame GX validates."""
    needed = suite.needed_columns(table_columns)
    texts = sorted({col for _kind, col in suite.pii_flags.values()})
    missing = [c for c in texts if c not in table_columns]
    if missing:
        raise QualityError(f"suite {suite.table!r}: PII columns {missing} are not columns of the table")
    inner = [f'"{c}"' for c in dict.fromkeys(needed + texts)]
    inner += [f'({expr}) AS "{name}"' for name, expr in suite.derive.items()]
    inner += [f'{pii.any_sql(c)} AS "_pii_any_{c}"' for c in texts]
    outer = [f'"{c}"' for c in needed + list(suite.derive)]
    outer += [f'{pii.flag_sql(kind, col, "_pii_any_" + col)} AS "{name}"'
              for name, (kind, col) in suite.pii_flags.items()]
    return (f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM lake_{suite.table} "
            "WHERE _ingested_at >= $since AND _ingested_at < $until)")


def load_window(con: duckdb.DuckDBPyConnection, suite: Suite, since: datetime, until: datetime) -> pa.Table:
    """The window's rows with the suite's derived columns, as Arrow (see `window_sql`)."""
    sql = window_sql(suite, SCHEMAS[suite.table].names)
    try:
        return con.sql(sql, params={"since": since, "until": until}).to_arrow_table()
    except duckdb.Error as exc:
        raise QualityError(f"reading the window of {suite.table} failed ({', '.join(suite.files)}): {exc}") from exc


def validate(suite: Suite, rows: pa.Table, sample_size: int = 20) -> list[ExpectationResult]:
    """Run the suite's expectations on `rows` with Great Expectations; results in the suite's order."""
    import great_expectations as gx

    datasource = _gx_datasource()
    frame = rows.to_pandas()
    expectations = []
    for i, spec in enumerate(suite.expectations):
        expectations.append(gx_class(spec.type)(**spec.kwargs, severity=spec.severity, notes=spec.notes or None,
                                                meta={"flywheel_index": i}))
    gx_suite = gx.ExpectationSuite(name=f"{suite.table}-{uuid.uuid4().hex[:8]}", expectations=expectations)
    asset_name = f"{suite.table}-{uuid.uuid4().hex[:8]}"
    asset = datasource.add_dataframe_asset(asset_name)
    try:
        batch = asset.add_batch_definition_whole_dataframe("window").get_batch(batch_parameters={"dataframe": frame})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = batch.validate(gx_suite, result_format={"result_format": "SUMMARY",
                                                          "partial_unexpected_count": sample_size})
    except Exception as exc:  # GX raises many types; for the caller each means the same
        raise QualityError(f"Great Expectations failed on suite {suite.table!r}: {exc}") from exc
    finally:
        datasource.delete_asset(asset_name)
    out: list[ExpectationResult | None] = [None] * len(suite.expectations)
    for r in res.results:
        i = int(r.expectation_config.meta["flywheel_index"])
        info = r.exception_info or {}
        if "raised_exception" not in info:  # keyed by metric: keep the first message
            info = next(iter(info.values()), {}) if info else {}
        raised = info.get("exception_message") if info.get("raised_exception") else None
        result = dict(r.result or {})
        out[i] = ExpectationResult(
            spec=suite.expectations[i], success=bool(r.success) and not raised,
            observed_value=_plain(result.get("observed_value")), element_count=result.get("element_count"),
            unexpected_count=result.get("unexpected_count"),
            unexpected_percent=_finite(result.get("unexpected_percent")),
            sample=[_plain(v) for v in (result.get("partial_unexpected_list") or [])[:sample_size]],
            exception=raised)
    return [r for r in out if r is not None]


_DATASOURCE: Any = None
_GX_VERBOSE = False


def set_gx_verbose(verbose: bool) -> None:
    """Let GX log (INFO) and draw its progress bars on stderr; by default it is silent."""
    global _GX_VERBOSE
    _GX_VERBOSE = verbose
    _set_gx_log_level()
    if _DATASOURCE is not None:
        _set_progress_bars(_DATASOURCE.data_context, verbose)


def _set_gx_log_level() -> None:
    # GX sets levels on some of its own loggers when imported (e.g. INFO on data_context.types.base, which then
    # logs every ephemeral context it creates): set them all, not just the package's root logger.
    level = logging.INFO if _GX_VERBOSE else logging.ERROR
    logging.getLogger("great_expectations").setLevel(level)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("great_expectations.") and isinstance(logger, logging.Logger) and logger.level:
            logger.setLevel(level)


def _set_progress_bars(ctx: Any, on: bool) -> None:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=on)


def _gx_datasource() -> Any:
    """One ephemeral GX context per process; quiet unless `set_gx_verbose(True)`."""
    global _DATASOURCE
    if _DATASOURCE is None:
        import great_expectations as gx

        _set_gx_log_level()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = gx.get_context(mode="ephemeral")
        ctx.enable_analytics(False)  # offline by design; nothing may phone home
        _set_progress_bars(ctx, _GX_VERBOSE)
        _DATASOURCE = ctx.data_sources.add_pandas("flywheel")
    return _DATASOURCE


# ------------------------------------------------------------------------------------------------------ storing


def runs_path(settings: Settings) -> str:
    return tables.uri(settings.lake_location, RUNS_TABLE)


def store_run(settings: Settings, run: QualityRun) -> None:
    """Append the run's results to `quality_runs` (created on first use)."""
    rows: list[dict[str, Any]] = []
    for s in run.suites:
        for r in s.results:
            rows.append({
                "run_id": run.run_id, "run_at": run.run_at, "suite": s.table, "table_name": s.table,
                "window_start": s.window_start, "window_end": s.window_end, "rows": s.rows,
                "expectation": r.spec.type, "column_name": r.spec.column or None,
                "kwargs": json.dumps(r.spec.kwargs, default=str), "severity": r.spec.severity,
                "notes": r.spec.notes or None, "success": r.success,
                "observed_value": None if r.observed_value is None else json.dumps(r.observed_value, default=str),
                "element_count": r.element_count, "unexpected_count": r.unexpected_count,
                "unexpected_percent": r.unexpected_percent,
                "unexpected_sample": json.dumps(r.sample, default=str, ensure_ascii=False) if r.sample else None,
                "exception": r.exception, "gate_success": s.gate_success, "suspect": not s.gate_success,
            })
    if not rows:
        return
    try:
        tables.append(settings.lake_location, RUNS_TABLE, pa.Table.from_pylist(rows, RUNS_SCHEMA))
    except tables.TableError as exc:
        raise QualityError(f"storing quality run {run.run_id} failed: {exc}") from exc


def _query_runs(settings: Settings, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of `sql` over the stored runs (as `runs`); no rows when no run was stored yet."""
    if not tables.files(settings.lake_location, RUNS_TABLE):
        return []
    t = tables.query(settings.lake_location, RUNS_TABLE, sql.replace(" FROM runs", " FROM t"), params,
                     empty=RUNS_SCHEMA)
    return [tuple(r.values()) for r in t.to_pylist()]


def last_window_end(settings: Settings, table: str) -> datetime | None:
    """Where the latest-ending stored window of `table` ends (None: never checked)."""
    rows = _query_runs(settings, "SELECT max(window_end) FROM runs WHERE table_name = $t", {"t": table})
    return _utc(rows[0][0]) if rows and rows[0][0] else None


def suspect_windows(settings: Settings, table: str | None = None) -> list[SuspectWindow]:
    """Windows whose latest run failed a critical expectation, oldest first. Curation (the `quality_gate` step)
    excludes rows whose `_ingested_at` lies in one of them (`window_start <= _ingested_at < window_end`)."""
    rows = _query_runs(settings, """
        WITH latest AS (
          SELECT table_name, window_start, window_end, max(run_at) AS run_at FROM runs GROUP BY ALL)
        SELECT r.table_name, r.window_start, r.window_end, r.run_id,
          list(r.expectation || '(' || coalesce(r.column_name, '') || ')' ORDER BY r.expectation, r.column_name)
            FILTER (WHERE NOT r.success AND r.severity = 'critical') AS failed
        FROM runs r JOIN latest USING (table_name, window_start, window_end, run_at)
        WHERE r.suspect AND ($table IS NULL OR r.table_name = $table)
        GROUP BY ALL ORDER BY r.window_start, r.table_name""", {"table": table})
    return [SuspectWindow(t, _utc(s), _utc(e), run_id, tuple(failed or ())) for t, s, e, run_id, failed in rows]


# ------------------------------------------------------------------------------------------------------ helpers


def snapshot_end(con: duckdb.DuckDBPyConnection, table: str, start: datetime) -> datetime:
    """Just past the latest `_ingested_at` the connection's snapshot of `table` holds from `start` on (`start`
    itself if it holds none): every commit the snapshot does not hold is stamped at or after it."""
    value = con.execute(f"SELECT max(_ingested_at) FROM lake_{table} WHERE _ingested_at >= $start",
                        {"start": start}).fetchall()
    return _utc(value[0][0]) + timedelta(microseconds=1) if value and value[0][0] else start


def _first_landed(con: duckdb.DuckDBPyConnection, table: str) -> datetime | None:
    value = con.execute(f"SELECT min(_ingested_at) FROM lake_{table}").fetchall()
    return _utc(value[0][0]) if value and value[0][0] else None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _finite(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _plain(v: Any) -> Any:
    """A JSON-friendly Python value of what GX reports (numpy scalars, pandas timestamps, ...)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if hasattr(v, "item"):
        return _plain(v.item())
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)

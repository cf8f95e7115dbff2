"""Quality gates on 1M landed events, against a plain DuckDB scan of the same data measured in the same run.

    python bench/quality.py [--events 1000000] [--keep DIR]

1. lands N realistic events (inferences and their feedback, from ../shared/data or the bundled corpus) in a fresh
   lake: a base sample goes through the real contract validator, then is repeated with fresh ids and offsets, in
   commits of about 100k rows (what the landing worker's flushes make);
2. baseline: one DuckDB pass over the same rows and columns the gates read (count, distinct ids, text lengths,
   numeric ranges), through the same views;
3. `run_quality` over the whole window: DuckDB derives the per-row columns and PII flags, GX validates, results are
   stored in `quality_runs`, the HTML report is written;
4. prints both times, their ratio, where the quality run's time went, and the target (30 s).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.infra.testing.corpus import default_shared_data, generate, load_corpus
from flywheel.warehouse.lake import Lake

BASE_INFERENCES = 20_000
COMMIT_ROWS = 100_000
LANDED = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)

BASELINE_SQL = """
SELECT count(*), count(DISTINCT inference_id), sum(length(input)), sum(length(output)), min(latency_ms),
       max(latency_ms), max(input_tokens), max(output_tokens), max(cost_usd), min(timestamp), max(_ingested_at)
FROM lake_inferences WHERE _ingested_at >= $since AND _ingested_at < $until
UNION ALL
SELECT count(*), count(DISTINCT feedback_id), sum(length(correction)), sum(length(comment)), min(value), max(value),
       count(DISTINCT kind), count(DISTINCT source), count(DISTINCT inference_id), min(timestamp), max(_ingested_at)
FROM lake_feedback WHERE _ingested_at >= $since AND _ingested_at < $until
"""


def _with_suffix(col: pa.ChunkedArray, suffix: str) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(col, pa.scalar(suffix), "")


def land(settings: Settings, n_events: int) -> dict[str, int]:
    base = to_rows(generate(load_corpus(default_shared_data()), BASE_INFERENCES, seed=1), ingested_at=LANDED)
    per_copy = sum(t.num_rows for t in base.values())
    copies = -(-n_events // per_copy)
    lake = Lake(settings.lake)
    lake.ensure()
    landed = {"inferences": 0, "feedback": 0}
    pending: dict[str, list[pa.Table]] = {"inferences": [], "feedback": []}
    offset = 0
    for k in range(copies):
        for table, rows in base.items():
            rows = rows.slice(0, max(0, min(rows.num_rows, n_events - sum(landed.values()))))
            if rows.num_rows == 0:
                continue
            rows = rows.set_column(rows.column_names.index("inference_id"), "inference_id",
                                   _with_suffix(rows["inference_id"], f"-c{k}"))
            if table == "feedback":
                rows = rows.set_column(rows.column_names.index("feedback_id"), "feedback_id",
                                       _with_suffix(rows["feedback_id"], f"-c{k}"))
            rows = rows.set_column(rows.column_names.index("_offset"), "_offset",
                                   pa.array(range(offset, offset + rows.num_rows), pa.int64()))
            rows = rows.set_column(rows.column_names.index("_ingested_at"), "_ingested_at",
                                   pa.array([LANDED + timedelta(seconds=k)] * rows.num_rows, rows["_ingested_at"].type))
            offset += rows.num_rows
            pending[table].append(rows)
            landed[table] += rows.num_rows
        for table, parts in pending.items():
            if parts and (sum(p.num_rows for p in parts) >= COMMIT_ROWS or k == copies - 1):
                lake.commit(table, pa.concat_tables(parts), {}, keep_ingested_at=True)
                pending[table] = []
    for table, parts in pending.items():
        if parts:
            lake.commit(table, pa.concat_tables(parts), {}, keep_ingested_at=True)
    return landed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="FLYWHEEL_HOME to land into (kept afterwards)")
    args = ap.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="fw-bench-quality-"))
    if args.keep is None:
        atexit.register(shutil.rmtree, home, True)  # the lake is of no use after the run
    settings = Settings(home=home)
    t0 = time.perf_counter()
    landed = land(settings, args.events)
    print(f"landed {landed['inferences']:,} inferences + {landed['feedback']:,} feedback = "
          f"{sum(landed.values()):,} events in {time.perf_counter() - t0:.1f} s ({home})")
    since, until = LANDED - timedelta(hours=1), LANDED + timedelta(days=1)

    from flywheel.warehouse.query import connect

    t0 = time.perf_counter()
    con = connect(settings)
    con.execute(BASELINE_SQL, {"since": since, "until": until}).fetchall()
    baseline = time.perf_counter() - t0
    con.close()

    t0 = time.perf_counter()
    import great_expectations  # noqa: F401  (a CLI run pays this once; reported apart)

    gx_import = time.perf_counter() - t0

    from flywheel.warehouse.quality.settings import QualitySettings
    from flywheel.warehouse.quality.gates import run_quality

    t0 = time.perf_counter()
    run = run_quality(settings, QualitySettings(), since=since, until=until)
    elapsed = time.perf_counter() - t0
    assert sum(s.rows for s in run.suites) == sum(landed.values())
    print(f"baseline (plain DuckDB scan of the same rows and columns): {baseline:6.2f} s")
    print(f"quality gates (DuckDB derive + GX validate + store + report): {elapsed:6.2f} s  "
          f"= {elapsed / baseline:.1f}x baseline   target < 30 s: {'OK' if elapsed < 30 else 'MISSED'}")
    for s in run.suites:
        print(f"  {s.table:10s} {s.rows:>9,} rows  load+derive {s.seconds['load']:5.2f} s  "
              f"GX {s.seconds['validate']:5.2f} s  {len(s.results)} expectations  "
              f"gate {'passed' if s.gate_success else 'failed'}")
    kept = "" if args.keep else ", removed at exit: --keep HOME keeps it"
    print(f"(GX import, paid once per process: {gx_import:.1f} s; report: {run.report}{kept})")
    sys.exit(0 if elapsed < 30 else 1)


if __name__ == "__main__":
    main()

"""Compaction: what the landing worker's small files cost readers, and what `flywheel lake compact` buys back.

    python bench/maintenance.py [--events 300000] [--commits 600]

1. lands N inference rows in C small commits (as a busy worker flushing every second makes them);
2. baseline: a DuckDB query over the views on the small files (best of 3, fresh connection each);
3. compacts (timing it), then runs the same query on the compacted files;
4. prints files, row groups, both query times and their ratio, and the compaction time.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.infra.testing.corpus import default_shared_data, generate, load_corpus
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.maintenance import MaintenanceSettings, compact, stats
from flywheel.warehouse.query import connect

QUERY = "SELECT model, count(*), avg(latency_ms), sum(output_tokens) FROM inferences GROUP BY model"


def best_query_seconds(settings: Settings) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        con = connect(settings)
        con.sql(QUERY).fetchall()
        con.close()
        best = min(best, time.perf_counter() - t0)
    return best


def row_groups(settings: Settings) -> int:
    return sum(pq.ParquetFile(f).metadata.num_row_groups
               for f in DeltaTable(str(Lake(settings.lake).path("inferences"))).file_uris())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--commits", type=int, default=600)
    args = ap.parse_args()
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="fw-bench-maint-")))
    atexit.register(shutil.rmtree, settings.home, True)  # the lake is of no use after the run
    base = to_rows(generate(load_corpus(default_shared_data()), 20_000, seed=2, feedback_rate=0),
                   ingested_at=datetime(2026, 11, 20, tzinfo=timezone.utc))["inferences"]
    lake = Lake(settings.lake)
    lake.ensure()
    per = args.events // args.commits
    t0 = time.perf_counter()
    for k in range(args.commits):
        rows = base.slice((k * per) % (base.num_rows - per), per)
        rows = rows.set_column(0, "inference_id", pc.binary_join_element_wise(rows["inference_id"],
                                                                              pa.scalar(f"-{k}"), ""))
        rows = rows.set_column(rows.column_names.index("_offset"), "_offset",
                               pa.array(range(k * per, (k + 1) * per), pa.int64()))
        lake.commit("inferences", rows, {("bench.inference", 0): (k + 1) * per})
    print(f"landed {per * args.commits:,} rows in {args.commits} commits in {time.perf_counter() - t0:.1f} s")
    before = stats(settings, "inferences", MaintenanceSettings())
    rg_before = row_groups(settings)
    q_small = best_query_seconds(settings)
    t0 = time.perf_counter()
    compact(settings, "inferences", MaintenanceSettings())
    t_compact = time.perf_counter() - t0
    after = stats(settings, "inferences", MaintenanceSettings())
    q_large = best_query_seconds(settings)
    print(f"before: {before.files} files, {rg_before} row groups, {before.bytes / 2**20:.0f} MB; "
          f"query {q_small * 1000:.0f} ms (baseline)")
    print(f"after:  {after.files} files, {row_groups(settings)} row groups, {after.bytes / 2**20:.0f} MB; "
          f"query {q_large * 1000:.0f} ms = {q_small / q_large:.1f}x faster")
    print(f"compaction took {t_compact:.1f} s ({per * args.commits / t_compact:,.0f} rows/s); "
          f"watermark kept: {lake.table('inferences').transaction_version('bench.inference[0]') == per * args.commits}")


if __name__ == "__main__":
    main()

"""Lake growth: what one landing commit, and one look for what is queryable, cost as a table's history grows.

    python bench/lake_growth.py [--versions 1800] [--rows 2900] [--window 100]

Without Kafka: `Lake.commit` is driven as the landing worker drives it in a soak at 5,000 events/s (one commit per
table per `FLYWHEEL_FLUSH_INTERVAL_S` = 1 s batch, about 2,900 inferences each, with three partitions'
watermarks), for as many versions as a 30-minute soak makes (1,800). It prints, per window of `--window`
versions, the median commit time and where it went (delta-rs's `update_incremental`, `create_write_transaction`,
our Parquet write, the watermark reads), and the probes a reader pays at that point: opening the table and
listing its files (what the soak's latency probe does on every new version, infra/testing/soak.py), `connect()`
(the views over every landed file) and a `count(*)` of `lake_inferences` (DuckDB's per-file work: footers, no
rows; the deduplicated views' cost grows with the rows, as any full scan's does). Each is reported as a ratio to
the first window, measured in the same run: a ratio that grows with the version is cost that grows with history.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra.testing.corpus import default_shared_data, generate, load_corpus
from flywheel.infra.testing.land import to_rows
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect

STEPS = ("update_incremental", "transaction_version", "create_write_transaction")


def timed(spent: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t0
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", type=int, default=1_800, help="commits to make (a 30-minute soak: 1,800)")
    ap.add_argument("--rows", type=int, default=2_900, help="inferences per commit (5,000 events/s: about 2,900)")
    ap.add_argument("--window", type=int, default=100, help="versions per reported window")
    args = ap.parse_args()
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="fw-bench-growth-")))
    atexit.register(shutil.rmtree, settings.home, True)
    base = to_rows(generate(load_corpus(default_shared_data()), args.rows, seed=3, feedback_rate=0))["inferences"]
    base = base.slice(0, args.rows)
    lake = Lake(settings.lake)
    lake.ensure()
    spent: dict[str, float] = defaultdict(float)
    for step in STEPS:  # the delta-rs calls a commit makes, timed on the class so every table object counts
        setattr(DeltaTable, step, timed(spent, step, getattr(DeltaTable, step)))
    lake._write_files = timed(spent, "parquet", lake._write_files)  # type: ignore[method-assign]
    windows: list[dict[str, float]] = []
    current: dict[str, list[float]] = defaultdict(list)
    uri = lake.uri("inferences")
    t_start = time.perf_counter()
    for k in range(args.versions):
        ids = pc.binary_join_element_wise(base["inference_id"], pa.scalar(f"-{k}"), "")
        rows = base.set_column(0, "inference_id", ids).set_column(
            base.column_names.index("_offset"), "_offset", pa.array(range(k * args.rows, (k + 1) * args.rows)))
        spent.clear()
        t0 = time.perf_counter()
        lake.commit("inferences", rows, {("bench.inference", 0): (k + 1) * args.rows,
                                         ("bench.inference", 1): k, ("bench.inference", 2): k})
        current["commit"].append(time.perf_counter() - t0)
        for key in (*STEPS, "parquet"):
            current[key].append(spent[key])
        if (k + 1) % args.window == 0:
            t0 = time.perf_counter()
            files = len(DeltaTable(uri).file_uris())
            probe = time.perf_counter() - t0
            t0 = time.perf_counter()
            con = connect(settings)
            opened = time.perf_counter() - t0
            t0 = time.perf_counter()
            con.sql("SELECT count(*) FROM lake_inferences").fetchall()  # per-file work only: footers, no rows
            count = time.perf_counter() - t0
            con.close()
            windows.append({**{key: statistics.median(v) for key, v in current.items()}, "open+list": probe,
                            "connect": opened, "count": count, "version": k + 1, "files": files})
            current.clear()
    print(f"{args.versions} commits of {args.rows} rows in {time.perf_counter() - t_start:.0f} s; "
          f"median per window of {args.window} versions, ratio to the first window:")
    keys = ("commit", *STEPS, "parquet", "open+list", "connect", "count")
    print("version  files  " + "  ".join(f"{k:>24}" for k in keys))
    first = windows[0]
    for w in windows:
        print(f"{w['version']:7.0f} {w['files']:6.0f}  " + "  ".join(
            f"{w[k] * 1000:13.1f} ms {w[k] / first[k] if first[k] else 0:5.1f}x" for k in keys))
    last = windows[-1]
    print(f"growth, version {first['version']:.0f} -> {last['version']:.0f}: " + ", ".join(
        f"{k} {last[k] / first[k]:.1f}x" for k in keys if first[k]))


if __name__ == "__main__":
    main()

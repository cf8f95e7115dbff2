"""Curating an SFT and a preference dataset from N landed events (default 5M), against a plain DuckDB COPY of the
same joined rows to Parquet measured in the same run.

    python bench/curate.py [--events 5000000] [--rounds 3] [--keep DIR]

1. lands N realistic events (as bench/quality.py does: a 20k-inference base from the real corpus, repeated with
   fresh ids, in commits of about 100k rows);
2. per round (default 3): the baseline, `COPY (inferences JOIN feedback, the columns curation reads) TO
   'x.parquet'` through the same views, then curates `infra/recipes/support-sft.yaml` and
   `answers-preference.yaml` (exact and near-dedupe, PII, splits, every export), each in a fresh process so its
   peak RSS is its own; the ratio is the median of the rounds' ratios;
3. near-dedupe throughput: the step alone over up to 200k SFT rows that skip exact dedupe (so it has real work),
   next to rensa's published figure (41k-120k rows/s in its README);
4. prints the times, each dataset's content hash (equal across code versions on the same lake when a change
   keeps the output), the ratio to the baseline (target: at most 3x), peak RSS (target: 4 GB) and the 2-minute target.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import land  # noqa: E402  (bench/quality.py: the same landed events)

from flywheel.config import Settings  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "infra" / "recipes"
BASELINE_SQL = """
COPY (SELECT i.inference_id, i.timestamp, i.app, i.session_id, i.input, i.input_messages, i.output,
             f.feedback_id, f.kind, f.value, f.source, f.correction, f.other_inference_id, f.timestamp AS fb_timestamp
      FROM inferences i JOIN feedback f USING (inference_id)) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from flywheel.config import Settings
from flywheel.warehouse.datasets import DatasetSettings, curate, load_recipe
from flywheel.warehouse.datasets.recipes import parse_recipe
home, what = Path(sys.argv[1]), sys.argv[2]
s, ds = Settings(home=home), DatasetSettings(root=str(home / sys.argv[3]))
t0 = time.perf_counter()
if what == "near":
    from flywheel.warehouse.datasets import steps
    from flywheel.warehouse.datasets.kinds import select
    from flywheel.warehouse.query import connect
    r = parse_recipe({"name": "near", "kind": "sft", "steps": {"exact_dedupe": False}})
    con = connect(s)
    select(con, r)
    con.execute("CREATE OR REPLACE TEMP TABLE rows AS SELECT * FROM rows ORDER BY inference_ids[1] LIMIT 200000")
    steps.length(con, r)
    t0 = time.perf_counter()
    rep = steps.near_dedupe(con, r, ds)
    out = {"rows_in": rep.rows_in, "rows_out": rep.rows_out}
else:
    res = curate(s, ds, load_recipe(what))
    out = {"splits": dict(res.splits), "steps": {x.step: [x.rows_in, x.rows_out, x.seconds] for x in res.steps},
           "content_hash": res.content_hash}
out["seconds"] = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux copies ru_maxrss across fork, so a child would report the parent's peak.
out["peak_rss_mb"] = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM"))) / 1024
print(json.dumps(out))
"""


def child(home: Path, what: str, root: str) -> dict[str, object]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(home), what, root], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{what} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    last = [ln for ln in out.stdout.splitlines() if "{" in ln][-1]  # DuckDB's progress bar may share the line
    result: dict[str, object] = json.loads(last[last.index("{"):])
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def copy_baseline(settings: Settings, out: Path) -> tuple[float, int]:
    """The baseline: seconds to COPY the joined rows to Parquet through the same views, and how many rows."""
    from flywheel.warehouse.query import connect

    con = connect(settings)
    t0 = time.perf_counter()
    con.execute(BASELINE_SQL.format(path=out))
    seconds = time.perf_counter() - t0
    joined = int(con.execute(f"SELECT count(*) FROM '{out}'").fetchall()[0][0])
    con.close()
    return seconds, joined


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="baseline-then-curation rounds (the ratio is their median)")
    ap.add_argument("--keep", type=Path, default=None, help="FLYWHEEL_HOME to land into (reused if it has a lake)")
    args = ap.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="fw-bench-curate-"))
    if args.keep is None:
        atexit.register(shutil.rmtree, home, True)
    settings = Settings(home=home)
    if not (Path(settings.lake) / "inferences").is_dir():
        t0 = time.perf_counter()
        landed = land(settings, args.events)
        print(f"landed {landed['inferences']:,} inferences + {landed['feedback']:,} feedback in "
              f"{time.perf_counter() - t0:.1f} s")
    # The machine is shared: the baseline's time moves by 2x within an hour, so each round measures the baseline
    # next to the two curations and the ratio is the median of the rounds' ratios.
    ratios: list[float] = []
    totals: list[float] = []
    peak = 0.0
    for n in range(args.rounds):
        baseline, joined = copy_baseline(settings, home / "baseline.parquet")
        print(f"round {n + 1}/{args.rounds}, load {os.getloadavg()[0]:.1f}: baseline: DuckDB COPY of {joined:,} "
              f"joined rows to Parquet: {baseline:.1f} s")
        total = 0.0
        for recipe in ("support-sft", "answers-preference"):
            shutil.rmtree(home / "bench-datasets", ignore_errors=True)
            r = child(home, str(RECIPES / f"{recipe}.yaml"), "bench-datasets")
            total += float(r["seconds"])  # type: ignore[arg-type]
            peak = max(peak, float(r["peak_rss_mb"]))  # type: ignore[arg-type]
            print(f"  {recipe}: {r['seconds']:.1f} s (process {r['wall_seconds']:.1f} s with imports), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, splits {r['splits']}, content hash {r['content_hash']}")
            for step, (rows_in, rows_out, secs) in r["steps"].items():  # type: ignore[attr-defined]
                print(f"      {step:14s} {rows_in:>10,} -> {rows_out:<10,} {secs:6.2f} s")
        ratios.append(total / baseline)
        totals.append(total)
        print(f"  curation {total:.1f} s = {total / baseline:.2f}x this round's baseline")
    near = child(home, "near", "bench-near")
    rate = near["rows_in"] / max(float(near["seconds"]), 1e-9)  # type: ignore[operator]
    print(f"near-dedupe alone: {near['rows_in']:,} -> {near['rows_out']:,} rows in {near['seconds']:.2f} s = "
          f"{rate:,.0f} rows/s (rensa's README: 41k-120k rows/s; its benchmark machine, not this 2-core one)")
    print(f"curation (median of {len(ratios)} rounds) {statistics.median(totals):.1f} s = "
          f"{statistics.median(ratios):.2f}x the baseline (rounds: {', '.join(f'{x:.2f}x' for x in ratios)}; "
          f"target <= 3x); peak RSS {peak:.0f} MB (target <= 4096 MB); target <= 120 s: "
          f"{'met' if max(totals) <= 120 else 'NOT met'} (slowest round {max(totals):.1f} s)")
    print(f"(this process's peak RSS, landing included: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()

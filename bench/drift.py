"""Drift run over 1M current vs 1M reference events, against plain Evidently on the same frames, in the same run.

    python bench/drift.py [--rows 1000000] [--home DIR]

1. lands 2 x ROWS inferences (and feedback on 60% of them) built from the real answers in infra/testing/data into a
   Delta lake: 3 apps x 4 models x 2 prompt versions, with drift injected in the current window (one model
   switches version, one app gets 30% non-English prompts, one segment's thumbs-down rate goes 20% -> 45%);
2. ours, in a fresh subprocess each: `run_drift` with every descriptor, three segment levels (app, app+model,
   app+model+prompt_version) and the default Evidently reports (on samples of the alerting segments), once cold
   (no descriptor cached: 2M inferences described) and once in the steady state of scheduled runs (the reference
   window's descriptors cached by the run that had it as its current window; the current 1M described);
3. baseline, in another fresh subprocess: Evidently's plain `DataDriftPreset` on the same two descriptor frames
   (all rows, no segments), the frames read from Parquet before the clock starts;
4. prints wall time and peak RSS of both and their ratio, and where our time went.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
APPS = ("support-bot", "writing-assistant", "search-answers")
MODELS = ("oasst-llama-30b", "gpt", "claude", "falcon")
CHUNK = 100_000


def generate(home: Path, rows: int) -> None:
    from flywheel.config import Settings
    from flywheel.infra.testing import scenarios as S

    settings = Settings(home=home)
    answers = [x for x in S.all_answers() if "rlhf-1-llama-30b-8k" not in x[0]]
    switched = S.sampling_report("oasst-rlhf-1-llama-30b-8k")
    foreign = S.multilingual_answers()
    pools = {name: (pa.array([p for p, _ in rows_]), pa.array([o for _, o in rows_]))
             for name, rows_ in (("base", answers), ("switched", switched), ("foreign", foreign))}
    rng = np.random.default_rng(0)
    offset = 0
    for side, start in (("ref", T0), ("cur", T0 + DAY)):
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            app = rng.integers(0, len(APPS), n)
            model = rng.integers(0, len(MODELS), n)
            pv = rng.integers(0, 2, n)
            pool = np.zeros(n, np.int8)  # 0 base, 1 switched model version, 2 foreign prompt
            if side == "cur":
                pool[(app == 0) & (model == 0)] = 1
                pool[(app == 1) & (rng.random(n) < 0.3)] = 2
            prompts, outputs = [], []
            order = np.arange(n)
            parts = []
            for k, name in enumerate(("base", "switched", "foreign")):
                idx = order[pool == k]
                if not idx.size:
                    continue
                ps, os_ = pools[name]
                pick = rng.integers(0, len(ps), idx.size)
                parts.append((idx, ps.take(pick), os_.take(pick)))
            inv = np.argsort(np.concatenate([p[0] for p in parts]))
            prompts = pa.concat_arrays([p[1] for p in parts]).take(inv)
            outputs = pa.concat_arrays([p[2] for p in parts]).take(inv)
            seconds = np.sort(rng.random(n)) * 86399
            stamps = pa.array((np.datetime64(start.replace(tzinfo=None), "us")
                               + (seconds * 1e6).astype("timedelta64[us]")), pa.timestamp("us", tz="UTC"))
            ids = pa.array([f"{side}-{done + i}" for i in range(n)])
            out_len = np.asarray(pa.compute.utf8_length(outputs))
            in_len = np.asarray(pa.compute.utf8_length(prompts))
            inf = {
                "inference_id": ids, "timestamp": stamps,
                "app": pa.array(np.array(APPS)[app]), "model": pa.array(np.array(MODELS)[model]),
                "model_version": pa.array(np.where(pool == 1, "v2", "v1")),
                "prompt_template": pa.array(["default"] * n), "prompt_version": pa.array(np.array(["p1", "p2"])[pv]),
                "input": prompts, "output": outputs,
                "latency_ms": pa.array(rng.lognormal(6.5, 0.4, n) + out_len * 0.5),
                "input_tokens": pa.array(in_len // 4 + 1), "output_tokens": pa.array(out_len // 4 + 1),
                "cost_usd": pa.array((in_len / 4 * 2.5 + out_len / 4 * 10) / 1e6),
            }
            ev = S.Events(inferences=inf)
            has_fb = rng.random(n) < 0.6
            down_p = np.where((side == "cur") & (app == 2) & (model == 1), 0.45, 0.2)
            down = rng.random(n) < down_p
            fb_idx = np.flatnonzero(has_fb)
            ev.feedback = {
                "feedback_id": pa.array([f"{side}-fb-{done + i}" for i in fb_idx]),
                "inference_id": ids.take(fb_idx), "timestamp": stamps.take(fb_idx),
                "kind": pa.array(["thumbs"] * fb_idx.size),
                "value": pa.array(np.where(down[fb_idx], -1.0, 1.0)),
            }
            S.land(settings, ev, offset0=offset)
            offset += n
            done += n
            print(f"  landed {side} {done:,}/{rows:,}", file=sys.stderr)


# Peak RSS of this process: VmHWM (ru_maxrss would include the parent's peak: Linux keeps it across exec).
HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

OURS = HWM + """
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from flywheel.config import Settings
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.windows import Window
from flywheel.warehouse.drift.settings import DriftSettings
home, t0, mode = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
import shutil
from datetime import datetime, timezone, timedelta
from flywheel.warehouse.drift.loading import DESCRIPTORS_TABLE, connect, load_window
T0 = datetime.fromtimestamp(t0, timezone.utc)
s = Settings(home=home)
ds = DriftSettings.from_env()
reference = Window(T0, T0 + timedelta(days=1))
shutil.rmtree(Path(s.lake) / DESCRIPTORS_TABLE, ignore_errors=True)
if mode == "steady":
    # the reference window was the current window of an earlier run: its descriptors are in the cache
    con = connect(s, ds)
    load_window(con, reference, ds, Path(s.lake))
    con.close()
start = time.perf_counter()
run = run_drift(s, ds, current=Window(T0 + timedelta(days=1), T0 + timedelta(days=2)), reference=reference,
                keep_frames=True)
elapsed = time.perf_counter() - start
peak = hwm()
ref, cur = run.frames
pq.write_table(ref, home / "ref_frame.parquet")
pq.write_table(cur, home / "cur_frame.parquet")
print(json.dumps({"seconds": elapsed, "peak_mb": peak, "checks": len(run.effects), "drifted": len(run.drifted),
                  "segments": len({(e.level, e.segment) for e in run.effects}), "alerts": len(run.alerts),
                  "reports": len(run.reports), "n_reference": run.n_reference, "n_current": run.n_current,
                  "timings": run.timings,
                  "alerted": sorted({a["segment"] + " " + a["kind"] for a in run.alerts})}))
"""

BASELINE = HWM + """
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq
home = Path(sys.argv[1])
from flywheel.warehouse.drift.features import FEATURES, CATEGORICAL
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
def frame(p):
    t = pq.read_table(p, columns=list(FEATURES))
    df = t.to_pandas()
    for c in CATEGORICAL:
        df[c] = df[c].astype(str)
    for c in df.columns:
        if df[c].dtype == bool:
            df[c] = df[c].astype(int)
    return df
ref, cur = frame(home / "ref_frame.parquet"), frame(home / "cur_frame.parquet")
cols = [c for c in ref.columns if ref[c].notna().any() and cur[c].notna().any()]
d = DataDefinition(numerical_columns=[c for c in cols if c not in CATEGORICAL],
                   categorical_columns=[c for c in cols if c in CATEGORICAL])
base = hwm()
start = time.perf_counter()
snap = Report([DataDriftPreset(columns=cols)]).run(Dataset.from_pandas(cur[cols], data_definition=d),
                                                   Dataset.from_pandas(ref[cols], data_definition=d))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_mb": hwm(),
                  "peak_mb_before_run": base, "rows": [len(ref), len(cur)], "columns": len(cols)}))
"""


def _sub(code: str, *args: str, timeout: float) -> dict:
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                             env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="inferences per side")
    ap.add_argument("--home", type=Path, default=None, help="reuse a lake built by an earlier run")
    ap.add_argument("--baseline-timeout", type=float, default=900)
    ap.add_argument("--generate-only", action="store_true", help="only build the lake (under --home)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    if args.home is None and not args.generate_only:
        atexit.register(shutil.rmtree, home, True)  # the lake is of no use after the run
    if not (home / "lake" / "inferences").exists():
        t = time.perf_counter()
        generate(home, args.rows)
        print(f"generated 2 x {args.rows:,} inferences in {time.perf_counter() - t:.0f} s under {home}",
              file=sys.stderr)
    if args.generate_only:
        return
    cold = _sub(OURS, str(home), str(T0.timestamp()), "cold", timeout=900)
    print(json.dumps({"ours_cold": cold}, indent=1))
    ours = _sub(OURS, str(home), str(T0.timestamp()), "steady", timeout=900)
    print(json.dumps({"ours_steady": ours}, indent=1))
    if "error" in ours or "error" in cold:
        sys.exit(1)
    base = _sub(BASELINE, str(home), timeout=args.baseline_timeout)
    print(json.dumps({"evidently_baseline": base}, indent=1))
    print()
    print(f"{'':44s} {'wall s':>8s} {'peak MB':>8s}")
    print(f"{'ours, cold (2M inferences described)':44s} {cold['seconds']:8.1f} {cold['peak_mb']:8.0f}")
    print(f"{'ours, steady state (reference cached)':44s} {ours['seconds']:8.1f} {ours['peak_mb']:8.0f}   "
          f"({ours['segments']} segments, {ours['checks']} checks, {ours['drifted']} drifted, {ours['alerts']} "
          f"alerts, {ours['reports']} reports)")
    if "error" not in base:
        print(f"{'Evidently DataDriftPreset, same frames':44s} {base['seconds']:8.1f} {base['peak_mb']:8.0f}   "
              f"(all rows, no segments, frames given)")
        for name, r in (("cold", cold), ("steady", ours)):
            print(f"ratio ours ({name}) / Evidently: time {r['seconds'] / base['seconds']:.2f}, "
                  f"peak memory {r['peak_mb'] / base['peak_mb']:.2f}")
    else:
        print(f"Evidently baseline: {base['error'][-300:]}")
    for name, r in (("cold", cold), ("steady", ours)):
        print(f"our time ({name}): " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()))
        print(f"  targets ({name}): < 60 s -> {'met' if r['seconds'] < 60 else 'MISSED'}; < 2048 MB -> "
              f"{'met' if r['peak_mb'] < 2048 else 'MISSED'}")
    print("alerts: " + "; ".join(ours["alerted"]))


if __name__ == "__main__":
    main()

"""Batch drift detection: reference vs current samples from the lake, per segment, into the `drift_runs` table.

A run (`run_drift`) wires the modules of this package, one concern each:
1. `loading` reads the inferences of each side with one streaming DuckDB scan (only the window's date partitions,
   text never held whole in memory), computes their descriptors (`descriptors`, cached in the lake) and joins each
   inference's feedback signals (thumbs-up rate, normalized rating, correction, flag, regenerate/abandon); the
   sides are `windows` of the lake or a reference dataset;
2. `compute_effects` (here) compares every feature (`features`) in every segment of every level
   (`--by app,model,prompt_version` gives three levels) with the effect sizes of `effects`, on all rows;
3. `decisions` decides alerts: a drifted feature alerts when it drifted in `sustain` consecutive windows (read back
   from `drift_runs`) or its effect is `large_factor` times its threshold, and builds the typed alerts;
4. `reports` writes Evidently HTML reports for the segments that drifted (or all, see `DriftSettings.reports`) on a
   random sample of `report_sample` rows per side: Evidently is the human-facing view, not the decision (it would
   cost minutes on millions of rows; the decision statistics take seconds);
5. the alerts (`flywheel.schemas.alerts.Alert`) go to the sink the run was given: the outbox of
   `flywheel.warehouse.alerts`, which delivers them to Slack;
6. `storage` appends one row per (segment, feature) to the Delta table `<lake>/drift_runs` (a DuckDB view
   `drift_runs`), in one commit and last: a run recorded there has its alerts queued, and a run killed before
   it left no record (its re-run queues no alert twice).

Data drift is about what users send (input descriptors); model drift about what the model answers and how users
take it (output descriptors, latency, cost, feedback signals).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

import pyarrow as pa

from flywheel.config import Settings
from flywheel.schemas.alerts import Alert, AlertSink
from flywheel.warehouse.drift.decisions import build_alerts, decide, history
from flywheel.warehouse.drift.descriptors import SCRIPTS
from flywheel.warehouse.drift.effects import Effect, compare, segment_levels
from flywheel.warehouse.drift.features import FEATURES, feature_values
from flywheel.warehouse.drift.loading import FeedbackHorizon, connect, load_dataset, load_window
from flywheel.warehouse.drift.reports import report_link, write_reports
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.shifts import with_shifts
from flywheel.warehouse.drift.storage import store
from flywheel.warehouse.drift.windows import Dataset, Window, parse_reference

log = logging.getLogger("flywheel.drift")


@dataclass
class DriftRun:
    """The outcome of one drift run, as stored in `drift_runs` and handed to the CLI, the flow and the bench."""

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
    feedback_horizon: timedelta | None = None
    """How long after each inference its feedback counted, in both windows (`FeedbackHorizon`)."""
    frames: tuple[pa.Table, pa.Table] | None = field(default=None, repr=False)
    """(reference, current) descriptor tables, when `run_drift(keep_frames=True)` (benchmarks, notebooks)."""

    @property
    def drifted(self) -> list[Effect]:
        return [e for e in self.effects if e.drifted]


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
        r, c = feature_values(ref, feature), feature_values(cur, feature)
        out.extend(compare(feature, method, threshold, r, c, segs, ds.alpha, ds.min_samples, SCRIPTS))
    return out


def run_drift(settings: Settings, ds: DriftSettings, *, current: Window | str | None = None,
              reference: Window | Dataset | str | None = None, by: str | None = None,
              now: datetime | None = None, reports: bool = True, sink: AlertSink | None = None,
              keep_frames: bool = False, next_steps: Callable[[Alert], tuple[str, ...]] | None = None) -> DriftRun:
    """Run drift detection for one current window (see the module docstring). `sink`: where alerts go (the
    outbox of `flywheel.warehouse.alerts`; None: do not enqueue, only record). `next_steps`: what the caller's
    policies and automations will do about an alert, in words, put in the alert (`Alert.next_steps`) before it
    is enqueued; drift itself knows no policies."""
    t0 = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    if current is None or isinstance(current, str):
        current = Window.parse(current or ds.window, now)
    if reference is None or isinstance(reference, str):
        reference = parse_reference(reference or ds.reference, current)
    horizon = FeedbackHorizon.for_run(current, ds, now)
    timings: dict[str, float] = {}
    con = connect(settings, ds)
    try:
        lake = settings.lake_location if ds.cache else None
        ref = (load_dataset(con, reference, ds) if isinstance(reference, Dataset)
               else load_window(con, reference, ds, lake, horizon=horizon))
        timings["load_reference_s"] = time.perf_counter() - t0
        cur = load_window(con, current, ds, lake, horizon=horizon)
        timings["load_current_s"] = time.perf_counter() - t0 - timings["load_reference_s"]
        t1 = time.perf_counter()
        if isinstance(reference, Dataset):
            by = _dataset_levels(ref, ds, by)
        effects = compute_effects(ref, cur, ds, by)
        timings["effects_s"] = time.perf_counter() - t1
        run_id = f"{current.start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        past = history(settings, current, ds, effects)
        # An alert from one window alone must stand out from every check of the run (Bonferroni), or a stationary
        # stream's chance extremes (p ~ 1e-4 among ~60 checks per run, seen on the real data) would page people.
        large_alpha = ds.alpha / max(len(effects), 1)
        decided = [decide(e, current, ds, past, large_alpha) for e in effects]
        alerts = with_shifts(build_alerts(decided, current), ref, cur, ds.shift_threshold)
        t2 = time.perf_counter()
        report_paths = (write_reports(ref, cur, decided, settings, ds, run_id, current, reference.label,
                                      first=[(a.level, a.segment) for a in alerts])
                        if reports and ds.reports != "none" else {})
        timings["reports_s"] = time.perf_counter() - t2
    finally:
        con.close()
    alerts = [a.with_report(report_link(report_paths.get(a.segment, ""), ds)) for a in alerts]
    if next_steps is not None:
        alerts = [a.with_next_steps(next_steps(a)) for a in alerts]
    run = DriftRun(run_id, current, reference.label, effects, alerts, report_paths, ref.num_rows, cur.num_rows,
                   timings, horizon.length, (ref, cur) if keep_frames else None)
    # Alerts first, the run's record last: a run killed in between leaves its alerts queued (enqueueing is
    # idempotent by dedup key, so a re-run adds none) and no record, and is run again; in the other order it left a
    # recorded run whose alerts were never queued, which nothing would notice.
    if sink is not None:
        for a in alerts:
            sink.enqueue(a)
    store(settings, run.run_id, run.window, run.reference, decided, report_paths)
    timings["total_s"] = time.perf_counter() - t0
    log.info("drift run %s over %s: %d effects, %d drifted, %d alerts (feedback within %s of each inference)",
             run_id, current.label, len(effects), len(run.drifted), len(alerts), horizon.length)
    return run

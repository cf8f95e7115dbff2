"""Evidently HTML reports of a drift run: the human-facing view of the segments that drifted, on a bounded random
sample per side (the decisions use every row and our own statistics)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from flywheel.config import Settings
from flywheel.storage import LakeLocation
from flywheel.warehouse.drift.decisions import Decision
from flywheel.warehouse.drift.effects import segment_levels
from flywheel.warehouse.drift.features import CATEGORICAL, FEATURES
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.windows import Window

log = logging.getLogger("flywheel.drift")

REPORT_COLUMNS = 8
"""Features shown in an Evidently report: the segment's drifted ones, most drifted first."""


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._=-]+", "_", text)[:80]
    return f"{s}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def write_reports(ref: pa.Table, cur: pa.Table, decided: Sequence[Decision], settings: Settings,
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
    where = settings.lake_location
    if where.remote and not ds.reports_dir:  # beside the lake on the store, where every host can read them
        out = {segment: _upload(Path(path), where, run_id) for segment, path in out.items()}
    return out


def _upload(path: Path, where: LakeLocation, run_id: str) -> str:
    """`path` copied to `<lake>/drift_reports/<run_id>/` on the store; its URI there (its local path if that
    failed: a report is for people, and the run must not fail with it)."""
    fs, base = where.filesystem()
    try:
        with open(path, "rb") as src, fs.open_output_stream(f"{base}/drift_reports/{run_id}/{path.name}") as dst:
            dst.write(src.read())
    except OSError:
        log.exception("uploading the drift report %s failed; the run links its local copy", path)
        return str(path)
    return where.join("drift_reports", run_id, path.name)


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


def report_link(path: str, ds: DriftSettings) -> str:
    """What an alert links to: the report under `report_base_url` when set, else its file path."""
    if path and ds.report_base_url:
        return ds.report_base_url.rstrip("/") + "/" + "/".join(quote(part) for part in Path(path).parts[-2:])
    return path

"""Deciding which drifted checks alert, from this run's effects and the windows before it in `drift_runs`, and
building the typed alerts (`flywheel.schemas.alerts.Alert`) the run hands to its sink."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence


from flywheel.config import Settings
from flywheel.warehouse import tables
from flywheel.schemas.alerts import Alert, AlertItem
from flywheel.warehouse.drift.effects import Effect
from flywheel.warehouse.drift.features import drift_kind
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.storage import RUNS_TABLE
from flywheel.warehouse.drift.windows import Window

LOCAL_FACTOR = 1.5
"""A sub-segment alerts on features its parent already alerts on only with an effect this many times larger."""

Decision = tuple[Effect, bool, str]
"""(effect, whether it alerts, why)."""
History = dict[tuple[str, str, str, datetime, datetime], bool]
"""(level, segment, feature, window_start, window_end) -> drifted, from earlier runs."""


def history(settings: Settings, current: Window, ds: DriftSettings, effects: Sequence[Effect]) -> History:
    """(level, segment, feature, window_end) -> drifted, for the windows right before `current`."""
    if ds.sustain <= 1 or not effects or not tables.files(settings.lake_location, RUNS_TABLE):
        return {}
    since = current.start - current.length * (ds.sustain - 1)
    t = tables.query(settings.lake_location, RUNS_TABLE,
                     "SELECT level, segment, feature, window_start, window_end, bool_or(drifted) AS d FROM t "
                     "WHERE window_end <= $s AND window_start >= $since GROUP BY ALL",
                     {"s": current.start, "since": since})
    return {(r["level"], r["segment"], r["feature"], r["window_start"], r["window_end"]): r["d"]
            for r in t.to_pylist()}


def decide(e: Effect, current: Window, ds: DriftSettings, history: History,
           large_alpha: float | None = None) -> Decision:
    """(effect, alert?, reason): a drifted effect alerts when it is large beyond doubt (`large_factor` times its
    threshold, p-value below `large_alpha`) or drifted in the `sustain` windows up to this one."""
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


def build_alerts(decided: Sequence[Decision], current: Window) -> list[Alert]:
    """One typed alert per (segment, drift kind) with alerting features, most moved feature first; a sub-segment
    that only repeats its parent's alert is left out."""
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

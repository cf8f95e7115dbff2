"""Helpers of the drift false-alarm tests (two modules, so that the longest of them, over more seeds, runs on
its own `--dist loadfile` worker)."""

from __future__ import annotations

from datetime import timedelta

from scipy import stats

from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.windows import Window

H = timedelta(hours=1)


def _window(i: int, n: int = 1) -> Window:
    return Window(S.T0 + i * H, S.T0 + (i + n) * H)


FALSE_ALARM_RISK = 1e-3
"""How often the stationary tests may fail by chance when the statistics hold."""


def stationary_runs(settings: Settings, seed: int) -> tuple[int, set[tuple[object, ...]], list[object]]:
    """27 hourly runs over a stationary stream, each against the 3 h before it: (distinct checks, the distinct
    drifted checks, alerts). The levels app / app+model / app+model+prompt_version hold the same rows here, so a
    check is counted once per (window, feature, data), not once per level."""
    S.land(settings, S.stationary(n_windows=30, seed=seed))
    ds = DriftSettings(reports="none")
    checks: set[tuple[object, ...]] = set()
    drifted: set[tuple[object, ...]] = set()
    alerts: list[object] = []
    for w in range(3, 30):
        run = run_drift(settings, ds, current=_window(w), reference="3h")
        keys = {e: (w, e.feature, e.n_reference, e.n_current, round(e.score, 9)) for e in run.effects}
        checks |= set(keys.values())
        drifted |= {keys[e] for e in run.drifted}
        alerts += run.alerts
    return len(checks), drifted, alerts


def false_alarm_bound(n_checks: int, alpha: float) -> int:
    """The most drifted checks a stationary stream may show: a check drifts only with p < alpha, so with no change
    each is a false alarm with probability at most alpha, and their number is at most Binomial(n_checks, alpha);
    this is its (1 - FALSE_ALARM_RISK) quantile."""
    return int(stats.binom.isf(FALSE_ALARM_RISK, n_checks, alpha))

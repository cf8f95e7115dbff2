"""A stationary stream raises no drift alert, and its drifted checks stay within the binomial bound."""

from __future__ import annotations

from flywheel.config import Settings
from flywheel.warehouse.drift.settings import DriftSettings

from .conftest import false_alarm_bound, stationary_runs


def test_stationary_30_windows_raise_no_alert(settings: Settings) -> None:
    """No alert at all, and drifted checks within the binomial bound of alpha x checks (`false_alarm_bound`;
    seed 0: about 570 distinct checks, bound 4). Checks of overlapping windows are correlated, which widens the
    spread a little beyond the binomial's; the effect-size threshold every drifted check must also pass keeps the
    real rate well below alpha (measured over seeds 0-6: 4 drifted of 3,969 checks)."""
    n, drifted, alerts = stationary_runs(settings, seed=0)
    assert n > 27 * 15  # the features really were compared, in every window
    assert alerts == []
    assert len(drifted) <= false_alarm_bound(n, DriftSettings().alpha), sorted(drifted)

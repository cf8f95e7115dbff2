"""Reading a window: feedback counts within the run's horizon after each inference, for mature inferences only."""

from __future__ import annotations

from datetime import timedelta

from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.warehouse.drift.loading import FeedbackHorizon, connect, load_window
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.windows import Window

H = timedelta(hours=1)


def test_feedback_counts_within_the_horizon_and_young_inferences_are_left_out(settings: Settings) -> None:
    ev = S.Events()
    for i in range(4):  # at T0 + 0h, 1h, 2h, 3h; each corrected 30 min and thumbed up 5 h after it
        t = S.T0 + i * H
        ev.add_inference(inference_id=f"i{i}", timestamp=t, app="a", model="m", input="hi", output="hello")
        ev.add_feedback(feedback_id=f"c{i}", inference_id=f"i{i}", timestamp=t + 0.5 * H, kind="correction",
                        correction="hello!")
        ev.add_feedback(feedback_id=f"t{i}", inference_id=f"i{i}", timestamp=t + 5 * H, kind="thumbs", value=1.0)
    S.land(settings, ev)
    ds = DriftSettings(cache=False)
    con = connect(settings, ds)
    try:
        # now = T0 + 3.5h with a 2 h horizon: i0, i1 are old enough; i2, i3 have not had the whole horizon yet
        t = load_window(con, Window(S.T0, S.T0 + 4 * H), ds, horizon=FeedbackHorizon(2 * H, S.T0 + 3.5 * H))
    finally:
        con.close()
    rows = sorted(zip(t["inference_id"].to_pylist(), t["correction_rate"].to_pylist(),
                      t["thumbs_up_rate"].to_pylist()))
    # the thumbs came 5 h after: outside the horizon, so not counted even though they are in the lake
    assert rows == [("i0", 1.0, None), ("i1", 1.0, None), ("i2", None, None), ("i3", None, None)]


def test_the_run_horizon_is_the_maturity_or_the_current_window_age() -> None:
    ds = DriftSettings(feedback_maturity="24h")
    cur = Window(S.T0, S.T0 + 24 * H)
    assert FeedbackHorizon.for_run(cur, ds, S.T0 + 30 * H).length == 6 * H
    assert FeedbackHorizon.for_run(cur, ds, S.T0 + 72 * H).length == 24 * H
    assert FeedbackHorizon.for_run(cur, ds, S.T0 + 12 * H).length == timedelta(0)


def test_a_malformed_maturity_names_the_setting() -> None:
    import pytest

    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="FLYWHEEL_DRIFT_FEEDBACK_MATURITY: '1y'"):
        DriftSettings(feedback_maturity="1y")

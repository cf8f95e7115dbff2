"""The drift job on scenarios built from real data (fixtures in infra/testing/data; see
flywheel.infra.testing.scenarios)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.warehouse.alerts.outbox import Outbox
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.storage import read_runs
from flywheel.warehouse.drift.windows import Window
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.query import connect

H = timedelta(hours=1)


def _window(i: int, n: int = 1) -> Window:
    return Window(S.T0 + i * H, S.T0 + (i + n) * H)


def test_model_version_switch_is_model_drift_on_output_descriptors(settings: Settings) -> None:
    S.land(settings, S.model_change(windows_each=4))
    ds = DriftSettings(reports="none")
    box = Outbox(settings.home / "outbox.sqlite")
    runs = {w: run_drift(settings, ds, current=_window(w), reference=_window(0, 3), sink=box) for w in range(3, 8)}
    assert runs[3].alerts == [] and runs[3].drifted == []  # before the switch: nothing
    seg = "app=assistant,model=oasst-llama-30b"
    after = [e for e in runs[4].drifted if e.segment == seg]
    assert {"output_chars", "output_words", "output_tokens"} <= {e.feature for e in after}
    assert all(e.feature.startswith(("output_", "latency", "cost", "has_", "refusal", "apology")) for e in after)
    # the steady model in the same app does not drift
    assert not [e for e in runs[4].drifted if "model=gpt" in e.segment]
    alert = next(a for a in runs[4].alerts if a.segment == seg)
    assert alert.kind == "model-drift" and alert.items[0].reason.startswith("large")
    # what else changed in the segment: the successor version took all of the window (nothing else moved)
    assert {(c.column, c.value, c.before, c.after) for c in alert.shifts} == {
        ("model_version", "rlhf-1-8k", 0.0, 1.0), ("model_version", "sft-7", 1.0, 0.0)}
    assert all(not a.segment.startswith("app=assistant,model=gpt") for r in runs.values() for a in r.alerts)
    # stored, queryable, and queued once per (segment, kind); later windows are in cooldown
    con = connect(settings)
    n = con.execute(f"SELECT count(*) FROM drift_runs WHERE segment = '{seg}' AND drifted AND "
                    "feature = 'output_chars'").fetchone()[0]
    assert n == 4
    # one pending alert per (segment, kind) at the switch; later windows repeat the same features, which the
    # cooldown suppresses (a feature that starts moving later is news and goes out)
    assert box.counts().get("suppressed", 0) >= 2
    sent = [(r.segment, i.feature) for r in box.rows("pending") for i in r.alert.items]
    assert len(sent) == len(set(sent))


def test_language_shift_is_data_drift_on_inputs(settings: Settings) -> None:
    S.land(settings, S.language_shift(windows_before=4, windows_after=2, share=0.4))
    ds = DriftSettings(reports="none")
    before = run_drift(settings, ds, current=_window(3), reference=_window(0, 3))
    after = run_drift(settings, ds, current=_window(4), reference=_window(0, 3))
    assert not [e for e in before.drifted if e.feature.startswith("input_")]
    moved = {e.feature: e for e in after.drifted if e.level == "app"}
    assert "input_script" in moved and "cjk" in moved["input_script"].after
    data_alert = next(a for a in after.alerts if a.kind == "data-drift")
    assert "input_script" in data_alert.features


def test_satisfaction_drop_is_flagged_by_the_batch_job(settings: Settings) -> None:
    S.land(settings, S.satisfaction_drop(windows_before=4, windows_after=1))
    ds = DriftSettings(reports="none")
    steady = run_drift(settings, ds, current=_window(3), reference=_window(0, 3))
    drop = run_drift(settings, ds, current=_window(4), reference=_window(0, 3))
    assert not [e for e in steady.drifted if e.feature == "thumbs_up_rate"]
    (e,) = [e for e in drop.drifted if e.feature == "thumbs_up_rate" and e.level == "app"]
    assert e.reference_value == pytest.approx(0.8, abs=0.03) and e.current_value == pytest.approx(0.55, abs=0.04)
    assert any("thumbs_up_rate" in a.features for a in drop.alerts)


def test_sustained_shift_alerts_on_the_second_window(settings: Settings) -> None:
    # A moderate shift (above threshold, below 2x threshold) alerts only when it persists.
    S.land(settings, S.satisfaction_drop(windows_before=3, windows_after=2, after=0.36))
    ds = DriftSettings(reports="none", sustain=2, large_factor=100)
    ref = _window(0, 3)
    first = run_drift(settings, ds, current=_window(3), reference=ref)
    second = run_drift(settings, ds, current=_window(4), reference=ref)
    assert any(e.feature == "thumbs_up_rate" for e in first.drifted) and first.alerts == []
    (a,) = [a for a in second.alerts if a.segment == "app=assistant"]
    assert a.items[0].reason.startswith("sustained")


D = timedelta(days=1)


@pytest.mark.parametrize("lag", [timedelta(hours=1), timedelta(hours=30)])
def test_late_corrections_raise_no_model_drift(settings: Settings, lag: timedelta) -> None:
    """A steady 20% correction rate whose expert corrections mostly arrive 6-72 h late, checked `lag` after the
    current day ends: the week before has had days more to collect them, so counting "no correction yet" as 0
    would see the rate fall. Both windows must be judged on the same horizon after each inference."""
    now = S.T0 + 8 * D + lag
    S.land(settings, S.late_corrections(days_before=7, now=now))
    run = run_drift(settings, DriftSettings(reports="none"), current=Window(S.T0 + 7 * D, S.T0 + 8 * D),
                    reference="7d", now=now)
    assert run.n_current > 500 and run.n_reference > 4000
    assert any(e.feature == "correction_rate" for e in run.effects)  # it was compared, not left out
    assert not [e for e in run.drifted if e.feature == "correction_rate"], \
        [(e.segment, e.reference_value, e.current_value, e.score) for e in run.drifted]
    assert run.alerts == []


def test_a_real_rise_in_corrections_still_alerts(settings: Settings) -> None:
    now = S.T0 + 8 * D + timedelta(hours=1)
    S.land(settings, S.late_corrections(days_before=7, rate_after=0.6, now=now))
    run = run_drift(settings, DriftSettings(reports="none"), current=Window(S.T0 + 7 * D, S.T0 + 8 * D),
                    reference="7d", now=now)
    (e,) = [e for e in run.drifted if e.feature == "correction_rate" and e.level == "app"]
    assert e.current_value > e.reference_value
    assert any("correction_rate" in a.features for a in run.alerts)


@pytest.mark.slow
def test_evidently_reports_are_written_and_linked(settings: Settings) -> None:
    S.land(settings, S.model_change(windows_each=2))
    ds = DriftSettings(report_sample=300, max_reports=2)
    run = run_drift(settings, ds, current=_window(2), reference=_window(0, 2))
    path = run.reports["app=assistant,model=oasst-llama-30b"]
    html = Path(path).read_text()
    assert "output_chars" in html and Path(path).stat().st_size > 100_000
    rows = read_runs(settings, "run_id = $run AND report_path IS NOT NULL", {"run": run.run_id})
    assert rows.num_rows > 0 and set(rows["report_path"].to_pylist()) == set(run.reports.values())
    assert run.alerts and all(a.report == run.reports[a.segment] for a in run.alerts)


def test_descriptor_cache_gives_the_same_answer(settings: Settings) -> None:
    S.land(settings, S.model_change(windows_each=2))
    ref, cur = _window(0, 2), _window(2)

    def effects(ds: DriftSettings) -> list[tuple[str, str, float]]:
        run = run_drift(settings, ds, current=cur, reference=ref)
        return sorted((e.segment, e.feature, round(e.score, 9)) for e in run.effects)

    cold = effects(DriftSettings(reports="none"))
    con = connect(settings)
    cached = con.execute("SELECT count(*), count(DISTINCT inference_id) FROM descriptors").fetchone()
    n = con.execute("SELECT count(*) FROM inferences WHERE timestamp < $e", {"e": cur.end}).fetchone()[0]
    assert cached[0] == cached[1] == n  # every inference of both windows, once
    assert effects(DriftSettings(reports="none")) == cold  # from the cache
    assert effects(DriftSettings(reports="none", cache=False)) == cold
    con = connect(settings)
    assert con.execute("SELECT count(*) FROM descriptors").fetchone()[0] == n  # nothing described twice


def test_reference_dataset_from_a_parquet_file(settings: Settings, tmp_path: Path) -> None:
    """A fixed reference (e.g. a golden set exported once) instead of a window of the lake."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    english = S.all_answers()[:1500]
    golden = tmp_path / "golden.parquet"
    pq.write_table(pa.table({"app": ["assistant"] * len(english), "model": ["oasst"] * len(english),
                             "prompt_version": ["v1"] * len(english), "input": [p for p, _ in english],
                             "output": [o for _, o in english]}), golden)
    S.land(settings, S.language_shift(windows_before=1, windows_after=1, share=0.4))
    ds = DriftSettings(reports="none")
    run = run_drift(settings, ds, current=_window(1), reference=str(golden))
    assert run.reference == f"dataset:{golden}" and run.n_reference == 1500
    assert any(e.feature == "input_script" and e.level == "app" for e in run.drifted)
    assert not [e for e in run.effects if e.feature == "thumbs_up_rate"]  # the dataset has no feedback


def test_reference_dataset_without_segment_columns_serves_all_traffic(settings: Settings,
                                                                      tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    english = S.all_answers()[:1500]
    golden = tmp_path / "golden.parquet"
    pq.write_table(pa.table({"input": [p for p, _ in english], "output": [o for _, o in english]}), golden)
    S.land(settings, S.language_shift(windows_before=1, windows_after=1, share=0.4))
    run = run_drift(settings, DriftSettings(report_sample=200), current=_window(1), reference=str(golden))
    assert {e.segment for e in run.effects} == {"all"}
    assert list(run.reports) == ["all"] and Path(run.reports["all"]).exists()
    assert any(e.feature == "input_script" for e in run.drifted)

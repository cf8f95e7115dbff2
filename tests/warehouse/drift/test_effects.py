"""Effect sizes against exact references (scipy) and the false-alarm rules on synthetic samples."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from flywheel.warehouse.drift.run import compute_effects
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.effects import compare, segment_levels


def _segs(n_ref: int, n_cur: int):
    ref = pa.table({"app": ["a"] * n_ref})
    cur = pa.table({"app": ["a"] * n_cur})
    return segment_levels(ref, cur, [("app",)])[0]


def test_binned_wasserstein_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    r, c = rng.lognormal(6, 0.6, 50_000), rng.lognormal(6.1, 0.6, 40_000)
    (e,) = compare("x", "wasserstein", 0.1, r, c, _segs(len(r), len(c)), 0.001, 100)
    exact = stats.wasserstein_distance(r, c) / r.std()
    assert e.score == pytest.approx(exact, rel=0.05)
    assert e.drifted and e.p_value < 1e-10


def test_large_samples_do_not_flag_trivial_shifts() -> None:
    rng = np.random.default_rng(2)
    r, c = rng.normal(100, 10, 1_000_000), rng.normal(100.3, 10, 1_000_000)  # a 0.03-sigma shift
    (e,) = compare("x", "wasserstein", 0.1, r, c, _segs(len(r), len(c)), 0.001, 100)
    assert e.p_value < 1e-10  # a p-value test alone would alarm
    assert e.score < 0.05 and not e.drifted


def test_small_samples_do_not_flag_noise() -> None:
    rng = np.random.default_rng(3)
    flagged = 0
    for _ in range(200):
        r, c = rng.lognormal(6, 1.0, 200), rng.lognormal(6, 1.0, 200)
        (e,) = compare("x", "wasserstein", 0.1, r, c, _segs(200, 200), 0.001, 100)
        flagged += e.drifted
    assert flagged <= 1


def test_proportions_and_categories() -> None:
    rng = np.random.default_rng(4)
    r = (rng.random(2000) < 0.8).astype(float)
    c = (rng.random(2000) < 0.55).astype(float)
    (e,) = compare("thumbs_up_rate", "prop_diff", 0.1, r, c, _segs(2000, 2000), 0.001, 100)
    assert e.score == pytest.approx(0.25, abs=0.04) and e.drifted
    assert e.before.endswith("%") and e.after.endswith("%")
    rc = np.zeros(1000, np.int64) + 1
    cc = np.where(rng.random(1000) < 0.3, 4, 1)
    (e,) = compare("input_script", "js", 0.1, rc, cc, _segs(1000, 1000), 0.001, 100,
                   ["none", "latin", "latin-ext", "cyrillic", "cjk"])
    assert e.drifted and "cjk" in e.after and e.before.startswith("latin 100%")


def test_psi_and_min_samples() -> None:
    rng = np.random.default_rng(5)
    r, c = rng.normal(0, 1, 5000), rng.normal(1, 1, 5000)
    (e,) = compare("x", "psi", 0.2, r, c, _segs(5000, 5000), 0.001, 100)
    assert e.score > 0.5 and e.drifted
    assert compare("x", "psi", 0.2, r[:50], c, _segs(50, 5000), 0.001, 100) == []


def test_segments_are_coded_consistently_across_sides() -> None:
    ref = pa.table({"app": ["a", "b", None, "a"], "model": ["m", "m", "m", "n"]})
    cur = pa.table({"app": ["b", "a"], "model": ["m", "n"]})
    lv1, lv2 = segment_levels(ref, cur, [("app",), ("app", "model")])
    assert [lv1.labels[i] for i in lv1.ref] == ["app=a", "app=b", "app=(none)", "app=a"]
    assert [lv1.labels[i] for i in lv1.cur] == ["app=b", "app=a"]
    assert [lv2.labels[i] for i in lv2.cur] == ["app=b,model=m", "app=a,model=n"]


def test_compute_effects_on_descriptor_tables() -> None:
    rng = np.random.default_rng(6)
    n = 3000

    def side(shift: float) -> pa.Table:
        return pa.table({"app": ["a"] * n, "model": ["m"] * n, "prompt_version": ["v1"] * n,
                         "output_chars": rng.lognormal(6 + shift, 0.5, n)})

    ds = DriftSettings(min_samples=100)
    effects = compute_effects(side(0), side(0.5), ds, features=["output_chars"])
    assert [e.level for e in effects] == ["app", "app,model", "app,model,prompt_version"]
    assert all(e.drifted for e in effects)
    assert DriftSettings(thresholds="output_chars=psi:0.3").method("output_chars") == ("psi", 0.3)

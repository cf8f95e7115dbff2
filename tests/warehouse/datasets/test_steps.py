"""Steps that need a lake of their own: rows landed in a window whose quality run failed are excluded (and the
manifest names the run); the script filter keeps the scripts a recipe allows."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from flywheel.config import Settings
from flywheel.infra.testing.land import land
from flywheel.warehouse.datasets import DatasetSettings, curate, load
from flywheel.warehouse.datasets.recipes import parse_recipe
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.quality.gates import run_quality
from flywheel.warehouse.quality.settings import QualitySettings

from .conftest import T0, Scenario


def test_rows_landed_in_a_failed_quality_window_are_excluded_and_the_run_is_recorded(
        tmp_path: Path, scenario: Scenario) -> None:
    s = Settings(home=tmp_path / "home")
    liked = [i for i in scenario.texts if i.startswith("g-")]
    by_inf = {i: [e for e in scenario.events if e.get("inference_id") == i] for i in liked}
    clean, suspect = liked[:10], liked[10:]
    cyrillic = {"inference_id": "cy-1", "timestamp": T0.isoformat(), "app": "support-bot", "model": "m",
                "input": "Как сбросить пароль в приложении?",
                "output": "Откройте настройки, выберите «Безопасность» и нажмите «Сбросить пароль»."}
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=3)
    land(Lake(s.lake), [e for i in clean for e in by_inf[i]] + [cyrillic, {
        "feedback_id": "cy-fb", "inference_id": "cy-1", "timestamp": T0.isoformat(), "kind": "thumbs", "value": 1}],
         ingested_at=t1)
    empties = [{"inference_id": f"empty-{n}", "timestamp": (t2 - timedelta(minutes=5)).isoformat(),
                "app": "support-bot", "model": "m", "input": "hello?", "output": ""} for n in range(8)]
    land(Lake(s.lake), [e for i in suspect for e in by_inf[i]] + empties, ingested_at=t2, start_offset=1000)
    q = QualitySettings()
    assert run_quality(s, q, since=t1 - timedelta(minutes=30), until=t1 + timedelta(minutes=30), report=False).success
    bad = run_quality(s, q, since=t2 - timedelta(minutes=30), until=t2 + timedelta(minutes=30), report=False)
    assert not bad.success
    ds = DatasetSettings()
    res = curate(s, ds, parse_recipe({"name": "gated", "kind": "sft", "steps": {"script": ["latin"]},
                                      "splits": {"fractions": {"train": 1.0}}}))
    steps = {r.step: r for r in res.steps}
    gate = steps["quality_gate"]
    assert (gate.rows_in, gate.rows_out) == (21, 11)
    assert [c for _, c in gate.reasons] == [10] and bad.run_id in gate.reasons[0][0]
    assert dict(steps["script"].reasons) == {"dominant script not latin": 1}
    kept = {r["inference_ids"][0] for r in load("gated", "train", settings=s, ds=ds).to_pylist()}
    assert kept == set(clean)
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert [r["run_id"] for r in manifest["quality_runs"]] == [bad.run_id]
    assert manifest["quality_runs"][0]["table"] == "inferences"


def test_exact_duplicate_pairs_keep_the_same_one_whatever_order_they_landed_in(tmp_path: Path) -> None:
    # A chosen answer preferred, by two events, over two rejected inferences with the same text: the two pairs tie
    # on time, chosen inference, origin and texts, so the one kept must come from the rest of the order (their
    # lineage), never from the order the events landed in.
    kept = []
    for order in ("forward", "reversed"):
        s = Settings(home=tmp_path / order)
        events: list[dict[str, object]] = []
        prefs = []
        for g in range(12):
            prompt = f"Case {g}: " + " ".join(f"w{g}x{k}" for k in range(8))
            for side, output in (("a", f"accepted answer {g} " * 3), ("b", f"refused answer {g} " * 3),
                                 ("c", f"refused answer {g} " * 3)):
                events.append({"inference_id": f"p{g}-{side}", "timestamp": T0.isoformat(), "app": "support-bot",
                               "model": "m", "input": prompt, "output": output})
            for other in ("b", "c"):
                prefs.append({"feedback_id": f"pref-{g}-{other}", "inference_id": f"p{g}-a",
                              "other_inference_id": f"p{g}-{other}", "timestamp": T0.isoformat(),
                              "kind": "preference", "value": 1, "source": "user"})
        land(Lake(s.lake), events + (prefs if order == "forward" else prefs[::-1]), ingested_at=T0)
        res = curate(s, DatasetSettings(root=str(tmp_path / order / "datasets")), parse_recipe(
            {"name": "ties", "kind": "preference", "steps": {"near_dedupe": None},
             "splits": {"fractions": {"train": 1.0}}}))
        rows = load("ties", "train", settings=s, ds=DatasetSettings(root=str(tmp_path / order / "datasets")))
        kept.append((res.content_hash, sorted(tuple(r["inference_ids"]) for r in rows.to_pylist())))
    assert kept[0][1] == [(f"p{g}-a", f"p{g}-b") for g in sorted(range(12), key=str)]
    assert kept[0] == kept[1]

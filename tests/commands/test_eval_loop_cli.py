"""The loop through the commands a user runs: events landed in the lake are curated into an eval set, two recorded
model versions answer it (the provider double: LAMP's drafts, and the professional edits of them), `flywheel eval
compare` measures them and `flywheel eval gate` blocks the worse; every number is recomputed here from the pulled
dataset and the recorded answers, not from the harness's tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.land import land
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.evaluation.metrics import chrf
from flywheel.warehouse.lake import Lake

RESAMPLES = 400


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_an_eval_set_curated_from_landed_events_compares_two_versions_and_gates_the_worse(tmp_path: Path) -> None:
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    home, recipes = tmp_path / "home", tmp_path / "recipes"
    t0 = datetime.now(UTC) - timedelta(hours=2)
    events: list[dict[str, object]] = []
    for i, e in enumerate(edits):
        ts = t0 + timedelta(seconds=i)
        events.append({"inference_id": f"w-{i}", "timestamp": ts.isoformat(), "app": "writer",
                       "model": "writer-v1", "input": e["prompt"], "output": e["output"]})
        events.append({"feedback_id": f"f-{i}", "inference_id": f"w-{i}", "kind": "correction", "source": "expert",
                       "timestamp": (ts + timedelta(seconds=30)).isoformat(), "correction": e["correction"]})
    land(Lake(Settings(home=home).lake), events)
    recipes.mkdir()
    (recipes / "writing-eval.yaml").write_text("name: writing-eval\nkind: eval\neval: {stratify_by: app}\n")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_RECIPES_DIR": str(recipes), "FLYWHEEL_EVAL_BOOTSTRAP":
           str(RESAMPLES), "FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO": "1000"}  # one double serves both: load only
    runner = CliRunner()
    res = runner.invoke(main, ["curate", "writing-eval"], env=env)
    assert res.exit_code == 0 and "wrote writing-eval@1" in res.output, res.output
    res = runner.invoke(main, ["datasets", "pull", "writing-eval@1", "--format", "jsonl", "--out",
                               str(tmp_path / "pulled")], env=env)
    assert res.exit_code == 0, res.output
    (test_file,) = (tmp_path / "pulled").rglob("test*.jsonl")
    rows = sorted(map(json.loads, test_file.read_text(encoding="utf-8").splitlines()), key=lambda r: r["id"])
    assert len(rows) == len(edits) and all(r["reference"] for r in rows)
    # what each version answers, keyed by the prompt the eval set holds (after curation's PII rewriting)
    by_iid = {f"w-{i}": e for i, e in enumerate(edits)}
    answers = {"writer-v1": {r["id"]: by_iid[r["inference_ids"][0]]["output"] for r in rows},
               "writer-v2": {r["id"]: by_iid[r["inference_ids"][0]]["correction"] for r in rows}}
    records = [{"model": m, "prompt": r["prompt"], "output": answers[m][r["id"]]} for m in answers for r in rows]
    with RecordedProvider.from_records(records) as provider:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  v1: {{base_url: '{provider.url}', model: writer-v1}}\n"
                           f"  v2: {{base_url: '{provider.url}', model: writer-v2}}\n")
        env["FLYWHEEL_EVAL_TARGETS_FILE"] = str(targets)
        run = {}
        for name in ("v1", "v2"):
            res = runner.invoke(main, ["eval", "run", "--dataset", "writing-eval", "--target", name, "--format",
                                       "json"], env=env)
            assert res.exit_code == 0, res.output
            out = json.loads(res.output)
            assert out["examples"] == len(rows) and out["failed"] == 0, out
            run[name] = out["run_id"]

    res = runner.invoke(main, ["eval", "compare", run["v2"], run["v1"], "--format", "json"], env=env)
    assert res.exit_code == 0, res.output
    c = json.loads(res.output)
    assert c["matched"] == len(rows)
    deltas = {d["metric"]: d for d in c["deltas"]}
    # recomputed: chrF of each answer against the eval set's reference, and the exact-match rate
    sim = {m: np.array([chrf(_norm(answers[m][r["id"]]), _norm(r["reference"])) for r in rows]) for m in answers}
    exact = {m: np.array([float(_norm(answers[m][r["id"]]) == _norm(r["reference"])) for r in rows])
             for m in answers}
    d = deltas["similarity"]
    assert d["baseline"] == pytest.approx(sim["writer-v2"].mean())
    assert d["candidate"] == pytest.approx(sim["writer-v1"].mean())
    assert d["delta"] == pytest.approx(sim["writer-v1"].mean() - sim["writer-v2"].mean()) and d["delta"] < -0.1
    # the stated method: a paired bootstrap of the matched examples (in id order), seed 0, 95% percentiles
    draws = np.random.default_rng(0).integers(0, len(rows), size=(RESAMPLES, len(rows)))
    boot = sim["writer-v1"][draws].mean(axis=1) - sim["writer-v2"][draws].mean(axis=1)
    assert (d["low"], d["high"]) == pytest.approx((np.quantile(boot, 0.025), np.quantile(boot, 0.975)))
    assert d["high"] < 0 and f"{RESAMPLES} resamples of the {len(rows)} matched examples" in c["method"]
    e = deltas["exact_match_rate"]
    assert (e["baseline"], e["candidate"]) == pytest.approx((exact["writer-v2"].mean(), exact["writer-v1"].mean()))
    assert sorted(c["flipped_exact_match"]) == sorted(
        r["id"] for r, a, b in zip(rows, exact["writer-v2"], exact["writer-v1"], strict=True) if a and not b)

    blocked = runner.invoke(main, ["eval", "gate", run["v1"], "--baseline", run["v2"]], env=env)
    assert blocked.exit_code == 1 and "mean similarity dropped" in blocked.output, blocked.output
    passed = runner.invoke(main, ["eval", "gate", run["v2"], "--baseline", run["v1"]], env=env)
    assert passed.exit_code == 0, passed.output

"""Promote on evidence, refuse without it, roll back, and keep every change in the history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from flywheel.warehouse.releases import ReleaseError, champion, history, promote, rollback

SETTINGS = EvalSettings(concurrency=8, save_every=10, bootstrap=300)


def _runs(lake: Path) -> tuple[str, str]:
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    examples = [Example(f"e{i}", (("user", r["prompt"]),), reference=r["correction"]) for i, r in enumerate(edits)]
    records = ([{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
               + [{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]} for r in edits])
    with RecordedProvider.from_records(records) as p:
        good = run_eval(lake, "edits@1", examples, Target("v2", p.url, "writer-v2"), Secret(""), SETTINGS)
        bad = run_eval(lake, "edits@1", examples, Target("v1", p.url, "writer-v1"), Secret(""), SETTINGS)
    return good.run_id, bad.run_id


def test_promote_refuse_force_and_roll_back(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    good, bad = _runs(lake)
    assert champion(lake, "writer") is None
    first = promote(lake, "writer", "writer-v2", "2", good, SETTINGS, seen=True)
    assert (first.sequence, first.action, champion(lake, "writer")) == (1, "promote", first)

    with pytest.raises(ReleaseError, match="does not pass the gate against the champion's run") as err:
        promote(lake, "writer", "writer-v1", "1", bad, SETTINGS, seen=True)
    assert err.value.app == "writer" and "mean similarity dropped" in str(err.value)
    with pytest.raises(ReleaseError, match="needs a reason"):
        promote(lake, "writer", "writer-v1", "1", bad, SETTINGS, force=True, seen=True)
    with pytest.raises(ReleaseError, match="never served by"):
        promote(lake, "writer", "writer-v3", "3", good, SETTINGS, seen=False)
    with pytest.raises(ReleaseError, match="does not exist or has not finished"):
        promote(lake, "writer", "writer-v2", "2", "no-such-run", SETTINGS, seen=True)
    assert len(history(lake, "writer")) == 1  # nothing refused was recorded

    forced = promote(lake, "writer", "writer-v1", "1", bad, SETTINGS, force=True, reason="customer asked", seen=True)
    assert forced.forced and json.loads(forced.gate)["passed"] is False and champion(lake, "writer") == forced
    back = rollback(lake, "writer")
    assert (back.action, back.model, back.eval_run, back.sequence) == ("rollback", "writer-v2", good, 3)
    again = rollback(lake, "writer")  # a rollback can be rolled back
    assert (again.model, again.sequence) == ("writer-v1", 4)
    assert [r.action for r in history(lake, "writer")] == ["promote", "promote", "rollback", "rollback"]
    with pytest.raises(ReleaseError, match="nothing to roll back to"):
        rollback(lake, "other-app")

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


def test_promote_is_refused_on_the_evidence_of_a_run_of_something_else(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    good, bad = _runs(lake)  # runs of writer-v2 and writer-v1, their targets naming no version
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    examples = [Example(f"e{i}", (("user", r["prompt"]),), reference=r["correction"]) for i, r in enumerate(edits)]
    with RecordedProvider.from_records([{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]}
                                        for r in edits]) as p:
        pinned = run_eval(lake, "edits@1", examples,
                          Target("v2-pinned", p.url, "writer-v2", model_version="2", prompt_version="p3"), Secret(""),
                          SETTINGS).run_id

    # Model Y's run is no evidence for model X, and --force (which accepts a failed gate) does not change that.
    for force, reason in ((False, ""), (True, "trust me")):
        with pytest.raises(ReleaseError, match=f"evaluation run {good} evaluated model 'writer-v2' "
                                               r"\(promoting 'writer-v1'\)") as err:
            promote(lake, "writer", "writer-v1", "1", good, SETTINGS, force=force, reason=reason, seen=True)
        assert (err.value.app, err.value.eval_run) == ("writer", good)
        assert "--force does not override this" in str(err.value) and "--model writer-v2" in str(err.value)
    # Where the run's target pinned a version, the promoted one must be that version, named.
    with pytest.raises(ReleaseError, match=r"model version '2' \(promoting '3'\)") as err:
        promote(lake, "writer", "writer-v2", "3", pinned, SETTINGS, prompt_version="p3", seen=True)
    assert "--model writer-v2 --model-version 2 --prompt-version p3" in str(err.value)
    with pytest.raises(ReleaseError, match=r"model version '2' \(promoting none\), prompt version 'p3' "
                                           r"\(promoting 'p4'\)"):
        promote(lake, "writer", "writer-v2", None, pinned, SETTINGS, prompt_version="p4", seen=True)
    assert history(lake, "writer") == []  # nothing refused was recorded

    # What the run evaluated is accepted; a run that pinned no version is evidence for any version of its model.
    assert promote(lake, "writer", "writer-v2", "2", pinned, SETTINGS, prompt_version="p3", seen=True).sequence == 1
    assert promote(lake, "writer", "writer-v1", "7", bad, SETTINGS, force=True, reason="gate waived",
                   seen=True).model_version == "7"
    # An endpoint serving each version under the version's name (as the demo's does): its run is evidence for that
    # version of the app's model, and for no other version.
    assert promote(lake, "named", "writer", "writer-v2", good, SETTINGS, seen=True).model_version == "writer-v2"
    with pytest.raises(ReleaseError, match=r"evaluated model 'writer-v2' \(promoting 'writer'\)"):
        promote(lake, "named", "writer", "writer-v1", good, SETTINGS, seen=True)

"""The `curate` Prefect flow runs for real (ephemeral Prefect, offline) over the demo's events: every bundled
recipe, eval first, each new version handed to the trigger policies; a second run converges (writes nothing,
starts nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.testing.land import land
from flywheel.warehouse.lake import Lake

DEMO = Path(__file__).resolve().parents[2] / "infra" / "demo" / "events.jsonl"


# Every recipe through Prefect (~30 s quiet); curation stays in `make test` through the datasets CLI and steps tests.
@pytest.mark.reliability
@pytest.mark.slow
def test_curate_flow_builds_every_recipe_and_converges(prefect_env: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.curate import curate_flow

    settings = Settings(home=tmp_path / "home")
    land(Lake(settings.lake), [json.loads(line) for line in DEMO.read_text().splitlines()])
    monkeypatch.setenv("FLYWHEEL_HOME", str(settings.home))
    marker = tmp_path / "trained.txt"
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  train:\n    when: {dataset: support-sft}\n    target: {kind: shell, command: "
                        f"'echo \"$DATASET_NAME@$DATASET_VERSION\" >> {marker}'}}\n")
    monkeypatch.setenv("FLYWHEEL_JOBS_POLICIES_FILE", str(policies))
    first = curate_flow()
    assert [r["name"] for r in first] == ["regression-eval", "answers-preference", "support-sft"]
    assert all(r["created"] and r["version"] == 1 for r in first)
    again = curate_flow("support-sft")
    assert len(again) == 1 and not again[0]["created"] and again[0]["version"] == 1
    assert marker.read_text() == "support-sft@1\n"  # started by the first run, once

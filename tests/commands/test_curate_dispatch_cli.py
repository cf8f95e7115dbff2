"""A new dataset version starts its policy's job once; a rebuild that changes nothing starts none; the export a
job is handed (what a fine-tune uploads) is a train split's, never an eval set's test split."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.demo import traffic
from flywheel.infra.testing.land import land
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.lake import Lake


def test_a_new_version_starts_its_job_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    land(Lake(Settings(home=home).lake), traffic(600, datetime.now(timezone.utc)))
    marker = tmp_path / "trained.txt"
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  train:\n    when: {dataset: support-sft, min_new_examples: 1}\n"
                        "    target: {kind: shell, command: 'echo \"$DATASET_NAME@$DATASET_VERSION\" >> "
                        f"{marker}'}}\n"
                        "  on-eval-set:\n    when: {dataset: regression-eval}\n"
                        "    target: {kind: shell, command: 'true'}\n")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    runner = CliRunner()
    for _ in range(2):
        res = runner.invoke(main, ["curate", "support-sft"], env=env)
        assert res.exit_code == 0, res.output
    (job,) = JobStore(home / "jobs" / "jobs.sqlite").list()
    assert (job.policy, job.subject, job.status) == ("train", "dataset:support-sft@1", "succeeded")
    assert marker.read_text() == "support-sft@1\n"  # once: the second run changed nothing
    export = Path(json.loads(job.params)["export"])
    assert export.name == "train.jsonl" and export.is_file()
    res = runner.invoke(main, ["curate", "regression-eval"], env=env)
    assert res.exit_code == 0, res.output
    eval_job = JobStore(home / "jobs" / "jobs.sqlite").list()[0]
    assert eval_job.subject == "dataset:regression-eval@1" and json.loads(eval_job.params)["export"] == ""

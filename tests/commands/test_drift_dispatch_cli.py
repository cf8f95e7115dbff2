"""A drift run hands its alerts to the trigger policies: the matching job starts once, however often the run is
repeated over the same window."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.demo import traffic
from flywheel.infra.testing.land import land
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.lake import Lake


def test_a_drift_alert_starts_its_policy_job_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    land(Lake(Settings(home=home).lake), traffic(1000, datetime.now(timezone.utc)))
    marker = tmp_path / "retrained.txt"
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  retrain-on-drift:\n"
                        "    when: {drift_alert: {segment: app=support-bot, kind: model-drift}}\n"
                        f"    target: {{kind: shell, command: 'echo retrain >> {marker}'}}\n")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies),
           "FLYWHEEL_DRIFT_MIN_SAMPLES": "50", "FLYWHEEL_DRIFT_REPORTS": "none", "FLYWHEEL_SLACK_WEBHOOK_URL": ""}
    runner = CliRunner()
    for _ in range(2):
        res = runner.invoke(main, ["drift", "run", "--current", "1d", "--reference", "7d"], env=env)
        assert res.exit_code == 0, res.output
    (job,) = JobStore(home / "jobs" / "jobs.sqlite").list()
    assert (job.policy, job.trigger, job.status) == ("retrain-on-drift", "drift_alert", "succeeded")
    assert marker.read_text() == "retrain\n"  # once, for two runs over the same window

"""`flywheel jobs` over a real jobs table: list, show, retry a failed job, cancel one."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.warehouse.evaluation.targets import Secret
from flywheel.warehouse.jobs.dispatch import DatasetVersion, dispatch
from flywheel.warehouse.jobs.policies import load_policies
from flywheel.warehouse.jobs.store import JobStore


def test_list_show_retry_cancel(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    policies = tmp_path / "policies.yaml"
    policies.write_text(f"policies:\n  train:\n    when: {{dataset: ds}}\n"
                        f"    target: {{kind: shell, command: 'test -f {flag} && echo trained'}}\n")
    home = tmp_path / "home"
    store = JobStore(home / "jobs" / "jobs.sqlite")
    (job,) = dispatch(load_policies(policies).values(), [DatasetVersion("ds", 1, 5)], store, lambda n: Secret(""))
    assert job.status == "failed"
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list"], env=env)
    assert listed.exit_code == 0 and "failed" in listed.output and "dataset:ds@1" in listed.output
    shown = runner.invoke(main, ["jobs", "show", str(job.id)], env=env)
    assert shown.exit_code == 0 and "exited with code 1" in shown.output
    flag.write_text("")
    retried = runner.invoke(main, ["jobs", "retry", str(job.id)], env=env)
    assert retried.exit_code == 0 and f"job {job.id}: succeeded" in retried.output
    again = runner.invoke(main, ["jobs", "retry", str(job.id)], env=env)
    assert again.exit_code == 1 and "only failed or cancelled jobs can be retried" in again.output
    cancelled = runner.invoke(main, ["jobs", "cancel", "999"], env=env)
    assert cancelled.exit_code == 1 and "no job 999" in cancelled.output

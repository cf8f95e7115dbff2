"""`flywheel jobs` over a real jobs table: list, show, retry a failed job, cancel one (a running shell command is
stopped, and stays cancelled), and policies naming a dataset nobody curates or has a recipe for are refused."""

from __future__ import annotations

import threading
import time
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
    policies.write_text(f"policies:\n  train:\n    when: {{dataset: support-sft}}\n"
                        f"    target: {{kind: shell, command: 'test -f {flag} && echo trained'}}\n")
    home = tmp_path / "home"
    store = JobStore(home / "jobs" / "jobs.sqlite")
    (job,) = dispatch(load_policies(policies).values(), [DatasetVersion("support-sft", 1, 5)], store,
                      lambda n: Secret(""))
    assert job.status == "failed"
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list"], env=env)
    assert listed.exit_code == 0 and "failed" in listed.output and "dataset:support-sft@1" in listed.output
    shown = runner.invoke(main, ["jobs", "show", str(job.id)], env=env)
    assert shown.exit_code == 0 and "exited with code 1" in shown.output
    flag.write_text("")
    retried = runner.invoke(main, ["jobs", "retry", str(job.id)], env=env)
    assert retried.exit_code == 0 and f"job {job.id}: succeeded" in retried.output
    again = runner.invoke(main, ["jobs", "retry", str(job.id)], env=env)
    assert again.exit_code == 1 and "only failed or cancelled jobs can be retried" in again.output
    cancelled = runner.invoke(main, ["jobs", "cancel", "999"], env=env)
    assert cancelled.exit_code == 1 and "no job 999" in cancelled.output


def test_a_policy_naming_a_dataset_without_a_recipe_or_version_is_refused(tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  train:\n    when: {dataset: supprot-sft}\n"
                        "    target: {kind: shell, command: x}\n")
    env = {"FLYWHEEL_HOME": str(tmp_path / "home"), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    res = CliRunner().invoke(main, ["jobs", "dispatch"], env=env)
    assert res.exit_code == 1 and "names 'supprot-sft', which the registry does not have" in res.output, res.output
    assert "support-sft" in res.output  # the bundled recipes' names are listed as known


def test_cancel_stops_a_running_shell_command_and_the_job_stays_cancelled(tmp_path: Path) -> None:
    started, finished = tmp_path / "started", tmp_path / "finished"
    policies = tmp_path / "policies.yaml"
    # the child of the shell, in the same process group, is stopped too
    policies.write_text("policies:\n  train:\n    when: {dataset: support-sft}\n    target: {kind: shell, command: "
                        f"'touch {started}; sleep 30 & wait; touch {finished}'}}\n")
    home = tmp_path / "home"
    store = JobStore(home / "jobs" / "jobs.sqlite")
    ran: list[object] = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: ran.extend(dispatch(
        load_policies(policies).values(), [DatasetVersion("support-sft", 1, 5)], store, lambda n: Secret(""))))
    worker.start()
    deadline = time.monotonic() + 20
    while not (started.exists() and store.list() and store.list()[0].handle) and time.monotonic() < deadline:
        time.sleep(0.05)
    (job,) = store.list()
    assert job.status == "running" and str(job.handle).startswith("pgid:")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    res = CliRunner().invoke(main, ["jobs", "cancel", str(job.id)], env=env)
    assert res.exit_code == 0 and f"job {job.id}: cancelled; stopped its command" in res.output, res.output
    worker.join(20)
    assert not worker.is_alive() and time.monotonic() - t0 < 25  # not the command's 30 s
    assert not finished.exists()
    after = store.get(job.id)
    assert after.status == "cancelled" and after.error is None  # the runner's failure did not overwrite it
    again = CliRunner().invoke(main, ["jobs", "cancel", str(job.id)], env=env)
    assert again.exit_code == 1 and "is cancelled: nothing to cancel" in again.output

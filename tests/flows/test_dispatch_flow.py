"""The `dispatch` flow against a real local Prefect server: it catches up on dataset versions no command dispatched,
never starts what `flywheel curate` or `flywheel jobs dispatch` started (also when both run at once), and the
`drift` flow hands it its alerts, a failed job failing the dispatch run (terminal, not retried) but not the drift
run."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.demo import traffic
from flywheel.infra.testing import scenarios as S
from flywheel.infra.testing.land import land
from flywheel.infra.testing.prefect_server import PrefectServer
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.lake import Lake

pytestmark = pytest.mark.slow  # a real Prefect server (shared with tests/flows/test_deployments.py)


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[Any]:
    """Flows called in this process run against the session's server; `api` reads what it recorded."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home,
                             PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with get_client(sync_client=True) as client:
            yield client


def _flow_runs(api: Any, name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return list(api.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name]))))


def test_the_flow_catches_up_and_never_starts_what_the_cli_started(
        api: Any, prefect_server: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.dispatch import dispatch_flow

    home = tmp_path / "home"
    now = datetime.now(timezone.utc)
    land(Lake(Settings(home=home).lake), traffic(600, now))
    marker = tmp_path / "trained.txt"
    policies = tmp_path / "policies.yaml"
    # the pause widens the window in which two dispatchers could both start the same job
    shell = f"{{kind: shell, command: 'echo \"$DATASET_NAME@$DATASET_VERSION\" >> {marker}; sleep 0.5'}}"
    policies.write_text(f"policies:\n  train:\n    when: {{dataset: support-sft}}\n    target: {shell}\n"
                        f"  rank:\n    when: {{dataset: answers-preference}}\n    target: {shell}\n")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    # v1: `flywheel curate` dispatches it; the flow then starts nothing
    assert runner.invoke(main, ["curate", "support-sft"], env=env).exit_code == 0
    assert dispatch_flow() == {"events": 1, "jobs": []}  # answers-preference has no version yet
    # another dataset, curated with no policy file then: nobody dispatched it yet
    res = runner.invoke(main, ["curate", "answers-preference"],
                        env={**env, "FLYWHEEL_JOBS_POLICIES_FILE": str(tmp_path / "none")})
    assert res.exit_code == 0 and "wrote answers-preference@1" in res.output, res.output
    t0 = datetime.now(timezone.utc)
    # ... then the CLI and the flow dispatch it at the same time: one job
    cli = subprocess.Popen([str(Path(sys.executable).with_name("flywheel")), "jobs", "dispatch"],
                           env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    flow_result: list[dict[str, Any]] = []
    ctx = contextvars.copy_context()  # Prefect's settings (the session server) live in context variables
    t = threading.Thread(target=lambda: flow_result.append(ctx.run(dispatch_flow)))
    t.start()
    out, _ = cli.communicate(timeout=120)
    t.join(120)
    assert cli.returncode == 0, out
    assert marker.read_text() == "support-sft@1\nanswers-preference@1\n"  # each version once
    jobs = JobStore(home / "jobs" / "jobs.sqlite").list()
    assert sorted(j.subject for j in jobs) == ["dataset:answers-preference@1", "dataset:support-sft@1"]
    assert all(j.status == "succeeded" for j in jobs)
    started_by_flow = [j["id"] for j in flow_result[0]["jobs"]]
    started_by_cli = [j.id for j in jobs if f"started job {j.id} " in out]
    assert sorted(started_by_flow + started_by_cli) == [j.id for j in jobs if j.policy == "rank"]
    assert dispatch_flow() == {"events": 2, "jobs": []}  # and again: nothing
    runs = [r for r in _flow_runs(api, "dispatch") if r.created and r.created >= t0 and not r.parent_task_run_id]
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs)  # recorded by the server


def test_the_drift_flow_hands_its_alerts_to_dispatch_and_a_failed_job_fails_only_dispatch(
        api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.drift import drift_flow

    settings = Settings(home=tmp_path / "home")
    S.land(settings, S.satisfaction_drop(windows_before=3, windows_after=1))
    marker = tmp_path / "retrained.txt"
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  retrain:\n    when: {drift_alert: {segment: ''}}\n"
                        f"    target: {{kind: shell, command: 'echo \"$DATASET_NAME\" >> {marker}; exit 3'}}\n")
    for k, v in {"FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies),
                 "FLYWHEEL_DRIFT_REPORTS": "none", "FLYWHEEL_SLACK_WEBHOOK_URL": ""}.items():
        monkeypatch.setenv(k, v)
    H = timedelta(hours=1)
    t0 = datetime.now(timezone.utc)
    window = {"current": f"{(S.T0 + 3 * H).isoformat()}/{(S.T0 + 4 * H).isoformat()}",
              "reference": f"{S.T0.isoformat()}/{(S.T0 + 3 * H).isoformat()}", "deliver_wait_s": 0}
    result = drift_flow(**window)
    n = len(result["alerts"])
    assert n >= 1 and "jobs failed" in result["jobs"]["error"] and "exited with code 3" in result["jobs"]["error"]
    jobs = JobStore(settings.home / "jobs" / "jobs.sqlite").list()
    assert len(jobs) == n and all(j.status == "failed" and j.trigger == "drift_alert" for j in jobs)
    assert len(marker.read_text().splitlines()) == n  # each alert's job ran once: a failed target is not retried
    assert drift_flow(**window)["jobs"] == {"events": n, "jobs": []}  # the same alerts again: nothing starts
    assert len(marker.read_text().splitlines()) == n
    subflows = [r for r in _flow_runs(api, "dispatch") if r.parent_task_run_id and r.created and r.created >= t0]
    assert sorted(r.state.type.value for r in subflows) == ["COMPLETED", "FAILED"]


def test_a_prefect_target_passes_what_the_deployment_takes_and_fails_with_its_run(
        api: Any, tmp_path: Path) -> None:
    """The README's `recurate-on-drift`: a drift alert starts `curate` with the policy's `parameters:` and none of
    the alert's fields (which `curate` does not take: its run would fail binding them); a parameter the flow does
    not take fails the job before a run starts; a waiting job fails when its run ends failed; each event once."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import Failed

    from flywheel.flows.curate import curate_flow
    from flywheel.schemas.alerts import Alert, AlertItem
    from flywheel.warehouse.evaluation.targets import Secret
    from flywheel.warehouse.jobs.dispatch import DatasetVersion, dispatch
    from flywheel.warehouse.jobs.policies import load_policies

    # registered, not served: its runs stay scheduled, which is what this checks (the drift-alert test of
    # test_deployments.py runs a served `curate`)
    dep_id = curate_flow.to_deployment(name="target-probe").apply()
    dep = "curate/target-probe"
    f = tmp_path / "policies.yaml"
    f.write_text(f"policies:\n"
                 f"  recurate-on-drift:\n    when: {{drift_alert: {{segment: app=support-bot}}}}\n"
                 f"    target: {{kind: prefect, deployment: {dep}, parameters: {{recipe: support-sft}}}}\n"
                 f"  recurate-all:\n    when: {{drift_alert: {{segment: app=support-bot}}}}\n"
                 f"    target: {{kind: prefect, deployment: {dep}}}\n"
                 f"  misspelt:\n    when: {{drift_alert: {{segment: app=support-bot}}}}\n"
                 f"    target: {{kind: prefect, deployment: {dep}, parameters: {{recpie: support-sft}}}}\n"
                 f"  waits:\n    when: {{dataset: support-sft}}\n"
                 f"    target: {{kind: prefect, deployment: {dep}, timeout_s: 60, poll_s: 0.2}}\n")
    policies = load_policies(f, known_datasets={"support-sft"})
    store = JobStore(tmp_path / "jobs.sqlite")
    alert = Alert("model-drift", "app=support-bot,model=m", "w1", (AlertItem("output_chars"),))
    jobs = {j.policy: j for j in dispatch(policies.values(), [alert], store, lambda n: Secret(""))}
    assert {p: j.status for p, j in jobs.items()} == {"recurate-on-drift": "succeeded", "recurate-all": "succeeded",
                                                      "misspelt": "failed"}, jobs
    assert "takes no parameter 'recpie' (its parameters: recipe)" in (jobs["misspelt"].error or "")
    runs = {str(r.id): r for r in api.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))}
    assert len(runs) == 2
    for policy, want in (("recurate-on-drift", {"recipe": "support-sft"}), ("recurate-all", {})):
        run_id = str(jobs[policy].result).removeprefix("flow run ")
        assert runs[run_id].parameters == want and jobs[policy].handle == f"prefect:{run_id}"
    # what `flywheel jobs cancel` does with a Prefect job's handle
    from flywheel.warehouse.jobs.targets import stop

    stopped = str(jobs["recurate-all"].handle)
    assert stop(stopped) == f"asked Prefect to cancel flow run {stopped.removeprefix('prefect:')}"
    assert api.read_flow_run(stopped.removeprefix("prefect:")).state.type.value in ("CANCELLING", "CANCELLED")

    # the waiting job: its run is failed (no worker here: the server is told, as a worker would tell it)
    box: list[Any] = []
    ctx = contextvars.copy_context()
    v1 = DatasetVersion("support-sft", 1, new_examples=10, path="/p", manifest="/p/manifest.json")
    t = threading.Thread(target=lambda: box.extend(ctx.run(
        dispatch, policies.values(), [v1, alert], store, lambda n: Secret(""))))
    t.start()
    deadline = datetime.now(timezone.utc) + timedelta(seconds=30)
    while not [j for j in store.list() if j.policy == "waits" and j.handle] and datetime.now(timezone.utc) < deadline:
        threading.Event().wait(0.1)
    (waiting,) = [j for j in store.list() if j.policy == "waits"]
    assert waiting.status == "running" and waiting.handle
    run_id = waiting.handle.removeprefix("prefect:")
    assert api.read_flow_run(run_id).parameters == {}  # curate takes none of the version's fields
    api.set_flow_run_state(run_id, Failed(message="the recipe failed"), force=True)
    t.join(30)
    assert [j.policy for j in box] == ["waits"]  # the alert's jobs are not started again
    failed = store.get(waiting.id)
    assert failed.status == "failed" and "ended Failed: the recipe failed" in (failed.error or ""), failed
    assert dispatch(policies.values(), [v1, alert], store, lambda n: Secret("")) == []
    assert len(api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))) == 3

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
    # another dataset, curated with no policy file (as a `curate` flow run leaves it): nobody dispatched it yet
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

"""The deployments: one declarative list, served by `flywheel serve` against a real local Prefect server, the same
in infra/prefect.yaml, retrying only what is retryable, and a drift alert turning into a curation run."""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.config import Settings
from flywheel.flows.deployments import DEPLOYMENTS, DRIFT_ALERT_EVENT, SEGMENT_RESOURCE, drift_alert_trigger
from flywheel.flows.retry import retry_if_retryable
from flywheel.flows.settings import ServeSettings
from flywheel.infra.testing.land import land
from flywheel.infra.testing.prefect_server import PrefectServer, stop_group
from flywheel.warehouse.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "infra" / "prefect.yaml"
CURATE_IMPORTS = importlib.util.find_spec("flywheel.flows.curate") is not None


def _yaml_deployments() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    return {d["name"]: d for d in doc["deployments"]}


def test_prefect_yaml_holds_the_same_deployments_entrypoints_and_schedules() -> None:
    from prefect.flows import load_flow_from_entrypoint

    declared = _yaml_deployments()
    assert list(declared) == [d.name for d in DEPLOYMENTS]
    defaults = ServeSettings()
    for d in DEPLOYMENTS:
        y = declared[d.name]
        assert y["entrypoint"] == d.entrypoint, d.name
        crons = [s["cron"] for s in y.get("schedules") or []]
        assert crons == [defaults.schedule(d.schedule)], f"{d.name}: {crons} in prefect.yaml"
        assert y["work_pool"]["name"] == "flywheel", d.name
        assert y.get("concurrency_limit") == 1, d.name
        triggers = y.get("triggers") or []
        if d.on_drift_alert:
            assert [(t["type"], t["expect"], t["match"], t["posture"], t["threshold"]) for t in triggers] == [
                ("event", [DRIFT_ALERT_EVENT], {"prefect.resource.id": f"{SEGMENT_RESOURCE}*"}, "Reactive", 1)]
        else:
            assert triggers == [], d.name
        path = ROOT / d.entrypoint.partition(":")[0]
        if d.optional and not path.exists():
            continue  # a flow still being written: `flywheel serve` skips it the same way
        flow = load_flow_from_entrypoint(str(path) + ":" + d.entrypoint.partition(":")[2])
        assert flow.name == d.name


def test_every_flow_retries_transient_errors_and_fails_terminal_ones_at_once() -> None:
    """Every task of every deployed flow that retries at all retries only `retryable` errors; no flow retries as
    a whole (that would repeat a failed gate or a bad setting)."""
    from prefect import Flow, Task

    checked = 0
    for d in DEPLOYMENTS:
        flow = d.load()
        if flow is None:
            continue
        assert isinstance(flow, Flow) and not flow.retries, f"{d.name} retries as a whole"
        module = importlib.import_module(d.module)
        tasks = [t for t in vars(module).values() if isinstance(t, Task)]
        assert tasks, d.name
        for t in tasks:
            if t.retries:
                assert t.retry_condition_fn is retry_if_retryable, f"{d.module}.{t.name} retries any error"
                checked += 1
    assert checked >= 3  # maintain_table, run_gates, detect


def _events(n: int, at: datetime, tag: str) -> list[dict[str, Any]]:
    return [{"inference_id": f"{tag}-{k}", "timestamp": (at - timedelta(seconds=30)).isoformat(), "app": "served",
             "model": "m", "input": "q", "output": f"answer {k}", "latency_ms": 10.0, "input_tokens": 1,
             "output_tokens": 1, "cost_usd": 0.0} for k in range(n)]


@dataclass
class Served:
    server: PrefectServer
    settings: Settings
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def served(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`flywheel serve` in a subprocess (its own process group) on a small lake, until the module's tests end."""
    home = tmp_path_factory.mktemp("served") / "home"
    settings = Settings(home=home)
    now = datetime.now(UTC)
    for k in range(3):  # three commits: three small files for maintenance to compact
        land(Lake(settings.lake), _events(5, now, f"e{k}"), ingested_at=now, start_offset=10 * k)
    env = {**os.environ, **prefect_server.env, "FLYWHEEL_HOME": str(home), "FLYWHEEL_DRIFT_REPORTS": "none",
           "FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS": "0", "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
           "FLYWHEEL_SCHEDULE_QUALITY": "0 3 * * 1", "FLYWHEEL_SCHEDULE_DRIFT": "off"}
    log = home.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("flywheel")), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        yield Served(prefect_server, settings, log, proc)
    finally:
        stop_group(proc)


def _wait(what: str, check: Any, timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout_s:g} s; serve log:\n{log.read_text(errors='replace')}")


@pytest.fixture
def api(served: Served) -> Iterator[Any]:
    """The test process's Prefect client settings pointed at the session server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_API_URL: served.server.api_url, PREFECT_HOME: served.server.home,
                             PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with get_client(sync_client=True) as client:
            yield client


def _served_names() -> set[str]:
    return {d.name for d in DEPLOYMENTS if not d.optional or CURATE_IMPORTS}


# A real Prefect server round trip (the module's server costs ~110 s quiet in all): kept out of `make test`, whose
# flows stay checked in-process (the two tests above, the dispatch, quality and maintenance flows).
@pytest.mark.reliability
@pytest.mark.slow
def test_serve_registers_every_deployment_with_its_configured_schedule(served: Served, api: Any) -> None:
    t0 = time.monotonic()
    want = _served_names()

    def registered() -> dict[str, Any]:
        deps = {d.name: d for d in api.read_deployments()}
        return deps if want <= set(deps) else {}

    deps = _wait("the deployments", registered, 120, served.log)
    print(f"registered {sorted(want)} {time.monotonic() - t0:.1f} s after the test started")
    crons = {name: [s.schedule.cron for s in deps[name].schedules] for name in want}
    assert crons["quality"] == ["0 3 * * 1"]  # FLYWHEEL_SCHEDULE_QUALITY
    assert crons["drift"] == []  # FLYWHEEL_SCHEDULE_DRIFT=off: registered, not scheduled
    assert crons["lake-maintenance"] == [ServeSettings().schedule_lake_maintenance]
    assert all(deps[n].global_concurrency_limit.limit == 1 for n in want)  # runs never overlap
    if not CURATE_IMPORTS:
        assert "deployment curate skipped: flywheel.flows.curate:curate_flow does not import yet" in \
            served.log.read_text()


def _task_runs(api: Any, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return list(api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))


@pytest.mark.reliability
@pytest.mark.slow
def test_a_served_deployment_retries_a_busy_table_and_fails_a_missing_one_at_once(served: Served, api: Any) -> None:
    """One `lake-maintenance` run over a table that does not exist (terminal: one attempt) and one that another
    maintenance run holds (`MaintenanceBusy`, retryable: its lock is let go once the task awaits its retry)."""
    from prefect.deployments import run_deployment

    from flywheel.warehouse.maintenance import MaintenanceSettings, stats

    _wait("lake-maintenance", lambda: any(d.name == "lake-maintenance" for d in api.read_deployments()), 120,
          served.log)
    lock_dir = Path(served.settings.lake) / "_locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = open(lock_dir / "inferences.maintenance.lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    t0 = time.monotonic()
    try:
        run = run_deployment("lake-maintenance/lake-maintenance", timeout=0,
                             parameters={"tables": ["no_such_table", "inferences"]})
        _wait("the busy table's retry", lambda: [r for r in _task_runs(api, run.id)
                                                 if r.state_name == "AwaitingRetry"], 60, served.log)
    finally:
        held.close()  # releases the lock
    run = _wait("the flow run's end", lambda: (lambda r: r if r.state.is_final() else None)(
        api.read_flow_run(run.id)), 60, served.log)
    attempts = sorted((r.state_name, r.run_count) for r in _task_runs(api, run.id))
    print(f"lake-maintenance, a missing and a busy table: {time.monotonic() - t0:.1f} s, task attempts {attempts}")
    assert attempts == [("Completed", 2), ("Failed", 1)]  # busy then compacted; missing: no retry
    assert run.state.is_failed() and "maintenance failed for no_such_table" in (run.state.message or "")
    assert stats(served.settings, "inferences", MaintenanceSettings()).files == 1  # was 3


@pytest.mark.reliability
@pytest.mark.slow
def test_a_drift_alert_from_the_served_drift_flow_starts_the_curation_deployment(served: Served, api: Any) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.events.schemas.automations import Automation

    from flywheel.flows.quality import quality_flow
    from flywheel.infra.testing import scenarios as S

    # Until `curate` exists, a probe deployment carries the same trigger; nobody serves it, so the run the
    # automation creates stays scheduled, which is what is checked. Applied twice: still one automation.
    for _ in range(2):
        probe_id = quality_flow.to_deployment(name="drift-alert-probe",
                                              triggers=[drift_alert_trigger("drift-alert-probe")]).apply()
    autos: list[Automation] = api.read_automations_by_name(f"drift-alert-probe on {DRIFT_ALERT_EVENT}")
    assert len(autos) == 1 and autos[0].trigger.expect == {DRIFT_ALERT_EVENT}
    watched = {probe_id}
    if CURATE_IMPORTS:
        curate = next(d for d in api.read_deployments() if d.name == "curate")
        assert len(api.read_automations_by_name(f"curate on {DRIFT_ALERT_EVENT}")) == 1
        watched.add(curate.id)

    S.land(served.settings, S.satisfaction_drop(windows_before=3, windows_after=1), offset0=10_000)
    H = timedelta(hours=1)
    t0 = time.monotonic()
    run = run_deployment("drift/drift", timeout=120, parameters={
        "current": f"{(S.T0 + 3 * H).isoformat()}/{(S.T0 + 4 * H).isoformat()}",
        "reference": f"{S.T0.isoformat()}/{(S.T0 + 3 * H).isoformat()}", "deliver_wait_s": 0})
    assert run.state.is_completed(), (run.state, served.log.read_text())
    result = run.state.result()
    assert result["alerts"] and result["announced"] == len(result["alerts"])
    print(f"drift run: {time.monotonic() - t0:.1f} s, {len(result['alerts'])} alerts announced")

    def triggered() -> list[Any]:
        runs = api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(watched))))
        probes = [r for r in runs if r.deployment_id == probe_id]
        return runs if {r.deployment_id for r in runs} == watched and len(probes) >= len(result["alerts"]) else []

    runs = _wait("the runs the drift alerts trigger", triggered, 60, served.log)
    print(f"drift alert -> {len(runs)} triggered runs {time.monotonic() - t0:.1f} s after the drift run started")
    assert len([r for r in runs if r.deployment_id == probe_id]) == len(result["alerts"])


@pytest.mark.reliability
@pytest.mark.slow
def test_stopping_serve_with_sigterm_pauses_its_deployments(served: Served, api: Any) -> None:
    """Last in this module: it stops the served process."""
    import signal

    want = _served_names()
    # READY: the runner has polled for their runs, so it has started (a SIGTERM before that just exits)
    _wait("the runner's first poll", lambda: want <= {d.name for d in api.read_deployments()
                                                      if d.status and d.status.value == "READY"}, 120, served.log)
    assert not any(d.paused for d in api.read_deployments() if d.name in want)
    served.proc.send_signal(signal.SIGTERM)  # the leader only, as a service manager would
    assert served.proc.wait(60) == 0, served.log.read_text()
    assert all(d.paused for d in api.read_deployments() if d.name in want)


@pytest.mark.reliability
@pytest.mark.slow
def test_prefect_deploy_registers_the_yaml_deployments_on_a_work_pool(prefect_server: PrefectServer) -> None:
    """`prefect deploy` of infra/prefect.yaml, as the README says (after the served tests: it takes their names
    over). Flows still being written are left out by name, as `flywheel serve` skips them."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, **prefect_server.env}
    prefect = str(Path(sys.executable).with_name("prefect"))
    pool = subprocess.run([prefect, "work-pool", "create", "flywheel", "--type", "process", "--overwrite"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    names = [d.name for d in DEPLOYMENTS if (ROOT / d.entrypoint.partition(":")[0]).exists()]
    t0 = time.monotonic()
    deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML),
                             *[a for n in names for a in ("--name", n)]], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    print(f"prefect deploy of {names}: {time.monotonic() - t0:.1f} s")
    declared = _yaml_deployments()
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as client:
        deps = {d.name: d for d in client.read_deployments() if d.name in names}
        assert set(deps) == set(names)
        for name, dep in deps.items():
            assert dep.work_pool_name == "flywheel" and dep.entrypoint == declared[name]["entrypoint"]
            assert [s.schedule.cron for s in dep.schedules] == [s["cron"] for s in declared[name]["schedules"]]
        for name in names:
            autos = client.read_automations_by_name(f"{name} on {DRIFT_ALERT_EVENT}")
            assert len(autos) == (1 if declared[name].get("triggers") else 0), name

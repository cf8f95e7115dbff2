"""Flows scale out on a Prefect work pool (issue 14 item 11): the deployments of infra/prefect.yaml on a process
pool served by two `prefect worker start` processes against a real local server; a curation run and an evaluation
run (the `dispatch` deployment starting an `eval` job on a curated eval set) are taken by different workers, run at
the same time, and both complete with their results in the lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.environment import Environment
from flywheel.infra.demo import traffic
from flywheel.infra.testing.land import land
from flywheel.infra.testing.prefect_server import PrefectServer, stop_group
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.evaluation.runs import runs as eval_runs
from flywheel.warehouse.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "infra" / "prefect.yaml"
POOL = "flywheel"  # the pool infra/prefect.yaml names


def _prefect(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("prefect")), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _state_times(api: Any, run_id: Any) -> dict[str, datetime]:
    """When the run first entered each state type (PENDING: a worker claimed it; RUNNING; COMPLETED ...)."""
    out: dict[str, datetime] = {}
    for st in sorted(api.read_flow_run_states(run_id), key=lambda s: s.timestamp):
        out.setdefault(st.type.value, st.timestamp)
    return out


@pytest.mark.reliability
def test_two_workers_on_a_pool_run_curation_and_evaluation_at_once(prefect_server: PrefectServer,
                                                                   tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path / "home"
    land(Lake(Settings(home=home).lake), traffic(600, datetime.now(timezone.utc)))
    no_policies = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_JOBS_POLICIES_FILE": str(tmp_path / "none.yaml")}
    res = CliRunner().invoke(main, ["curate", "regression-eval"], env=no_policies)
    assert res.exit_code == 0 and "wrote regression-eval@1" in res.output, res.output
    # Two model versions answering the eval set's prompts: one with the references, one with a worse draft.
    from flywheel.commands.evaluate import dataset_examples

    examples, eval_set = dataset_examples(Environment.load(no_policies), "regression-eval", "test")
    prompts = [e.messages[-1][1] for e in examples]
    records = ([{"model": "good", "prompt": p, "output": e.reference or "ok"} for p, e in zip(prompts, examples)]
               + [{"model": "draft", "prompt": p, "output": "I am not sure."} for p in prompts])
    with RecordedProvider.from_records(records) as provider:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  champion: {{base_url: '{provider.url}', model: good}}\n"
                           f"  candidate: {{base_url: '{provider.url}', model: draft}}\n")
        policies = tmp_path / "policies.yaml"
        policies.write_text("policies:\n  re-evaluate:\n    when: {dataset: regression-eval}\n"
                            "    target: {kind: eval, targets: [champion, candidate], split: test}\n")
        env = {**os.environ, **prefect_server.env, "FLYWHEEL_HOME": str(home),
               "FLYWHEEL_EVAL_TARGETS_FILE": str(targets), "FLYWHEEL_JOBS_POLICIES_FILE": str(policies),
               "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
        pool = _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
        assert pool.returncode == 0, pool.stdout + pool.stderr
        t0 = time.monotonic()
        deploy = _prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--name", "curate",
                          "--name", "dispatch", env=env)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        deployed_s = time.monotonic() - t0
        logs = [tmp_path / f"worker-{i}.log" for i in (1, 2)]
        workers = []
        try:
            for i, log in enumerate(logs, 1):
                with open(log, "wb") as out:  # one run at a time each: two runs at once need both workers
                    workers.append(subprocess.Popen(
                        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL,
                         "--name", f"worker-{i}", "--limit", "1"], cwd=ROOT, stdout=out,
                        # at INFO a worker logs each flow run it submits: how the test tells who ran what
                        env={**env, "PREFECT_LOGGING_LEVEL": "INFO"},
                        stderr=subprocess.STDOUT, start_new_session=True))
            with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), \
                    get_client(sync_client=True) as api:
                deadline = time.monotonic() + 120
                while len([w for w in api.read_workers_for_work_pool(POOL) if w.status.value == "ONLINE"]) < 2:
                    assert time.monotonic() < deadline, "\n".join(p.read_text() for p in logs)
                    time.sleep(0.5)
                t1 = time.monotonic()
                curate = run_deployment("curate/curate", parameters={"recipe": "support-sft"}, timeout=0)
                evaluate = run_deployment("dispatch/dispatch", timeout=0)
                runs = {"curate": curate.id, "evaluate": evaluate.id}
                deadline = time.monotonic() + 240
                while not all(api.read_flow_run(i).state.is_final() for i in runs.values()):
                    assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs)
                    time.sleep(0.5)
                took = time.monotonic() - t1
                final = {k: api.read_flow_run(i) for k, i in runs.items()}
                times = {k: _state_times(api, i) for k, i in runs.items()}
        finally:
            for w in workers:
                stop_group(w)
        text = {log.name: log.read_text(errors="replace") for log in logs}
        assert {k: r.state.type for k, r in final.items()} == {"curate": StateType.COMPLETED,
                                                               "evaluate": StateType.COMPLETED}, text
        # Each worker took one of the two runs (a flow run's own log goes to the worker that started it) ...
        flows = {"curate": "curate", "evaluate": "dispatch"}
        taken = {k: [name for name, t in text.items() if f"for flow '{flow}'" in t] for k, flow in flows.items()}
        assert sorted(len(v) for v in taken.values()) == [1, 1] and taken["curate"] != taken["evaluate"], taken
        # ... and they ran at the same time: each was claimed before the other finished.
        c, e = times["curate"], times["evaluate"]
        assert c["PENDING"] < e["COMPLETED"] and e["PENDING"] < c["COMPLETED"], times
        overlap = (min(c["COMPLETED"], e["COMPLETED"]) - max(c["RUNNING"], e["RUNNING"])).total_seconds()

    # Correct results: the curated version is published, and the eval job scored every example on both targets.
    recorded = sorted((r["model"], r["eval_set"], r["examples"], r["summary"] is not None)
                      for r in eval_runs(Settings(home=home).lake).to_pylist())
    assert recorded == [("draft", eval_set, len(examples), True), ("good", eval_set, len(examples), True)], recorded
    listed = CliRunner().invoke(main, ["datasets", "list", "--format", "json"], env=no_policies)
    names = {json.loads(line)["name"] for line in listed.output.splitlines() if line.strip()}
    assert {"regression-eval", "support-sft"} <= names, listed.output
    print(json.dumps({"deploy_s": round(deployed_s, 1), "two_runs_s": round(took, 1),
                      "running_overlap_s": round(overlap, 1), "workers": taken, "eval_examples": len(examples)}))

"""`flywheel serve --list` and the schedule settings: what would be served, from configuration, without Prefect."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.environment import Environment
from flywheel.errors import ConfigError
from flywheel.flows.deployments import DEPLOYMENTS, DRIFT_ALERT_EVENT, Deployment, build
from flywheel.flows.settings import ServeSettings


def test_serve_list_shows_every_deployment_with_its_configured_schedule() -> None:
    res = CliRunner().invoke(main, ["serve", "--list"], env={"FLYWHEEL_SCHEDULE_QUALITY": "*/15 * * * *",
                                                            "FLYWHEEL_SCHEDULE_DRIFT": "off"})
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln and not ln[0].isdigit()}
    assert set(lines) >= {d.name for d in DEPLOYMENTS}
    assert lines["quality"].endswith("*/15 * * * *") and "flows/quality.py:quality_flow" in lines["quality"]
    assert lines["drift"].endswith("not scheduled")
    assert lines["lake-maintenance"].endswith("30 2 * * *")
    assert lines["curate"].endswith("45 0 * * *, and on each drift alert")


def test_a_schedule_that_is_not_a_cron_is_a_config_error_naming_its_variable() -> None:
    with pytest.raises(ConfigError, match="FLYWHEEL_SCHEDULE_QUALITY='every hour' is not a cron") as err:
        Environment.load({"FLYWHEEL_SCHEDULE_QUALITY": "every hour"})
    assert err.value.variable == "FLYWHEEL_SCHEDULE_QUALITY"
    assert Environment.load({"FLYWHEEL_SCHEDULE_CURATE": "OFF"}).serve.schedule("schedule_curate") == ""
    assert Environment.load({"FLYWHEEL_SCHEDULE_CURATE": ""}).serve.schedule_curate == "45 0 * * *"
    res = CliRunner().invoke(main, ["serve", "--list"], env={"FLYWHEEL_SERVE_LIMIT": "0"})
    assert res.exit_code == 1 and "Error: FLYWHEEL_SERVE_LIMIT must be positive" in res.output


def test_serve_without_a_reachable_prefect_api_says_where_and_what_to_do(tmp_path: Path) -> None:
    """A subprocess: Prefect reads PREFECT_API_URL once, when it is imported."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect"),
           "FLYWHEEL_HOME": str(tmp_path / "home")}
    res = subprocess.run([str(Path(sys.executable).with_name("flywheel")), "serve"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert f"Error: the Prefect API at {url} does not answer (ConnectError" in res.stderr
    assert "start `prefect server start` or fix PREFECT_API_URL" in res.stderr


def test_drift_triggers_can_be_turned_off_for_a_jobs_policy_to_start_curation_instead() -> None:
    row = (Deployment("quality", "flywheel.flows.quality:quality_flow", "schedule_quality", on_drift_alert=True),)
    [on] = build(ServeSettings(), row)
    assert [(t.name, t.expect) for t in on.triggers] == [(f"quality on {DRIFT_ALERT_EVENT}", {DRIFT_ALERT_EVENT})]
    [off] = build(Environment.load({"FLYWHEEL_SERVE_DRIFT_TRIGGERS": "off"}).serve, row)
    assert off.triggers == []


def test_a_flow_not_written_yet_is_skipped_a_broken_one_logged_as_an_error_a_required_one_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "broken_flow_module.py").write_text("import flywheel_has_no_such_module\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level("WARNING", logger="flywheel.flows.deployments")
    assert Deployment("later", "flywheel.flows.not_written:later_flow", "schedule_curate", optional=True).load() is None
    assert Deployment("broken", "broken_flow_module:flow", "schedule_curate", optional=True).load() is None
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"deployment later skipped": "WARNING", "deployment broken skipped": "ERROR"}
    assert "does not import yet" in caplog.text and "flywheel_has_no_such_module" in caplog.text
    with pytest.raises(ConfigError, match="deployment later: flywheel.flows.not_written:later_flow does not import"):
        Deployment("later", "flywheel.flows.not_written:later_flow", "schedule_curate").load()

"""The `drift` Prefect flow runs for real (ephemeral Prefect, offline, private PREFECT_HOME) on real data and
delivers its alert to a webhook on 127.0.0.1."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from flywheel.config import Settings
from flywheel.infra import scenarios as S
from flywheel.infra.webhook_testing import RecordingWebhook


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    env = {"PREFECT_HOME": str(tmp_path_factory.mktemp("prefect")), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k != "PREFECT_HOME" or "PREFECT_HOME" not in os.environ})
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_drift_flow_detects_and_delivers(prefect_env: None, shared_data: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.drift import drift_flow

    settings = Settings(home=tmp_path / "home")
    S.land(settings, S.satisfaction_drop(shared_data, windows_before=3, windows_after=1))
    H = timedelta(hours=1)
    current = f"{(S.T0 + 3 * H).isoformat()}/{(S.T0 + 4 * H).isoformat()}"
    reference = f"{S.T0.isoformat()}/{(S.T0 + 3 * H).isoformat()}"
    with RecordingWebhook() as hook:
        hook.script = [(503, {})]  # Slack hiccups once: the flow still succeeds and the alert still arrives
        monkeypatch.setenv("FLYWHEEL_HOME", str(settings.home))
        monkeypatch.setenv("FLYWHEEL_SLACK_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("FLYWHEEL_ALERTS_BACKOFF_S", "0.1")
        monkeypatch.setenv("FLYWHEEL_DRIFT_REPORTS", "none")
        result = drift_flow(current=current, reference=reference, deliver_wait_s=10)
        assert any("thumbs_up_rate" in d for d in result["drifted"])
        assert result["delivery"] == {"delivered": len(result["alerts"]), "pending": 0, "failed": 0}
        assert len(hook.received) == len(result["alerts"]) >= 1
        assert "thumbs_up_rate" in json.dumps(hook.received)

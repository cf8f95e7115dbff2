"""The `drift` Prefect flow runs for real (ephemeral Prefect, offline, private PREFECT_HOME) on real data and
delivers its alert to a webhook on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.infra.testing.webhook import RecordingWebhook


@pytest.mark.slow
def test_drift_flow_detects_and_delivers(prefect_env: None, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.drift import drift_flow

    settings = Settings(home=tmp_path / "home")
    S.land(settings, S.satisfaction_drop(windows_before=3, windows_after=1))
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
        # run outside a deployment, no automation answers its alerts, and the message says so
        assert "Next: nothing runs automatically" in json.dumps(hook.received, ensure_ascii=False)

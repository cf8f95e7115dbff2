"""`flywheel drift run|report` and `flywheel alerts list|send|resend` through the CLI, on real data."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.infra.testing.webhook import RecordingWebhook

H = timedelta(hours=1)


def _win(a: int, b: int) -> str:
    return f"{(S.T0 + a * H).isoformat()}/{(S.T0 + b * H).isoformat()}"


def test_drift_run_report_and_alerts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    S.land(settings, S.model_change(windows_each=3))
    env = {"FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_DRIFT_REPORTS": "none", "FLYWHEEL_SLACK_WEBHOOK_URL": ""}
    runner = CliRunner()
    for w in (2, 3):
        res = runner.invoke(main, ["drift", "run", "--current", _win(w, w + 1), "--reference", _win(0, 2),
                                   "--by", "app,model", "--format", "json"], env=env)
        assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_current"] > 0 and {"segment": "app=assistant,model=oasst-llama-30b", "feature": "output_chars"} \
        .items() <= next(d for d in out["drifted"] if d["feature"] == "output_chars"
                         and d["segment"].endswith("oasst-llama-30b")).items()
    assert out["alerts"] and out["delivered"] == 0  # no webhook configured: queued

    res = runner.invoke(main, ["alerts", "list"], env=env)
    assert res.exit_code == 0 and "pending" in res.output and "model-drift" in res.output

    with RecordingWebhook() as hook:
        env_hook = {**env, "FLYWHEEL_SLACK_WEBHOOK_URL": hook.url}
        res = runner.invoke(main, ["alerts", "send", "--wait", "5"], env=env_hook)
        assert res.exit_code == 0 and res.output.startswith("delivered "), res.output
        assert len(hook.received) == int(res.output.split()[1].rstrip(",")) >= 1
        assert "SECRETTOKEN" not in res.output
        before = len(hook.received)
        res = runner.invoke(main, ["alerts", "resend", "1"], env=env_hook)  # a person asks for it again
        assert res.exit_code == 0 and "queued 1 alerts again" in res.output and "delivered 1," in res.output
        assert len(hook.received) == before + 1

    res = runner.invoke(main, ["alerts", "list", "--format", "json", "--status", "delivered"], env=env)
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows and all(r["status"] == "delivered" for r in rows)

    page = tmp_path / "overview.html"
    res = runner.invoke(main, ["drift", "report", "--output", str(page)], env=env)
    assert res.exit_code == 0 and page.exists()
    html = page.read_text()
    assert "app=assistant,model=oasst-llama-30b" in html and "output_chars" in html and "<svg" in html


def test_bad_window_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["drift", "run", "--current", "yesterday-ish"],
                             env={"FLYWHEEL_HOME": str(tmp_path)})
    assert res.exit_code == 1
    assert "Error: 'yesterday-ish' is not a duration like 30m, 6h, 1d or 2w" in res.output


def test_alerts_send_without_webhook_says_what_to_set(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["alerts", "send"], env={"FLYWHEEL_HOME": str(tmp_path),
                                                             "FLYWHEEL_SLACK_WEBHOOK_URL": ""})
    assert res.exit_code == 1 and "FLYWHEEL_SLACK_WEBHOOK_URL is not set" in res.output


@pytest.mark.slow
@pytest.mark.broker
def test_signals_worker_runs_and_stops_cleanly_on_sigint(kafka_settings: Settings) -> None:
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    s = kafka_settings
    env = {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port),
           "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_SIGNALS_GROUP": f"{s.ingest_group}-signals"}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "signals"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        # librdkafka may print its own lines first (a `BGQUEUE ... Purging 1 unserved events` was once seen), so the
        # banner is looked for among the first lines, and the rest is drained so the worker never blocks on the pipe
        first: list[str] = []
        while len(first) < 20 and not any("live signals on" in line for line in first):
            line = proc.stderr.readline()
            if not line:  # the worker exited
                break
            first.append(line)
        assert any("live signals on" in line for line in first), "".join(first)
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        time.sleep(6)  # joined its group by now
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _texts(payload: dict[str, object]) -> str:
    """Every text of a posted Block Kit message (and its notification text), as a person reads them in Slack."""
    out = [str(payload["text"])]
    for block in payload["blocks"]:  # type: ignore[attr-defined]
        for part in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(part, dict):
                out.append(str(part.get("text", "")))
    return "\n".join(out)


@pytest.mark.slow  # one real Evidently report: about 27 s with its import on this (loaded) machine
def test_a_drift_alert_in_slack_links_its_report_names_what_changed_and_what_runs_next(tmp_path: Path) -> None:
    """The JSON Slack receives: the report as a URL under the base URL (not a path on the worker's disk), the
    categorical shift inside the segment (the model version that replaced the other, in all of the window), and
    what the flywheel does next (the policy whose job the alert starts)."""
    settings = Settings(home=tmp_path / "home")
    S.land(settings, S.model_change(windows_each=2))
    marker = tmp_path / "retrained.txt"
    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  retrain-on-drift:\n"
                        "    when: {drift_alert: {segment: model=oasst, kind: model-drift}}\n"
                        f"    target: {{kind: shell, command: 'echo retrain >> {marker}'}}\n"
                        "  other-app:\n    when: {drift_alert: {segment: model=gpt}}\n"
                        "    target: {kind: shell, command: 'exit 1'}\n")
    with RecordingWebhook() as hook:
        env = {"FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_SLACK_WEBHOOK_URL": hook.url,
               "FLYWHEEL_DRIFT_REPORT_BASE_URL": "https://reports.example.com/drift/",
               "FLYWHEEL_DRIFT_REPORT_SAMPLE": "300", "FLYWHEEL_DRIFT_MAX_REPORTS": "1",
               "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)}
        # one level (model) keeps it to one alert and one Evidently report: the steady gpt model does not move
        res = CliRunner().invoke(main, ["drift", "run", "--current", _win(2, 3), "--reference", _win(0, 2),
                                        "--by", "model"], env=env)
        assert res.exit_code == 0, res.output
        assert hook.wait_for(lambda r: len(r) >= 1, 5)
        (payload,) = hook.received
    msg = _texts(payload)
    assert "model=oasst-llama-30b" in msg
    assert "<https://reports.example.com/drift/" in msg and ".html|Evidently report>" in msg
    assert str(settings.home) not in msg  # no path on the worker's disk
    assert "`model_version` sft-7 → rlhf-1-8k, 100% of the window" in msg
    assert "Next: policy `retrain-on-drift` starts its shell job" in msg and "other-app" not in msg
    assert marker.read_text() == "retrain\n"

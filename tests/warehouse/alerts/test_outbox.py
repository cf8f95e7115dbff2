"""The alert outbox and Slack delivery against a real HTTP server on 127.0.0.1 that fails on purpose."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from flywheel.errors import ConfigError
from flywheel.schemas.alerts import Alert, AlertItem, CategoricalShift
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox, SlackSender, slack_message
from flywheel.infra.testing.webhook import RecordingWebhook


@pytest.fixture
def slack() -> Iterator[RecordingWebhook]:
    with RecordingWebhook() as hook:
        yield hook


def _alert(segment: str, feature: str = "output_chars",
           window: str = "2026-11-01T00:00:00+00:00/2026-11-01T01:00:00+00:00",
           kind: str = "model-drift") -> Alert:
    return Alert(kind, segment, window, (AlertItem(feature, method="wasserstein", score=0.6, threshold=0.1,
                                                   before="997 (mean)", after="1,366 (mean)"),),
                 report="/tmp/reports/r1/app=a.html")


def test_message_names_segment_what_moved_window_and_report() -> None:
    msg = slack_message(_alert("app=assistant,model=oasst"))
    text = json.dumps(msg, ensure_ascii=False)
    assert msg["blocks"][0]["type"] == "header"
    assert "Model drift" in msg["blocks"][0]["text"]["text"]
    for expected in ("app=assistant,model=oasst", "`output_chars`: 997 (mean) → 1,366 (mean)", "wasserstein 0.6",
                     "threshold 0.1", "2026-11-01T00:00:00+00:00/2026-11-01T01:00:00+00:00",
                     "/tmp/reports/r1/app=a.html"):
        assert expected in text


def test_message_names_the_shifts_in_the_segment_and_what_runs_next_and_survives_the_outbox(tmp_path: Path) -> None:
    shifts = (CategoricalShift("model_version", "0125", 0.0, 1.0), CategoricalShift("model_version", "0314", 1.0, 0.0),
              CategoricalShift("provider", "azure", 0.2, 0.6), CategoricalShift("provider", "openai", 0.8, 0.4),
              CategoricalShift("prompt_version", "v4", 0.0, 0.35), CategoricalShift("prompt_version", "v3", 1.0, 0.65))
    alert = Alert(**{**_alert("app=a").__dict__, "shifts": shifts, "next_steps": ("policy `retrain` starts its shell "
                                                                               "job (`python train.py`)",)})
    box = Outbox(tmp_path / "outbox.sqlite")
    rid, _ = box.enqueue(alert)
    (row,) = box.rows()
    assert row.alert == alert  # stored and read back whole
    msg = slack_message(row.alert)
    changed = next(b["text"]["text"] for b in msg["blocks"] if "What changed" in b.get("text", {}).get("text", ""))
    assert changed.splitlines()[1:] == ["• `model_version` 0314 → 0125, 100% of the window (new)",
                                        "• `provider` openai → azure, 60% of the window (was 20%)",
                                        "• `prompt_version` v3 → v4, 35% of the window (new)"]
    assert msg["blocks"][-1]["elements"][1]["text"] == ("Next: policy `retrain` starts its shell job "
                                                        "(`python train.py`)")
    assert "model_version 0314 → 0125, 100% of the window (new)" in msg["text"]
    assert "Next: policy retrain" in msg["text"]
    # an alert stored before these fields existed still loads and renders as before
    old = json.loads(alert.to_json())
    del old["shifts"], old["next_steps"]
    legacy = Alert.from_json(json.dumps(old))
    assert legacy.shifts == () and legacy.next_steps == () and "What changed" not in json.dumps(slack_message(legacy))


def test_enqueue_is_idempotent_and_cooldown_suppresses_repeats(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", cooldown_s=600, clock=lambda: now[0])
    rid, status = box.enqueue(_alert("app=a"))
    assert status == "pending"
    assert box.enqueue(_alert("app=a")) == (rid, "pending")  # same alert again: same row
    now[0] += 60
    # the next window, same segment/feature/kind, inside the cooldown: recorded, not sent
    _, status = box.enqueue(_alert("app=a", window="w2"))
    assert status == "suppressed"
    # another feature or segment is not in cooldown
    assert box.enqueue(_alert("app=a", feature="latency_ms", window="w2"))[1] == "pending"
    assert box.enqueue(_alert("app=b", window="w2"))[1] == "pending"
    now[0] += 600
    assert box.enqueue(_alert("app=a", window="w3"))[1] == "pending"
    assert box.counts() == {"pending": 4, "suppressed": 1}


def test_every_alert_arrives_exactly_once_through_500s_and_429s(tmp_path: Path, slack: RecordingWebhook,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = AlertSettings(slack_webhook_url=slack.url, backoff_s=0.05, max_backoff_s=0.5)
    box = Outbox(tmp_path / "o.sqlite", cooldown_s=0)
    segments = [f"app=a{i}" for i in range(8)]
    for seg in segments:
        box.enqueue(_alert(seg))
    # Slack is down (500, 503), then rate-limits twice with Retry-After, then recovers.
    slack.script = [(500, {}), (503, {}), (500, {}), (429, {"Retry-After": "1"}), (500, {}),
                    (429, {"Retry-After": "0"})]
    sender = SlackSender(box, settings)
    first = sender.deliver()
    assert first.delivered == 0 and first.retried == 1  # nothing lost, nothing sent yet
    assert box.counts() == {"pending": 8}
    rep = sender.drain(timeout_s=20)
    assert rep.failed == 0
    assert box.counts() == {"delivered": 8}
    got = [m["blocks"][1]["fields"][0]["text"].split("\n")[1] for m in slack.received]
    assert sorted(got) == sorted(segments)  # each exactly once
    assert slack.attempts == 8 + 6
    # the webhook URL (a secret) is nowhere in the logs or in the outbox
    assert "SECRETTOKEN" not in caplog.text
    assert b"SECRETTOKEN" not in (tmp_path / "o.sqlite").read_bytes()
    assert "SECRETTOKEN" not in repr(settings)


def test_retry_after_is_honoured(tmp_path: Path, slack: RecordingWebhook) -> None:
    box = Outbox(tmp_path / "o.sqlite", clock=lambda: 5000.0)
    box.enqueue(_alert("app=a"))
    slack.script = [(429, {"Retry-After": "30"})]
    rep = SlackSender(box, AlertSettings(slack_webhook_url=slack.url)).deliver()
    assert rep.retried == 1 and rep.waiting_until == pytest.approx(5030.0)
    assert box.claim() == []  # not due before the Retry-After has passed


def test_a_4xx_parks_the_alert_until_resend(tmp_path: Path, slack: RecordingWebhook) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    rid, _ = box.enqueue(_alert("app=a"))
    slack.script = [(404, {})]
    sender = SlackSender(box, AlertSettings(slack_webhook_url=slack.url))
    assert sender.deliver().failed == 1
    assert box.counts() == {"failed": 1}
    assert box.resend(failed=True) == 1
    assert sender.deliver().delivered == 1
    assert len(slack.received) == 1 and box.rows()[0].id == rid


def test_unreachable_webhook_keeps_alerts_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue(_alert("app=a"))
    settings = AlertSettings(slack_webhook_url="http://127.0.0.1:9/hooks/SECRETTOKEN", timeout_s=1, backoff_s=0.01)
    rep = SlackSender(box, settings).deliver()
    assert rep.retried == 1
    row = box.rows()[0]
    assert row.status == "pending" and row.last_status is None and "SECRETTOKEN" not in (row.last_error or "")


def test_settings_from_env_hide_the_webhook() -> None:
    s = AlertSettings.from_env({"FLYWHEEL_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/X/Y/SECRETTOKEN",
                                "FLYWHEEL_ALERTS_COOLDOWN_S": "120"})
    assert s.cooldown_s == 120 and s.webhook.reveal().endswith("SECRETTOKEN")
    assert "SECRETTOKEN" not in repr(s) and "SECRETTOKEN" not in str(s.webhook)


@pytest.mark.parametrize("url", ["hooks.slack.com/services/T0/B0/SECRETPATH",        # no scheme
                                 "ftp://hooks.slack.com/services/T0/B0/SECRETPATH",  # not http(s)
                                 "https:///services/T0/B0/SECRETPATH",               # no host
                                 "https://hooks.slack.com:badport/services/SECRETPATH"])
def test_a_malformed_webhook_url_is_a_config_error_that_does_not_echo_it(tmp_path: Path, url: str) -> None:
    from click.testing import CliRunner

    from flywheel.cli import main

    env = {"FLYWHEEL_HOME": str(tmp_path / "home"), "FLYWHEEL_SLACK_WEBHOOK_URL": url}
    box = Outbox(tmp_path / "home" / "alerts" / "outbox.sqlite")
    box.enqueue(_alert("app=a"))
    for args in (["alerts", "send"], ["config"]):
        res = CliRunner().invoke(main, args, env=env)
        shown = res.output + (repr(res.exception) if not isinstance(res.exception, SystemExit) else "")
        assert "SECRETPATH" not in shown, (args, shown)
        assert "T0/B0" not in shown and "badport" not in shown, (args, shown)
    res = CliRunner().invoke(main, ["alerts", "send"], env=env)
    assert res.exit_code == 1 and "FLYWHEEL_SLACK_WEBHOOK_URL" in res.output, res.output
    with pytest.raises(ConfigError) as err:
        AlertSettings.from_env({"FLYWHEEL_SLACK_WEBHOOK_URL": url})
    assert err.value.variable == "FLYWHEEL_SLACK_WEBHOOK_URL" and "SECRETPATH" not in str(err.value)


def _send_until_empty(path: Path, url: str, speed: float, t0: float) -> None:
    fast = lambda: t0 + (time.time() - t0) * speed  # noqa: E731
    box = Outbox(path, cooldown_s=0, clock=fast)
    SlackSender(box, AlertSettings(slack_webhook_url=url)).drain(timeout_s=60)


def test_two_senders_against_a_slow_webhook_deliver_every_alert_exactly_once(tmp_path: Path) -> None:
    """Two sender processes drain one outbox while each answer takes 0.25 s. The outbox clock runs 20x fast, so
    one answer lasts 5 outbox-seconds and a batch of 24 lasts 120: far longer than any lease a sender may hold
    without renewing it (the default timeout is 10 s). A lease that is not owned and renewed is stolen mid-batch
    and its alerts are posted twice."""
    path = tmp_path / "o.sqlite"
    box = Outbox(path, cooldown_s=0)
    segments = [f"app=a{i}" for i in range(24)]
    for seg in segments:
        box.enqueue(_alert(seg))
    t0 = time.time()
    ctx = multiprocessing.get_context("fork")
    with RecordingWebhook(delay_s=0.25) as hook:
        senders = [ctx.Process(target=_send_until_empty, args=(path, hook.url, 20.0, t0)) for _ in range(2)]
        for p in senders:
            p.start()
        for p in senders:
            p.join(90)
        assert all(p.exitcode == 0 for p in senders)
        got = Counter(m["blocks"][1]["fields"][0]["text"].split("\n")[1] for m in hook.received)
    assert {seg: n for seg, n in got.items() if n != 1} == {}  # none twice
    assert sorted(got) == sorted(segments)  # none lost
    assert box.counts() == {"delivered": 24}


def test_only_the_lease_owner_can_settle_a_row(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", clock=lambda: now[0])
    rid, _ = box.enqueue(_alert("app=a"))
    assert box.claim_one("A", lease_s=5).id == rid
    assert box.claim_one("B", lease_s=5) is None  # held
    now[0] += 6  # A stalled past its lease: B takes the row over
    assert box.claim_one("B", lease_s=5).id == rid
    assert box.mark_delivered(rid, 200, owner="A") is False
    assert box.retry_later(rid, now[0] + 1, 500, "x", owner="A") is False
    assert box.rows()[0].status == "sending"
    assert box.mark_delivered(rid, 200, owner="B") is True
    assert box.counts() == {"delivered": 1}

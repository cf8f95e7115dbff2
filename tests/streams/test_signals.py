"""Live signals: the detector on window counts, and the faust app on the real broker raising a Slack alert."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from flywheel.config import Settings
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox
from flywheel.infra.testing.traffic import SteadyTraffic, joined
from flywheel.infra.testing.webhook import RecordingWebhook
from flywheel.streams.signals import (DOWNS, ERRORS, HIST, N, THUMBS, SignalDetector, SignalSettings, empty,
                                      is_error, latency_bucket, make_app, p95)
from flywheel.streams.metrics import MetricsServer, SignalMetrics
from flywheel.streams.topics import ensure_topics


def _window(n: int = 0, errors: int = 0, thumbs: int = 0, downs: int = 0, latency: float = 500.0) -> list[int]:
    w = empty()
    w[N], w[ERRORS], w[THUMBS], w[DOWNS] = n, errors, thumbs, downs
    w[HIST + latency_bucket(latency)] += n
    return w


def test_detector_flags_sharp_changes_only() -> None:
    d = SignalDetector(SignalSettings(min_events=50, min_thumbs=30))
    base = [_window(200, 2, 100, 20) for _ in range(5)]
    assert d.evaluate(_window(200, 3, 100, 24), base) == []  # noise
    (s,) = d.evaluate(_window(200, 2, 100, 45), base)
    assert s.signal == "thumbs_down_rate" and s.before == "20.0%" and s.after == "45.0%"
    assert [s.signal for s in d.evaluate(_window(200, 60, 100, 20), base)] == ["error_rate"]
    assert [s.signal for s in d.evaluate(_window(200, 2, 100, 20, latency=5000), base)] == ["latency_p95_ms"]
    assert [s.signal for s in d.evaluate(_window(10, 0, 100, 20), base, current_complete=True)] == ["volume"]
    assert d.evaluate(_window(10, 5, 10, 9), base) == []  # too few events to judge
    assert d.evaluate(_window(200, 2, 100, 45), []) == []  # no baseline yet


@pytest.mark.parametrize("offset_s", [0.0, 30.0, 55.0])
def test_default_settings_alert_within_a_minute_of_the_change(offset_s: float) -> None:
    """Minute windows, judged every 5 s, 5 thumbs/s: thumbs-down 20% -> 45% at `offset_s` into a window.
    A replay of the worker's timeline on window counts (the broker test below runs it for real, faster)."""
    import random

    s = SignalSettings()
    d = SignalDetector(s)
    rng = random.Random(int(offset_s))
    rate, window = 5, s.window_s
    change = 10 * window + offset_s  # after ten steady windows
    events = []  # (time, thumbs down?)
    t = 0.0
    while t < change + 3 * window:
        t += rng.expovariate(rate)
        events.append((t, rng.random() < (0.45 if t >= change else 0.2)))

    def counts(a: float, b: float) -> list[int]:
        w = empty()
        for ts, down in events:
            if a <= ts < b:
                w[N] += 1
                w[THUMBS] += 1
                w[DOWNS] += down
                w[HIST + latency_bucket(400.0)] += 1
        return w

    check, fired = 0.0, None
    while check < change + 3 * window and fired is None:
        check += s.check_interval_s
        start = check - check % window
        base = [counts(start - k * window, start - (k - 1) * window) for k in range(1, s.baseline_windows + 1)]
        if any(x.signal == "thumbs_down_rate" for x in d.evaluate(counts(start, check), base)):
            fired = check
    assert fired is not None and fired >= change  # never before the change (no false alarm in 10 windows)
    assert fired - change < 60, fired - change


def test_helpers() -> None:
    assert is_error({"output": ""}) and is_error({"output": "x", "metadata": '{"error": "timeout"}'})
    assert is_error({"output": "x", "status": "error"}) and not is_error({"output": "x", "metadata": "{}"})
    w = empty()
    for ms in [100.0] * 95 + [3000.0] * 5:
        w[HIST + latency_bucket(ms)] += 1
    assert 100 <= p95(w) < 125


def _events_read(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["topic"]: s.value for f in text_string_to_metric_families(httpx.get(url).text)
            for s in f.samples if s.name == "flywheel_signals_events_total"}


RATE = 40
"""Inferences (and as many thumbs) per second that the live-signal test below sends: 240 of each per 6 s window,
far above `min_events` and enough to tell 20% from 45% down (z > 5). At 100/s the worker, starved of CPU by a
loaded suite (load 18), read 2,374 of 3,894 inferences and judged 15 s behind the traffic."""


@pytest.mark.slow
@pytest.mark.broker
def test_thumbs_down_jump_alerts_slack_within_a_window(kafka_settings: Settings, tmp_path: Path) -> None:
    """20% thumbs-down, then 45%: the live signal reaches Slack within one window of the change (windows of 6 s
    here instead of the default 60 s, so the test takes seconds, not minutes)."""
    settings = kafka_settings
    ensure_topics(settings)
    sig = SignalSettings(group=f"sig-{uuid.uuid4().hex[:8]}", window_s=6, baseline_windows=2, check_interval_s=0.5,
                         min_events=20, min_thumbs=20)
    with RecordingWebhook() as hook:
        alerts = AlertSettings(slack_webhook_url=hook.url, backoff_s=0.1)
        outbox = Outbox(tmp_path / "outbox.sqlite", cooldown_s=600)
        metrics = SignalMetrics()
        server = MetricsServer(metrics.registry, "127.0.0.1", 0)
        app = make_app(settings, sig, alerts, outbox, metrics=metrics, broker_session_timeout=6,
                       broker_rebalance_timeout=6, broker_heartbeat_interval=1)
        traffic = SteadyTraffic(settings, RATE, down=0.2)
        async def scenario() -> float:
            await app.start()
            try:
                await joined(app)
                traffic.start()
                await asyncio.sleep(sig.window_s * (sig.baseline_windows + 1.5))  # baseline at 20% down
                assert hook.received == [], "alert during the steady baseline"
                assert traffic.sent >= 0.95 * traffic.due > 0, vars(traffic)  # the baseline had the rate it claims
                traffic.down = 0.45
                switched = time.monotonic()
                got = await asyncio.to_thread(hook.wait_for, lambda r: len(r) > 0, sig.window_s * 3)
                latency = time.monotonic() - switched
                await asyncio.to_thread(traffic.stop)
                if not got:
                    read = _events_read(server.url)
                    raise AssertionError(f"no alert within {sig.window_s * 3} s of the change ({traffic.sent} "
                                         f"inferences sent, {traffic.due} due at {RATE}/s; the worker had read "
                                         f"{read.get(settings.inference_topic, 0):.0f} inferences and "
                                         f"{read.get(settings.feedback_topic, 0):.0f} feedback)")
                # Scraped over HTTP. Events produced before the worker's first fetch are not read ("latest"), so
                # once the count settles, 25 more of each kind must add exactly 25 to each topic's count. Settled:
                # the same for 3 s (a loaded machine can pause a worker with a backlog for more than a second).
                before: dict[str, float] = {}
                still = 0
                while still < 3:
                    seen = _events_read(server.url)
                    still, before = (still + 1, before) if seen == before else (0, seen)
                    await asyncio.sleep(1.0)
                assert 0 < before[settings.inference_topic] <= traffic.sent
                p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
                for n in range(25):
                    p.produce(settings.inference_topic, b'{"inference_id": "x%d", "output": "ok"}' % n)
                    p.produce(settings.feedback_topic, b'{"inference_id": "x%d", "kind": "thumbs", "value": 1}' % n)
                assert await asyncio.to_thread(p.flush, 10) == 0
                want = {t: v + 25 for t, v in before.items()}
                deadline = time.monotonic() + 20
                while (seen := _events_read(server.url)) != want and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert seen == want
                await app.flywheel_check()
                page = httpx.get(server.url).text
                assert 'flywheel_signals_alerts_total{signal="thumbs_down_rate"} 1.0' in page, \
                    [line for line in page.splitlines() if "_total{" in line]
                assert "\nflywheel_outbox_depth 0.0" in page
                assert "flywheel_signals_check_duration_seconds_count" in page
                return latency
            finally:
                traffic.stop()  # a failed assertion must not leave the producer sending to a stopped broker
                await app.stop()
                server.close()

        latency = asyncio.run(scenario())
        assert latency <= sig.window_s + 2 * sig.check_interval_s + 2, latency
        msg = json.dumps(hook.received[0], ensure_ascii=False)
        assert "thumbs_down_rate" in msg and "app=support-bot,model_version=v2" in msg
        assert len(hook.received) == 1, [r.get("text") for r in hook.received]  # not repeated (cooldown)
        print(f"live thumbs-down alert {latency:.1f} s after the change (window {sig.window_s} s)")

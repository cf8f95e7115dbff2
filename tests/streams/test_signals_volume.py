"""Live signals on the real broker when the worker is behind: a worker that stalls raises no volume alert, an app
that goes quiet does, and a worker that stays more than a window behind still sees a jump in thumbs-down.

Volume is the signal a stalled worker fakes: what it did not read during the stall looks like traffic that stopped.
CI saw it (a loaded machine, `433/window -> 1/window`, and the thumbs-down test's first alert was that one).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from flywheel.config import Settings
from flywheel.infra.testing.traffic import SteadyTraffic, joined
from flywheel.infra.testing.webhook import RecordingWebhook
from flywheel.streams.metrics import SignalMetrics
from flywheel.streams.signals import SignalSettings, make_app
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox

pytestmark = [pytest.mark.reliability, pytest.mark.broker]

RATE = 100
READ_RATE = 1.4 * RATE  # events/s the slowed worker reads at most: 70% of the app's (an inference and a thumbs)
SIG = dict(window_s=4.0, baseline_windows=2, check_interval_s=0.5, min_events=20, min_thumbs=20)

Middle = Callable[[SteadyTraffic, SignalSettings, RecordingWebhook], Awaitable[None]]


def _run(settings: Settings, tmp_path: Path, middle: Middle) -> tuple[list[str], SignalMetrics, SteadyTraffic]:
    """A signals worker in this process, steady traffic for a baseline, then `middle`; the alerts' texts."""
    ensure_topics(settings)
    sig = SignalSettings(group=f"sig-{uuid.uuid4().hex[:8]}", **SIG)  # type: ignore[arg-type]
    metrics = SignalMetrics()
    with RecordingWebhook() as hook:
        app = make_app(settings, sig, AlertSettings(slack_webhook_url=hook.url, backoff_s=0.1),
                       Outbox(tmp_path / "outbox.sqlite", cooldown_s=600), metrics=metrics,
                       broker_session_timeout=6, broker_rebalance_timeout=6, broker_heartbeat_interval=1)
        traffic = SteadyTraffic(settings, RATE)

        async def scenario() -> None:
            await app.start()
            try:
                await joined(app)
                traffic.start()
                await asyncio.sleep(sig.window_s * (sig.baseline_windows + 1.5))
                assert hook.received == [], "alert during the steady baseline"
                await middle(traffic, sig, hook)
            finally:
                traffic.stop()
                await app.stop()

        asyncio.run(scenario())
        return [json.dumps(r, ensure_ascii=False) for r in hook.received], metrics, traffic


def test_a_worker_that_stalls_for_two_windows_raises_no_volume_alert(kafka_settings: Settings,
                                                                      tmp_path: Path) -> None:
    """The worker's event loop blocked for 2.5 windows while the app keeps sending: the backlog counts in the
    windows it was sent in (Kafka timestamps), and volume waits until the worker has caught up."""

    async def stall(traffic: SteadyTraffic, sig: SignalSettings, hook: RecordingWebhook) -> None:
        time.sleep(sig.window_s * 2.5)  # blocks the loop the worker runs on, as a long GC pause or a busy host
        await asyncio.sleep(sig.window_s * 3)  # catch up, then judge the stalled windows and two more

    alerts, metrics, traffic = _run(kafka_settings, tmp_path, stall)
    assert traffic.sent >= 0.95 * traffic.due > 0, vars(traffic)  # the app kept its rate through the stall
    assert [a for a in alerts if "volume" in a] == [], alerts
    print(f"stall: {traffic.sent} inferences, no volume alert; "
          f"{metrics.volume_skipped._value.get():.0f} windows not judged while behind")


def test_an_app_that_goes_quiet_raises_a_volume_alert(kafka_settings: Settings, tmp_path: Path) -> None:
    """The app stops sending: the first complete window without traffic is judged (the worker is caught up: nothing
    is left to read) and alerts."""
    waited: dict[str, float] = {}

    async def quiet(traffic: SteadyTraffic, sig: SignalSettings, hook: RecordingWebhook) -> None:
        traffic.pause()
        paused = time.monotonic()
        limit = sig.window_s * 3 + min(sig.window_s / 2, 10.0) + 2
        await asyncio.to_thread(hook.wait_for, lambda r: any("volume" in json.dumps(x) for x in r), limit)
        waited["s"] = time.monotonic() - paused

    alerts, _, _ = _run(kafka_settings, tmp_path, quiet)
    volume = [a for a in alerts if "volume" in a]
    assert len(volume) == 1, alerts
    before, after = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+)/window", volume[0])[:2])
    assert before >= SIG["min_events"] and after * SignalSettings().volume_ratio <= before, volume[0]
    print(f"quiet app: volume alert {waited['s']:.1f} s after the traffic stopped")


def test_a_worker_that_stays_behind_still_alerts_on_a_thumbs_down_jump(kafka_settings: Settings, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker reads at most 70% of what the app sends (a busy host), so it falls further behind than a
    window. Rates are judged in the window the worker is filling: judged in the wall clock's window, which it has
    not read yet, they were empty and the change went unseen (seen at load 15-18). The pace is a rate, not a cost
    per event: 4 ms more per event left a fast machine's worker nearly caught up (CI: 1,787 of 2,066 read), and
    8 ms (the routing agent's cost alone) left it too far behind to reach the change within the wait."""
    import flywheel.streams.signals as signals

    real = signals.produced_at

    pace = {"next": 0.0}

    def slow(stamp: float | None, now: float) -> float:  # called once per event read, inference or feedback
        t = time.monotonic()
        if pace["next"] > t:
            time.sleep(pace["next"] - t)
        pace["next"] = max(pace["next"], t) + 1 / READ_RATE
        return real(stamp, now)

    monkeypatch.setattr(signals, "produced_at", slow)
    waited: dict[str, float] = {}

    async def jump(traffic: SteadyTraffic, sig: SignalSettings, hook: RecordingWebhook) -> None:
        traffic.down = 0.45
        switched = time.monotonic()
        await asyncio.to_thread(hook.wait_for, lambda r: any("thumbs_down_rate" in json.dumps(x) for x in r), 45)
        waited["s"] = time.monotonic() - switched

    alerts, metrics, traffic = _run(kafka_settings, tmp_path, jump)
    read = metrics.events.labels(kafka_settings.inference_topic)._value.get()
    assert read < traffic.sent - RATE * SIG["window_s"], (read, traffic.sent)  # it was more than a window behind
    assert [a for a in alerts if "thumbs_down_rate" in a], (alerts, read, traffic.sent)
    assert [a for a in alerts if "volume" in a] == [], alerts
    print(f"behind: read {read:.0f} of {traffic.sent} inferences; thumbs-down alert {waited['s']:.1f} s after the "
          f"change")

"""From the SDK through Kafka and the landing worker to a drift run: the batch job finds a model-version switch
sent as real events, and the live-signal group and the landing group do not take partitions from each other."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from flywheel.config import Settings
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox
from flywheel.infra.testing.scenarios import sampling_report
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.signals import SignalSettings, make_app
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.windows import Window

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


@pytest.mark.slow
@pytest.mark.broker
def test_sdk_to_lake_to_drift(kafka_settings: Settings) -> None:
    s = kafka_settings
    before = sampling_report("oasst-sft-7-llama-30b")[:600]
    after = sampling_report("oasst-rlhf-1-llama-30b-8k")[:600]
    with FlywheelClient(s) as fw:
        for hour, rows, version in ((0, before, "sft-7"), (1, after, "rlhf-1-8k")):
            for n, (prompt, output) in enumerate(rows):
                t = T0 + timedelta(hours=hour, seconds=n * 5)
                iid = fw.log_inference(app="assistant", model="oasst-llama-30b", model_version=version,
                                       prompt_version="v1", input=[{"role": "user", "content": prompt}],
                                       output=output, latency_ms=800.0 + len(output) * 0.5,
                                       output_tokens=len(output) // 4 + 1, timestamp=t.isoformat())
                fw.log_feedback(inference_id=iid, kind="thumbs", value=1 if n % 5 else -1,
                                timestamp=(t + timedelta(seconds=20)).isoformat())
    # The live-signal worker runs alongside, in its own group: both see every partition.
    sig = SignalSettings(group=f"{s.ingest_group}-signals", check_interval_s=1)
    app = make_app(s, sig, AlertSettings(), Outbox(s.home / "outbox.sqlite"), broker_session_timeout=6,
                   broker_rebalance_timeout=6, broker_heartbeat_interval=1, consumer_auto_offset_reset="earliest")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(app.start(), loop).result(60)
    try:
        wanted = {(t, p) for t in (s.inference_topic, s.feedback_topic) for p in range(s.partitions)}
        deadline = time.monotonic() + 60
        while not wanted <= {(tp.topic, tp.partition) for tp in app.consumer.assignment()}:
            assert time.monotonic() < deadline, "the signals worker never got its partitions"
            time.sleep(0.2)
        stats = IngestWorker(s).run(until_idle=2)
        assert stats.landed["inferences"] == 1200 and stats.landed["feedback"] == 1200
        assert wanted <= {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
        table = app.tables["signals"]
        deadline = time.monotonic() + 30
        while sum(v[0] for v in table.values()) < 1200:  # the live worker counted every inference too
            assert time.monotonic() < deadline, sum(v[0] for v in table.values())
            time.sleep(0.2)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    run = run_drift(s, DriftSettings(reports="none"), current=Window(T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
                    reference=Window(T0, T0 + timedelta(hours=1)))
    assert run.n_reference == run.n_current == 600
    moved = {e.feature for e in run.drifted if e.level == "app,model"}
    assert {"output_chars", "output_words"} <= moved
    assert not moved & {"input_chars", "input_script", "thumbs_up_rate"}  # same prompts, same satisfaction
    assert [a.kind for a in run.alerts] == ["model-drift"]

"""A worker that keeps running while the in-memory broker restarts (its topics come back empty, under new ids,
with offsets from 0) must notice, land the new events under the new topic id, drop nothing, and say while it
cannot reach the broker."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.testing.collector import serving
from flywheel.streams.client import ClientStats, FlywheelClient, UndeliveredEvents
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.query import connect

from .conftest import Background


def _send(s: Settings, ids: list[str]) -> None:
    with FlywheelClient(s) as fw:
        for iid in ids:
            fw.log_inference(inference_id=iid, app="a", model="m", input="q", output="o")


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def test_a_running_worker_resumes_under_the_new_topic_id_after_a_broker_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flywheel.ingest")
    s = Settings(home=tmp_path / "home", broker_port=broker.free_port(), partitions=2, ingest_group="running",
                 kafka_session_timeout_ms=6000, flush_interval_s=0.5)
    broker.start(s)
    worker = IngestWorker(s)
    background = Background()
    try:
        _send(s, [f"before-{i}" for i in range(3000)])
        background.start(worker.run)
        assert _wait(lambda: worker.stats.landed["inferences"] == 3000, 60), worker.stats.landed
        broker.stop(s)
        time.sleep(6)  # long enough for the worker to say it cannot reach the broker
        broker.start(s)  # same port, empty: the topics come back with new ids and offsets from 0
        ensure_topics(s)
        _send(s, [f"after-{i}" for i in range(1000)])
        t0 = time.monotonic()
        landed = _wait(lambda: worker.stats.landed["inferences"] == 4000, 30)
        took = time.monotonic() - t0
    finally:
        worker.stop()
        for thread in background.threads:
            thread.join(30)
        broker.stop(s)
    assert not background.errors, background.errors
    assert landed, (worker.stats.landed, worker.stats.replayed)
    assert worker.stats.replayed == 0
    print(f"after the restart the running worker landed 1000 events in {took:.1f} s")
    assert any("cannot reach the Kafka broker" in r.getMessage() for r in caplog.records)
    assert any("has a new id" in r.getMessage() or "topic ids" in r.getMessage() for r in caplog.records)
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id), count(DISTINCT _topic_id) "
                       "FROM lake_inferences").fetchone() == (4000, 4000, 2)


KEY = "test-key-0123456789"


@dataclass
class _Sent:
    """What a producer handed over, per phase of the test (`before` the stop, `down`, `after` the restart)."""

    acked: dict[str, list[str]] = field(default_factory=lambda: {"before": [], "down": [], "after": []})
    refused: dict[str, int] = field(default_factory=lambda: {"before": 0, "down": 0, "after": 0})


@pytest.mark.reliability
def test_the_sdk_the_collector_and_the_worker_ride_out_a_broker_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Producers and the worker keep running while the in-memory broker stops for 6 s and starts again, empty.
    What the old broker acknowledged but the worker had not landed yet is gone with it (the only loss, and the
    test measures it); everything else lands exactly once: what the SDK buffered meanwhile is delivered or reported
    undelivered, the collector answers 503 while the broker is away (nothing accepted is lost after the restart),
    and the worker waits and resumes without exiting."""
    caplog.set_level(logging.INFO, logger="flywheel.ingest")
    s = Settings(home=tmp_path / "home", broker_port=broker.free_port(), partitions=2, ingest_group="outage",
                 kafka_session_timeout_ms=6000, flush_interval_s=0.3)
    broker.start(s)
    ensure_topics(s)
    worker = IngestWorker(s)
    background = Background()
    phase = ["before"]
    done = threading.Event()
    sdk_sent: dict[str, list[str]] = {"before": [], "down": [], "after": []}
    sdk_report: list[UndeliveredEvents | ClientStats] = []
    collected = _Sent()

    def sdk() -> None:
        fw = FlywheelClient(s, close_timeout_s=30)
        i = 0
        while not done.is_set():
            iid = f"sdk-{phase[0]}-{i}"
            fw.log_inference(inference_id=iid, app="a", model="m", input="q", output="o")
            sdk_sent[phase[0]].append(iid)
            i += 1
            time.sleep(0.005)
        try:
            fw.close()
        except UndeliveredEvents as exc:
            sdk_report.append(exc)
        sdk_report.append(fw.stats)

    def collect(base: str) -> None:
        i = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
            while not done.is_set():
                at = phase[0]
                ids = [f"col-{at}-{i + k}" for k in range(20)]
                i += 20
                body = b"".join(json.dumps({"inference_id": iid, "timestamp": "2026-12-01T12:00:00Z", "app": "a",
                                            "model": "m", "input": "q", "output": "o"}).encode() + b"\n"
                                for iid in ids)
                r = http.post("/v1/inference", content=body, headers={"Content-Type": "application/x-ndjson"})
                if at == "down" and phase[0] == "after":
                    # Sent while the broker was away and answered once it was back (within the delivery
                    # timeout): what it acknowledged is the new broker's, and must land like every later event.
                    at = "after"
                if r.status_code == 202:
                    collected.acked[at] += ids
                else:
                    assert r.status_code == 503, r.text
                    collected.refused[at] += len(ids)
                    time.sleep(0.2)
                time.sleep(0.05)

    try:
        with serving(s, CollectorSettings(api_keys=KEY, delivery_timeout_s=2)) as base:
            threads = [background.start(worker.run), background.start(sdk), background.start(lambda: collect(base))]
            time.sleep(4)
            landed_at_stop = worker.stats.landed["inferences"]
            broker.stop(s)
            phase[0] = "down"
            time.sleep(6)
            broker.start(s)
            ensure_topics(s)
            phase[0] = "after"
            time.sleep(5)
            done.set()
            for t in threads[1:]:
                t.join(60)
        sent = sum(map(len, sdk_sent.values())) + sum(map(len, collected.acked.values()))
        acked_after = set(collected.acked["after"])
        landed_all = _wait(lambda: _landed_ids(s) >= acked_after, 60)
        assert landed_all, (len(acked_after - _landed_ids(s)), sorted(acked_after - _landed_ids(s))[:5],
                            worker.stats.landed, sdk_report)
        for _ in range(30):  # until nothing more arrives (what the SDK resent after the restart)
            before = worker.stats.landed["inferences"]
            time.sleep(2)
            if worker.stats.landed["inferences"] == before:
                break
    finally:
        worker.stop()
        for thread in background.threads[:1]:
            thread.join(30)
        broker.stop(s)
    assert not background.errors, background.errors
    assert worker.stats.replayed == 0
    con = connect(s)
    total, distinct = con.execute("SELECT count(*), count(DISTINCT inference_id) FROM lake_inferences").fetchone()
    con.close()
    assert total == distinct, "an event landed twice"
    landed = _landed_ids(s)
    stats = sdk_report[-1]
    assert isinstance(stats, ClientStats) and stats.buffered == 0
    assert stats.sent == stats.delivered + stats.failed + stats.dropped
    undelivered = next((r for r in sdk_report if isinstance(r, UndeliveredEvents)), None)
    assert (undelivered.count if undelivered else 0) == stats.failed + stats.dropped
    # Only what the old broker held can be lost: every event the collector acknowledged after the restart landed,
    # and every SDK event sent from the stop on landed or was reported undelivered.
    assert set(collected.acked["after"]) <= landed
    assert collected.acked["down"] == []  # no broker, no acknowledgement: 503s
    sdk_missing_later = len((set(sdk_sent["down"]) | set(sdk_sent["after"])) - landed)
    assert sdk_missing_later <= stats.failed + stats.dropped
    lost_collector = set(collected.acked["before"]) - landed
    lost_sdk = set(sdk_sent["before"]) - landed
    print(f"sent {sent}; landed {len(landed)} ({landed_at_stop} by the stop); lost with the broker's memory: "
          f"{len(lost_collector)} of {len(collected.acked['before'])} collector-acknowledged and {len(lost_sdk)} of "
          f"{len(sdk_sent['before'])} SDK events sent before the stop; collector 503s: {collected.refused}; SDK: "
          f"{stats}, undelivered reported: {undelivered.count if undelivered else 0}; SDK events sent from the stop "
          f"on that did not land: {sdk_missing_later}")
    assert any("cannot reach the Kafka broker" in r.getMessage() for r in caplog.records)


def _landed_ids(s: Settings) -> set[str]:
    try:
        con = connect(s)
    except Exception:  # the tables may not exist yet
        return set()
    try:
        return {r[0] for r in con.execute("SELECT inference_id FROM lake_inferences").fetchall()}
    finally:
        con.close()

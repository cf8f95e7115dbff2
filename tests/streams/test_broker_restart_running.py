"""A worker that keeps running while the in-memory broker restarts (its topics come back empty, under new ids,
with offsets from 0) must notice, land the new events under the new topic id, drop nothing, and say while it
cannot reach the broker."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.query import connect


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
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    try:
        _send(s, [f"before-{i}" for i in range(3000)])
        thread.start()
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
        thread.join(30)
        broker.stop(s)
    assert not errors, errors
    assert landed, (worker.stats.landed, worker.stats.replayed)
    assert worker.stats.replayed == 0
    print(f"after the restart the running worker landed 1000 events in {took:.1f} s")
    assert any("cannot reach the Kafka broker" in r.getMessage() for r in caplog.records)
    assert any("has a new id" in r.getMessage() or "topic ids" in r.getMessage() for r in caplog.records)
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id), count(DISTINCT _topic_id) "
                       "FROM lake_inferences").fetchone() == (4000, 4000, 2)

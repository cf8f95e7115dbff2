"""The landing worker against the real embedded broker, real Delta tables and DuckDB."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.infra.testing.corpus import hostile_payloads
from flywheel.schemas.contract import event_type_of
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.lake import Lake, LakeError
from flywheel.warehouse.query import connect

from .conftest import Produced, read_topic


def _ids(settings: Settings, sql: str) -> list[Any]:
    con = connect(settings)
    try:
        return [r[0] for r in con.sql(sql).fetchall()]
    finally:
        con.close()


def test_hostile_events_are_quarantined_with_a_reason_and_valid_ones_all_land(
        produced: Produced, sample_events: list[dict[str, Any]]) -> None:
    s = produced.settings
    by_type = {"inference": [e for e in sample_events if event_type_of(e).name == "inference"],
               "feedback": [e for e in sample_events if event_type_of(e).name == "feedback"]}
    hostile = {name: hostile_payloads(events, 500, seed=5) for name, events in by_type.items()}
    # Interleave: hostile events sit between valid ones in the same batches and partitions.
    for i, event in enumerate(sample_events):
        produced.event(event)
        for name in ("inference", "feedback"):
            if i < 500:
                label, payload = hostile[name][i]
                produced.raw(name, label, payload)
    produced.flush()
    assert len(produced.hostile) == 1000
    assert sum(len(p) > 10_000_000 for _, _, p in produced.hostile) >= 5

    stats = IngestWorker(s).run(until_idle=2)

    assert stats.landed["inferences"] == len(produced.valid["inference"])
    assert stats.landed["feedback"] == len(produced.valid["feedback"])
    assert stats.quarantined == 1000
    assert sorted(_ids(s, "SELECT inference_id FROM inferences")) == sorted(
        e["inference_id"] for e in produced.valid["inference"])
    assert sorted(_ids(s, "SELECT feedback_id FROM feedback")) == sorted(
        e["feedback_id"] for e in produced.valid["feedback"])
    con = connect(s)
    rows = con.sql("SELECT event_type, reason, payload FROM quarantine").fetchall()
    assert all(reason for _, reason, _ in rows)
    got = sorted((t, bytes(p)) for t, _, p in rows)
    assert got == sorted((t, p) for t, _, p in produced.hostile)  # original bytes, every one, once
    reasons = dict(con.sql("SELECT reason, count(*) FROM quarantine GROUP BY ALL").fetchall())
    assert reasons["payload is not valid UTF-8"] >= 50
    assert any(r.startswith("payload of ") and "exceeds" in r for r in reasons)
    con.close()

    dead = read_topic(s, s.deadletter_topic, s.partitions)
    assert len(dead) == 1000
    headers = dict(dead[0].headers())
    assert headers["flywheel.reason"] and headers["flywheel.topic"] in (s.inference_topic.encode(),
                                                                        s.feedback_topic.encode())


def test_messages_without_a_value_are_quarantined_and_the_lane_goes_on(
        produced: Produced, sample_events: list[dict[str, Any]]) -> None:
    s = produced.settings
    events = sample_events[:40]
    for i, event in enumerate(events):
        produced.event(event)
        if i % 10 == 0:  # tombstones (a null value, as compacted topics use) between valid events, on both topics
            for name in ("inference", "feedback"):
                produced.tombstone(name, b"deleted-key")
    produced.flush()

    stats = IngestWorker(s).run(until_idle=2)

    assert stats.landed["inferences"] == len(produced.valid["inference"])
    assert stats.landed["feedback"] == len(produced.valid["feedback"])
    assert stats.quarantined == 8
    con = connect(s)
    rows = con.sql("SELECT DISTINCT reason, payload IS NULL, key FROM quarantine").fetchall()
    con.close()
    assert rows == [("message has no value (a tombstone)", True, b"deleted-key")]
    dead = read_topic(s, s.deadletter_topic, s.partitions)
    assert len(dead) == 8 and all(m.value() is None for m in dead)


def test_sdk_events_land_and_a_restart_lands_only_what_is_new(kafka_settings: Settings) -> None:
    s = kafka_settings
    with FlywheelClient(s) as fw:
        iid = fw.log_inference(app="bot", model="m", input=[{"role": "user", "content": "hi"}], output="hello",
                               latency_ms=12.5, metadata={"region": "eu"})
        fw.log_feedback(inference_id=iid, kind="rating", value=4)
        fw.log_feedback(inference_id=iid, kind="thumbs", value=-1)
        fw.flush()
    assert IngestWorker(s).run(until_idle=1).landed["inferences"] == 1
    with FlywheelClient(s) as fw:
        fw.log_inference(inference_id="second", app="bot", model="m", input="q", output="a")
    stats = IngestWorker(s).run(until_idle=1)
    assert (stats.landed["inferences"], stats.landed["feedback"]) == (1, 0)
    con = connect(s)
    row = con.execute("SELECT input, thumbs_down, rating_mean, metadata FROM interactions WHERE inference_id = ?",
                      [iid]).fetchone()
    assert row == ("hi", 1, 0.75, '{"region":"eu"}')
    assert con.execute("SELECT count(*) FROM lake_inferences").fetchone() == (2,)


def test_an_event_is_queryable_within_five_seconds(kafka_settings: Settings) -> None:
    defaults = Settings()
    s = kafka_settings.replace(flush_interval_s=defaults.flush_interval_s, flush_max_events=defaults.flush_max_events,
                               flush_max_bytes=defaults.flush_max_bytes)
    worker = IngestWorker(s)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with FlywheelClient(s) as fw:
            fw.log_inference(inference_id="warm-up", app="bot", model="m", input="q", output="a")
        _wait_for(s, "warm-up", timeout=60)  # the group join takes a few seconds on the embedded broker
        with FlywheelClient(s) as fw:
            fw.log_inference(inference_id="fresh", app="bot", model="m", input="q", output="a")
            fw.flush()
            sent = time.monotonic()
        _wait_for(s, "fresh", timeout=5)
        assert time.monotonic() - sent < 5
    finally:
        worker.stop()
        thread.join(30)


def _wait_for(s: Settings, iid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ids(s, f"SELECT inference_id FROM inferences WHERE inference_id = '{iid}'"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{iid} was not queryable within {timeout}s")


def test_two_workers_share_the_partitions_and_land_everything_once(
        produced: Produced, sample_events: list[dict[str, Any]]) -> None:
    s = produced.settings.replace(partitions=4, flush_interval_s=0.2)
    produced.settings = s
    for e in sample_events:
        produced.event(e)
    produced.flush()
    workers = [IngestWorker(s), IngestWorker(s)]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": 4}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = sum(w.stats.landed["inferences"] for w in workers)
    assert total == len(produced.valid["inference"])
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_inferences"
                       ).fetchone() == (total, total)
    assert all(w.stats.consumed > 0 for w in workers), [w.stats.consumed for w in workers]


class _FailingLake(Lake):
    """A lake whose `fail_at`-th commit raises, as a full disk or a lost object store would."""

    def __init__(self, root: str, fail_at: int) -> None:
        super().__init__(root)
        self.calls, self.fail_at = itertools.count(1), fail_at  # the worker commits tables from several threads

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if next(self.calls) == self.fail_at:
            raise LakeError("injected: disk full")
        return super().commit(*args, **kwargs)


def test_a_failed_commit_stops_the_worker_and_a_new_one_loses_nothing(
        produced: Produced, sample_events: list[dict[str, Any]]) -> None:
    s = produced.settings.replace(flush_max_events=300)
    produced.settings = s
    for e in sample_events:
        produced.event(e)
    produced.flush()
    failed = IngestWorker(s, _FailingLake(s.lake, fail_at=4))
    with pytest.raises(LakeError, match="injected"):
        failed.run(until_idle=2)
    # The failed worker commits nothing more (a watermark-only commit could claim rows that never landed) ...
    with pytest.raises(FlywheelError, match="stopped landing after a failed commit"):
        failed.flush(force_watermarks=True)
    # ... and the next one lands exactly what is missing.
    IngestWorker(s).run(until_idle=2)
    con = connect(s)
    n_inf, n_fb = len(produced.valid["inference"]), len(produced.valid["feedback"])
    assert con.execute("SELECT count(*), count(DISTINCT _offset || _topic || _partition) FROM lake_inferences"
                       ).fetchone() == (n_inf, n_inf)
    assert con.execute("SELECT count(*), count(DISTINCT _offset || _topic || _partition) FROM lake_feedback"
                       ).fetchone() == (n_fb, n_fb)

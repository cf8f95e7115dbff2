"""Late, early and orphan feedback: whatever the landing order or the gap in event time, feedback joins its
inference in `interactions`; feedback whose inference never lands shows as orphaned after the horizon."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Producer

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _inference(iid: str, ts: datetime) -> dict:
    return {"inference_id": iid, "timestamp": ts.isoformat(), "app": "support-bot", "model": "gpt-4o",
            "input": "Where is my order?", "output": "It ships today.", "latency_ms": 420}


def _feedback(fid: str, iid: str, ts: datetime, **kw: object) -> dict:
    return {"feedback_id": fid, "inference_id": iid, "timestamp": ts.isoformat(), **({"kind": "thumbs", "value": 1}
                                                                                    | kw)}


def _land(settings: Settings, events: list[dict], landed: datetime, offset: int) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    for table, rows in to_rows(events, ingested_at=landed, start_offset=offset).items():
        if rows.num_rows:
            lake.commit(table, rows, {}, keep_ingested_at=True)


def _interaction(settings: Settings, iid: str) -> tuple:
    rows = connect(settings).sql(
        "SELECT feedback_count, thumbs_up, thumbs_down, ratings, rating_mean, first_feedback_at, last_feedback_at, "
        "event_date FROM interactions WHERE inference_id = $i", params={"i": iid}).fetchall()
    assert len(rows) == 1
    return rows[0]


def test_feedback_landing_before_its_inference_joins_once_the_inference_lands(settings: Settings) -> None:
    t = NOW - timedelta(hours=2)
    _land(settings, [_feedback("fb-early", "inf-late", t + timedelta(seconds=30))], landed=t + timedelta(minutes=1),
          offset=0)
    con = connect(settings)
    assert con.sql("SELECT count(*) FROM interactions").fetchall() == [(0,)]
    assert con.sql("SELECT feedback_id FROM pending_feedback").fetchall() == [("fb-early",)]
    assert con.sql("SELECT count(*) FROM orphan_feedback").fetchall() == [(0,)]

    _land(settings, [_inference("inf-late", t)], landed=t + timedelta(minutes=30), offset=100)
    fc, up, down, _r, _m, first, last, _d = _interaction(settings, "inf-late")
    assert (fc, up, down) == (1, 1, 0) and first == last == t + timedelta(seconds=30)
    assert connect(settings).sql("SELECT count(*) FROM unmatched_feedback").fetchall() == [(0,)]


def test_feedback_three_days_after_its_inference_joins_across_partitions(settings: Settings) -> None:
    t = NOW - timedelta(days=4)
    _land(settings, [_inference("inf-old", t), _feedback("fb-1", "inf-old", t + timedelta(minutes=2))],
          landed=t + timedelta(minutes=5), offset=0)
    later = t + timedelta(days=3)
    _land(settings, [_feedback("fb-3d", "inf-old", later, kind="rating", value=4),
                     _feedback("fb-3d-down", "inf-old", later + timedelta(seconds=1), value=-1)],
          landed=later + timedelta(minutes=1), offset=100)
    con = connect(settings)
    dates = con.sql("SELECT DISTINCT event_date FROM feedback ORDER BY 1").fetchall()
    assert [d for (d,) in dates] == [t.date(), later.date()]  # different partitions of the feedback table
    fc, up, down, ratings, mean, first, last, event_date = _interaction(settings, "inf-old")
    assert (fc, up, down, ratings) == (3, 1, 1, 1) and mean == pytest.approx(0.75)
    assert (first, last, event_date) == (t + timedelta(minutes=2), later + timedelta(seconds=1), t.date())


def test_feedback_whose_inference_never_lands_is_orphaned_after_the_horizon(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _land(settings, [_feedback("fb-lost", "inf-never", NOW - timedelta(days=4))], landed=NOW - timedelta(days=4),
          offset=0)
    _land(settings, [_feedback("fb-wait", "inf-soon", NOW - timedelta(hours=1))], landed=NOW - timedelta(hours=1),
          offset=100)
    con = connect(settings)  # default horizon: 72 hours
    assert con.sql("SELECT feedback_id, round(waiting_hours) FROM orphan_feedback").fetchall() == [("fb-lost", 96)]
    assert con.sql("SELECT feedback_id FROM pending_feedback").fetchall() == [("fb-wait",)]
    monkeypatch.setenv("FLYWHEEL_QUALITY_ORPHAN_HORIZON_HOURS", "120")
    con = connect(settings)
    assert con.sql("SELECT count(*) FROM orphan_feedback").fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM pending_feedback").fetchall() == [(2,)]


@pytest.mark.slow
@pytest.mark.broker
def test_through_kafka_feedback_sent_first_and_days_later_joins(kafka_settings: Settings) -> None:
    s = kafka_settings
    ensure_topics(s)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5})
    t = NOW - timedelta(days=3, hours=1)

    def send(ev: dict) -> None:
        topic = s.feedback_topic if "feedback_id" in ev else s.inference_topic
        producer.produce(topic, json.dumps(ev).encode(), key=ev["inference_id"].encode())
        producer.flush()

    send(_feedback("k-fb-early", "k-inf", t + timedelta(seconds=5)))  # before its inference
    IngestWorker(s).run(until_idle=1.5)
    assert connect(s).sql("SELECT feedback_id FROM pending_feedback").fetchall() == [("k-fb-early",)]
    send(_inference("k-inf", t))
    send(_feedback("k-fb-3d", "k-inf", t + timedelta(days=3), kind="rating", value=5))  # 3 days later, event time
    started = time.monotonic()
    IngestWorker(s).run(until_idle=1.5)
    assert time.monotonic() - started < 60
    fc, up, _down, ratings, mean, first, last, _d = _interaction(s, "k-inf")
    assert (fc, up, ratings, mean) == (2, 1, 1, 1.0)
    assert (first, last) == (t + timedelta(seconds=5), t + timedelta(days=3))
    assert connect(s).sql("SELECT count(*) FROM unmatched_feedback").fetchall() == [(0,)]

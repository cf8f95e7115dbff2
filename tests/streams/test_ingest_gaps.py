"""The landing worker when a partition's offsets jump (streams/continuity.py), on the real embedded broker.

The broker's own skip (a tailing fetch handed a later producer's batch first) is a race of milliseconds that no
test can call up on demand, so one test stands in for the broker's answer: a consumer that leaves a run of offsets
out of what the broker returned, once, as Tansu does. Everything else is real: broker, worker, lake. The other test
makes real offsets without data (transaction markers) and checks the worker accepts them and lands everything."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams import ingest
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.query import connect

SKIP = range(1_000, 1_100)


class SkippingConsumer(Consumer):
    """Drops the inference topic's offsets `SKIP` from what the broker answers, until it has handed on an offset
    past them: what a tailing consumer of Tansu sees when a batch is written after a later one."""

    skipped = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        msgs = super().consume(num_messages, timeout)
        if SkippingConsumer.skipped >= len(SKIP):
            return msgs
        kept = []
        for m in msgs:
            if m.error() is None and str(m.topic()).endswith(".inference") and m.offset() in SKIP:
                SkippingConsumer.skipped += 1
            else:
                kept.append(m)
        return kept


def _inferences(n: int) -> list[bytes]:
    events = [e for e in generate(load_corpus(), 2 * n, seed=11, prefix="gap")
              if (et := event_type_of(e)) is not None and et.name == "inference"]
    assert len(events) >= n
    return [json.dumps(e).encode() for e in events[:n]]


def _landed(s: Settings) -> tuple[int, int]:
    con = connect(s)
    try:
        row = con.execute("SELECT count(*), count(DISTINCT inference_id) FROM lake_inferences").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        con.close()


def _produce(s: Settings, payloads: list[bytes], config: dict[str, Any] | None = None) -> None:
    p = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5, **(config or {})})
    for v in payloads:
        p.produce(s.inference_topic, v, partition=0)
    assert p.flush(30) == 0


@pytest.mark.parametrize("reread", ["auto", pytest.param("off", marks=pytest.mark.reliability)])
def test_offsets_the_broker_skipped_are_read_again_and_land_once(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, reread: str) -> None:
    s = kafka_settings.replace(ingest_reread_gaps=reread, flush_max_events=500)
    ensure_topics(s)
    _produce(s, _inferences(3_000))
    SkippingConsumer.skipped = 0
    monkeypatch.setattr(ingest, "Consumer", SkippingConsumer)
    stats = IngestWorker(s).run(until_idle=2)
    assert SkippingConsumer.skipped == len(SKIP)
    if reread == "auto":  # the embedded broker: re-read
        assert _landed(s) == (3_000, 3_000)
        assert stats.gaps_reread >= 1 and stats.gaps_accepted == 0, stats
    else:  # taken as Kafka's own jump (a compacted topic, say): what the worker did before it checked
        assert _landed(s) == (2_900, 2_900)
        assert stats.gaps_reread == 0


def test_transaction_markers_are_offsets_without_data_accepted_after_re_reading(kafka_settings: Settings) -> None:
    s = kafka_settings.replace(ingest_reread_gaps="on")
    ensure_topics(s)
    payloads = _inferences(300)
    p = Producer({"bootstrap.servers": s.kafka_bootstrap, "transactional.id": f"{s.topic_prefix}-tx"})
    p.init_transactions(10)
    for i in range(3):  # each commit writes a marker that takes an offset and holds no event
        p.begin_transaction()
        for v in payloads[i * 100:(i + 1) * 100]:
            p.produce(s.inference_topic, v, partition=0)
        p.commit_transaction(10)
    t0 = time.monotonic()
    stats = IngestWorker(s).run(until_idle=2)
    assert _landed(s) == (300, 300)
    assert stats.gaps_accepted == 2, stats  # the markers after the first two transactions (the last ends the log)
    assert stats.gaps_reread >= 2
    assert time.monotonic() - t0 < 30

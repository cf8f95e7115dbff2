"""The embedded broker on Tansu's S3 storage engine, against moto's S3 server on 127.0.0.1: what survives a restart
(topics under the same ids, messages not landed yet, the group's committed offsets) and how fast it lands compared
with the in-memory engine, measured in the same run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from moto.server import ThreadedMotoServer

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics, topic_ids
from flywheel.warehouse.query import connect

pytestmark = [pytest.mark.reliability, pytest.mark.broker]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server with a bucket `tansu`; the variables Tansu reads to reach it, set for the broker process."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=broker.free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for name, value in {"AWS_ENDPOINT": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="tansu")
    try:
        yield url
    finally:
        server.stop()


def _produce(s: Settings, first: int, n: int) -> None:
    p = Producer({"bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for i in range(first, first + n):
        event = {"inference_id": f"i-{i}", "timestamp": "2026-12-01T12:00:00Z", "app": "a", "model": "m",
                 "input": "q " * 200, "output": "o " * 200}
        while True:
            try:
                p.produce(s.inference_topic, json.dumps(event).encode(), f"i-{i}".encode())
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def _land(s: Settings) -> tuple[IngestWorker, float]:
    """Run a worker until the topics are drained; (the worker, events per second from its first event to its
    last commit)."""
    worker = IngestWorker(s)
    st = worker.run(until_idle=2)
    assert st.first_event_at is not None and st.last_commit_at is not None
    return worker, st.consumed / max(st.last_commit_at - st.first_event_at, 1e-6)


def _committed(s: Settings) -> list[int]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.ingest_group})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(s.inference_topic, p) for p in range(s.partitions)],
                                                timeout=10)]
    finally:
        c.close()


def test_the_s3_engine_keeps_topics_messages_and_offsets_across_a_restart(tmp_path: Path, s3_endpoint: str) -> None:
    s = Settings(home=tmp_path / "s3", broker_port=broker.free_port(), partitions=2, broker_storage="s3://tansu/",
                 ingest_group="durable", kafka_session_timeout_ms=6000, flush_interval_s=0.3)
    broker.start(s)
    try:
        ensure_topics(s)
        ids = topic_ids(s, [s.inference_topic])
        _produce(s, 0, 5000)
        _, s3_rate = _land(s)
        committed = _committed(s)
        _produce(s, 5000, 3000)  # acknowledged, not landed yet
        broker.stop(s)
        broker.start(s)
        assert topic_ids(s, [s.inference_topic]) == ids  # the same topics, not new ones
        assert _committed(s) == committed and sum(committed) == 5000
        worker, _ = _land(s)
        assert worker.stats.replayed == 0
    finally:
        broker.stop(s)
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id), count(DISTINCT _topic_id) "
                       "FROM lake_inferences").fetchone() == (8000, 8000, 1)
    con.close()

    m = Settings(home=tmp_path / "memory", broker_port=broker.free_port(), partitions=2, ingest_group="memory",
                 kafka_session_timeout_ms=6000, flush_interval_s=0.3)
    broker.start(m)
    try:
        ensure_topics(m)
        _produce(m, 0, 5000)
        t0 = time.monotonic()
        _, memory_rate = _land(m)
        assert time.monotonic() - t0 < 120
    finally:
        broker.stop(m)
    print(f"landing 5,000 events of about 900 B: s3:// (moto) {s3_rate:,.0f} events/s, memory:// {memory_rate:,.0f} "
          f"events/s ({s3_rate / memory_rate:.2f}x)")

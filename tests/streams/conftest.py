"""Helpers for tests that go through Kafka: a confluent-kafka producer (a client other than our SDK) and a reader
of a topic from the beginning without a consumer group."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams.topics import ensure_topics


class Background:
    """Functions run on daemon threads (a worker, a producer), keeping what they raise for the test's assertions:
    an exception on a thread of its own would otherwise only be printed, and the test would pass."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def start(self, fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by the test's `assert not errors`
                self.errors.append(exc)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread


class Produced:
    """What a test produced, by topic: payloads in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_topics(settings)
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20,
                                  "enable.idempotence": True, "compression.type": "lz4",
                                  "message.max.bytes": 32 * 1024 * 1024})
        self.valid: dict[str, list[dict[str, Any]]] = {"inference": [], "feedback": []}
        self.hostile: list[tuple[str, str, bytes]] = []

    def topic(self, name: str) -> str:
        return self.settings.inference_topic if name == "inference" else self.settings.feedback_topic

    def event(self, event: dict[str, Any], keep: bool = True) -> None:
        """Send `event`; `keep=False` leaves it out of `valid` (a replay of a million events would not fit)."""
        name = event_type_of(event).name
        if keep:
            self.valid[name].append(event)
        self._send(self.topic(name), json.dumps(event).encode(), str(event["inference_id"]).encode())

    def raw(self, topic_name: str, label: str, payload: bytes) -> None:
        self.hostile.append((topic_name, label, payload))
        self._send(self.topic(topic_name), payload, None)

    def tombstone(self, topic_name: str, key: bytes) -> None:
        """A message with a key and no value, as compacted topics use to delete a key."""
        self._send(self.topic(topic_name), None, key)

    def _send(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                self.producer.poll(0.1)

    def flush(self) -> None:
        assert self.producer.flush(60) == 0


@pytest.fixture
def produced(kafka_settings: Settings) -> Iterator[Produced]:
    p = Produced(kafka_settings)
    yield p
    p.producer.flush(5)
    del p.producer  # librdkafka's client goes now, while the broker still answers


def read_topic(settings: Settings, topic: str, partitions: int, timeout: float = 20) -> list[Any]:
    """Every message of `topic` (no consumer group)."""
    import time

    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "reader", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 20, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + timeout
    while len(eof) < partitions and time.monotonic() < deadline:
        for m in c.consume(1000, 0.2):
            if m.error():
                eof.add(m.partition())
            else:
                out.append(m)
    c.close()
    return out


@pytest.fixture(scope="session")
def sample_events() -> list[dict[str, Any]]:
    return list(generate(load_corpus(), 1500, seed=11))

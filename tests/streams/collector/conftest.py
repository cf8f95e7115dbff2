"""The collector under test: served by uvicorn in a thread on 127.0.0.1, on the session broker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from flywheel.config import Settings
from flywheel.infra.testing.collector import serving
from flywheel.streams.collector.settings import CollectorSettings

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def wait_ready(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"the collector at {base} was not ready within {timeout:g}s")


@pytest.fixture
def collector_settings() -> CollectorSettings:
    return CollectorSettings(api_keys=f"other-key,{KEY}", max_body_bytes=1024 * 1024, max_batch_events=500)


@pytest.fixture
def collector(kafka_settings: Settings, collector_settings: CollectorSettings) -> Iterator[str]:
    """The base URL of a ready collector on the test's own topics."""
    with serving(kafka_settings, collector_settings) as base:
        wait_ready(base)
        yield base


@pytest.fixture
def auth() -> dict[str, str]:
    return dict(AUTH)


@pytest.fixture
def count_messages():  # type: ignore[no-untyped-def]
    return messages_in


def messages_in(settings: Settings, topic: str, timeout: float = 20.0) -> int:
    """How many messages `topic` holds, read from the beginning to the end of every partition (no group; the
    broker's watermarks are not trusted: Tansu's can under-report, see STACK-NOTES)."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "count", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 20, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    n, eof = 0, set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < settings.partitions and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error():
                    eof.add(m.partition())
                else:
                    n += 1
    finally:
        c.close()
    assert len(eof) == settings.partitions, f"could not read {topic} to its end"
    return n

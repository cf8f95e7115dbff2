"""The collector's producer on the session broker: acknowledgements keep coming after a reset."""

from __future__ import annotations

import asyncio

from flywheel.config import Settings
from flywheel.streams.collector.producer import AckedProducer, Records
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.topics import ensure_topics


def test_a_reset_producer_still_delivers_and_is_acknowledged(kafka_settings: Settings) -> None:
    """reset() replaces and closes the producer under the polling thread, which serves every acknowledgement and
    is inside the old producer's poll() nearly all the time: requests after a reset are still acknowledged."""
    ensure_topics(kafka_settings)
    producer = AckedProducer(kafka_settings, CollectorSettings(delivery_timeout_s=5))
    records = Records(kafka_settings.inference_topic, ["k"], [b'{"inference_id": "k"}'])
    try:
        asyncio.run(producer.produce(records))
        for _ in range(3):
            producer.reset()
            asyncio.run(asyncio.wait_for(producer.produce(records), 10))
    finally:
        producer.close()

"""The three topics and their creation on demand."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable
from flywheel.streams.security import librdkafka_config


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_config(settings)})


def ensure_topics(settings: Settings, timeout: float = 15.0) -> list[str]:
    """Create whichever of flywheel's topics are missing, with `settings.partitions` partitions. Returns the names
    created. Existing topics are left as they are."""
    client = admin(settings)
    wanted = [settings.inference_topic, settings.feedback_topic, settings.deadletter_topic]
    try:
        existing = set(client.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.kafka_bootstrap} ({exc}); start one with "
                                "`flywheel broker start` or set FLYWHEEL_KAFKA_BOOTSTRAP") from None
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = client.create_topics([NewTopic(t, num_partitions=settings.partitions, replication_factor=1)
                                    for t in missing], operation_timeout=timeout)
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def topic_ids(settings: Settings, topics: list[str], timeout: float = 15.0) -> dict[str, str]:
    """The broker's id of each topic (KIP-516), or nothing for a topic whose broker has no ids."""
    out: dict[str, str] = {}
    for topic, found in describe_topic_ids(admin(settings), topics, timeout).items():
        if isinstance(found, Exception):
            logging.getLogger("flywheel.topics").warning("no topic id for %s (%s); watermarks keyed by name", topic,
                                                         found)
        elif found is not None:
            out[topic] = found
    return out


def describe_topic_ids(client: AdminClient, topics: list[str], timeout: float) -> dict[str, str | None | Exception]:
    """Per topic: its id, None when the broker has no ids (KIP-516), or the error that kept the broker from saying
    (unreachable, topic missing). Callers that poll keep one `client` (the futures fail if it is collected)."""
    out: dict[str, str | None | Exception] = {}
    futures = client.describe_topics(TopicCollection(topics), request_timeout=timeout)
    for topic, fut in futures.items():
        try:
            tid = fut.result(timeout).topic_id
        except Exception as exc:  # KafkaException, or a timeout of the future itself
            out[topic] = exc
            continue
        out[topic] = str(tid) if tid is not None and str(tid) not in ("", "AAAAAAAAAAAAAAAAAAAAAA") else None
    return out

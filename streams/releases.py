"""Release changes on Kafka: every promotion and rollback is an event on `<prefix>.releases` (keyed by app), so other
systems can react, and applications read their current champion from it without access to the lake.

`publish` produces one change and waits for the broker's acknowledgement (the CLI publishes after the `releases`
table has the row, so the table stays the record and the topic its notification: a publish that fails is an error
the operator sees, and `flywheel release publish APP` sends the current state again). `ChampionFeed` reads the
topic from the beginning to its end (one partition, small: a change per release) and keeps, per app, the change
with the highest sequence; it caches the answer for `ttl_s`, so an application that asks on every request
follows a rollback within that time, without a redeploy.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable
from flywheel.streams.security import librdkafka_config

if TYPE_CHECKING:  # the SDK imports this module: keep the warehouse out of applications' imports
    from flywheel.warehouse.releases import Release


@dataclass(frozen=True)
class Champion:
    """What an application needs to call the right model: the champion of its app, and since when."""

    app: str
    model: str
    model_version: str | None
    prompt_version: str | None
    sequence: int
    action: str
    since: str


def topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.releases"


def ensure_topic(settings: Settings, timeout: float = 15.0) -> None:
    client = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_config(settings)})
    try:
        if topic(settings) in client.list_topics(timeout=timeout).topics:
            return
        fut = client.create_topics([NewTopic(topic(settings), num_partitions=1, replication_factor=1)])
        try:
            fut[topic(settings)].result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.kafka_bootstrap} ({exc})",
                                bootstrap=settings.kafka_bootstrap) from None


def publish(settings: Settings, champion: Champion, timeout: float = 15.0) -> None:
    """Produce the change and wait until the broker acknowledged it."""
    ensure_topic(settings, timeout)
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_config(settings),
                         "enable.idempotence": True,
                         "acks": "all"})
    try:
        producer.produce(topic(settings), key=champion.app.encode(), value=json.dumps(asdict(champion)).encode(),
                         on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        left = producer.flush(timeout)
        failed = errors[:1]  # before purge() below reports what it purged
    finally:
        # Closed here, not by the garbage collector: a raised error's traceback keeps this frame (and a CLI
        # runner keeps the error), and the client would log a failed connection every second meanwhile.
        producer.purge()
        producer.close()
    if left or failed:
        raise BrokerUnavailable(f"the release change of {champion.app} was not acknowledged by "
                                f"{settings.kafka_bootstrap}: {failed[0] if failed else 'timed out'}; "
                                f"`flywheel release publish {champion.app}` sends it again",
                                bootstrap=settings.kafka_bootstrap)


class ChampionFeed:
    """The current champion per app, from the releases topic, cached for `ttl_s`. Thread-safe."""

    def __init__(self, settings: Settings, ttl_s: float = 10.0, timeout: float = 10.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self.timeout = timeout
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._champions: dict[str, Champion] = {}

    def champion(self, app: str) -> Champion | None:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._champions = self._read()
                self._at = time.monotonic()
            return self._champions.get(app)

    def _read(self) -> dict[str, Champion]:
        c = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, **librdkafka_config(self.settings),
                      "group.id": "flywheel-champion-reader",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 20, "enable.partition.eof": True})
        try:
            try:
                meta = c.list_topics(topic(self.settings), timeout=self.timeout).topics.get(topic(self.settings))
            except KafkaException as exc:
                raise BrokerUnavailable(f"cannot read releases from {self.settings.kafka_bootstrap}: {exc}",
                                        bootstrap=self.settings.kafka_bootstrap) from None
            if meta is None or meta.error is not None or not meta.partitions:
                return {}
            parts = list(meta.partitions)
            ends = {p: c.get_watermark_offsets(TopicPartition(topic(self.settings), p), timeout=self.timeout)[1]
                    for p in parts}
            todo = {p for p, end in ends.items() if end > 0}
            c.assign([TopicPartition(topic(self.settings), p, 0) for p in todo])
            out: dict[str, Champion] = {}
            deadline = time.monotonic() + self.timeout
            while todo and time.monotonic() < deadline:
                for m in c.consume(500, 0.2):
                    if m.error():
                        todo.discard(m.partition())
                        continue
                    ch = Champion(**json.loads(m.value() or b"{}"))
                    if ch.app not in out or ch.sequence >= out[ch.app].sequence:
                        out[ch.app] = ch
                    part, off = m.partition() or 0, m.offset() or 0
                    if off + 1 >= ends[part]:
                        todo.discard(part)
            return out
        finally:
            c.close()


def champion_of(r: Release) -> Champion:
    """The change a release makes, as the topic carries it."""
    return Champion(r.app, r.model, r.model_version, r.prompt_version, r.sequence, r.action, r.since.isoformat())

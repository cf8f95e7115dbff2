"""Producing a request's events and waiting for the broker's acknowledgement of every one, from asyncio.

One confluent-kafka producer per collector, with the SDK's guarantees (acks=all, idempotence: a retried send
never duplicates a message). A thread polls it, so delivery reports arrive while the event loop serves requests;
each request counts its own reports down and is woken once, when the last one arrives. The producer also keeps
the broker's state from librdkafka's error callback: while every broker is down, requests are answered 503 at
once instead of each waiting out the delivery timeout.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from typing import NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.security import librdkafka_config

log = logging.getLogger("flywheel.collector")

POLL_S = 0.05
"""How long the polling thread blocks in one `poll`: delivery reports wake it at once, so this only bounds how
quickly it notices that the collector is stopping."""


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the operating system too (Linux; 15 bytes at most), so `top -H` and
    /proc/<pid>/task show where the collector's CPU goes; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class Records(NamedTuple):
    """A request's events as they go to Kafka: their topic (a request has one), and per event its key (the
    inference id, so an inference and its feedback share a partition; a str, which confluent-kafka sends as its
    UTF-8 bytes) and its payload. Columns rather than a tuple per event: making a NamedTuple per event (its
    `__new__` is Python code) cost more of the event loop's CPU than producing the event (bench/collect.py)."""

    topic: str
    keys: list[str]
    values: list[bytes]


class _Delivery:
    """The delivery reports of one request, counted down in the polling thread."""

    __slots__ = ("pending", "error", "future", "loop")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pending = n
        self.error: KafkaError | None = None
        self.future: asyncio.Future[None] = loop.create_future()
        self.loop = loop

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        # Runs in the polling thread only, so the count needs no lock.
        if err is not None and self.error is None:
            self.error = err
        self.pending -= 1
        if self.pending == 0:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed while the collector stopped: nobody waits any more
                pass

    def _wake(self) -> None:
        if not self.future.done():  # the request may have been cancelled (client gone)
            self.future.set_result(None)


class AckedProducer:
    """Produces records and returns only once the broker acknowledged them all, or raises `BrokerUnavailable`."""

    def __init__(self, settings: Settings, collector: CollectorSettings) -> None:
        self.settings = settings
        self.collector = collector
        self._all_down = False
        self._producer = self._new_producer()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="collector-delivery", daemon=True)
        self._thread.start()

    def _new_producer(self) -> Producer:
        return Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            **librdkafka_config(self.settings),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": self.collector.linger_ms,
            "compression.type": self.collector.compression,
            "message.max.bytes": max(self.settings.max_event_bytes * 2, 1_000_000),
            "message.timeout.ms": int(self.collector.delivery_timeout_s * 1000),
            "queue.buffering.max.kbytes": 256 * 1024,
            "error_cb": self._on_error,
        })

    def reset(self) -> None:
        """Start over with a new producer (blocking: call it from a thread). After every broker was lost, the old
        one's idempotence state (producer id, sequence numbers) can be unknown to the brokers that answer now (a
        new cluster, or the embedded broker, which keeps nothing): measured, it then timed out every event. What
        the old one still held fails with a purge error, so those requests get 503 and are retried."""
        old, self._producer = self._producer, self._new_producer()
        old.purge()
        old.flush(self.collector.delivery_timeout_s)
        old.close()  # waits for a poll() the polling thread may still be inside (up to POLL_S)

    @property
    def brokers_down(self) -> bool:
        """librdkafka reported every broker down and nothing was delivered since."""
        return self._all_down

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._all_down:
                log.warning("no Kafka broker answers at %s: requests get 503 until one does",
                            self.settings.kafka_bootstrap)
            self._all_down = True

    def _poll(self) -> None:
        name_os_thread("collector-ack")
        while not self._stop.is_set():
            self._producer.poll(POLL_S)

    def probe(self, timeout: float = 2.0, clear: bool = True) -> bool:
        """Ask the brokers for metadata (blocking: call it from a thread); with `clear`, clears `brokers_down` when
        one answers."""
        try:
            self._producer.list_topics(self.settings.inference_topic, timeout=timeout)
        except KafkaException:
            return False
        if clear:
            self._all_down = False
        return True

    async def produce(self, records: Records) -> None:
        """Send `records`; return once the broker acknowledged every one (acks=all). Raises `BrokerUnavailable`
        when the brokers are known to be down (nothing is sent), or when any record failed or was not acknowledged
        within the delivery timeout (some may have landed: a retry with the same ids lands each event once)."""
        if self._all_down:
            raise BrokerUnavailable(f"no Kafka broker answers at {self.settings.kafka_bootstrap}")
        if not records.values:
            return
        loop = asyncio.get_running_loop()
        delivery = _Delivery(len(records.values), loop)
        deadline = time.monotonic() + self.collector.delivery_timeout_s
        produce, topic, report = self._producer.produce, records.topic, delivery.report
        for key, value in zip(records.keys, records.values, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: let the broker drain it
                    if time.monotonic() > deadline:
                        raise BrokerUnavailable(f"the producer's queue to {self.settings.kafka_bootstrap} stayed "
                                                f"full for {self.collector.delivery_timeout_s:g}s") from None
                    await asyncio.sleep(0.005)
        # librdkafka fails every record by its message timeout, so this wait ends; the margin covers the report.
        try:
            await asyncio.wait_for(asyncio.shield(delivery.future), self.collector.delivery_timeout_s + 5)
        except TimeoutError:
            raise BrokerUnavailable(f"{delivery.pending} events were not acknowledged by "
                                    f"{self.settings.kafka_bootstrap} in time") from None
        if delivery.error is not None:
            raise BrokerUnavailable(f"the broker at {self.settings.kafka_bootstrap} did not take the events: "
                                    f"{delivery.error.str()}")
        self._all_down = False

    def close(self, timeout: float = 10.0) -> None:
        """Stop the polling thread, deliver what is queued (up to `timeout`; what is left fails with a purge error),
        and close the producer: left to the garbage collector, librdkafka's client outlives the collector wherever
        something still refers to it, and logs a failed connection every second once the broker is gone."""
        self._stop.set()
        self._thread.join()
        self._producer.flush(timeout)
        self._producer.purge()
        self._producer.close()

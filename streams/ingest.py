"""The landing worker: Kafka -> validated Arrow batches -> Delta tables, exactly once.

One consuming loop per process, in its own consumer group (`Settings.ingest_group`); several processes share the
partitions. The loop cuts batches (by count, bytes or age, see `Settings.flush_*`) and hands each to a two-stage
pipeline, so that consuming, validating and committing overlap:

1. prepare: the batch's payloads are validated per topic, the two topics side by side, vectorized
   (`flywheel.schemas.validation`); invalid events are produced to the dead-letter topic with their reason and
   original bytes, and every delivery is confirmed (retried, else the batch fails: see `IngestWorker`; the
   dead-letter topic is at-least-once: a crash before step 2 can repeat a message there; its headers carry the
   source topic, partition and offset so readers can tell);
2. commit, in batch order: each table's rows are committed to the lake together with the next offset of every
   partition they came from (`flywheel.warehouse.lake`), which is the only offset that matters: on (re)assignment
   a partition resumes from the lowest watermark of the tables it feeds. Kafka's committed offsets are written
   afterwards, by the consuming thread, for lag monitoring only.

At most `IN_FLIGHT` batches are in the pipeline; after a failed commit no later batch commits. Nothing is
acknowledged before it is durable, and a bad event never stops the lane. A lake whose filesystem refuses writes
(full, read-only) does not stop the worker either: it holds its offsets, says so, and retries (see `IngestWorker`).
A batch whose offsets jump (a broker that skipped data: `flywheel.streams.continuity`) lands nothing; its
partitions are read again from the lake's watermarks.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import compress
from typing import Callable, TypeVar, cast

import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.logs import coords
from flywheel.schemas.arrow import SCHEMAS, landed_rows
from flywheel.schemas.contract import FEEDBACK, INFERENCE, EventType
from flywheel.schemas.validation import BatchValidator
from flywheel.streams.continuity import GAP_RETRY_S, GAP_SETTLE_S, Continuity, OffsetGap
from flywheel.streams.metrics import IngestMetrics
from flywheel.streams.security import librdkafka_config
from flywheel.streams.topics import admin, describe_topic_ids, ensure_topics, topic_ids
from flywheel.warehouse.lake import CommitResult, Lake, LakeUnwritable, TopicPartition as TP

log = logging.getLogger("flywheel.ingest")
_T = TypeVar("_T")

WATERMARK_INTERVAL_S = 10.0
"""A table that received no rows still records how far the batches went, at most this often, so that a restart
does not re-read a long stretch on its behalf."""


IN_FLIGHT = 2
"""Batches being landed at once (one validating, one committing) while the next is consumed."""

SWITCH_INTERVAL_S = 0.001
"""How long a landing thread waits for the GIL before it asks the consuming thread to let go (Python's default:
5 ms). The landing threads take the GIL back after every Arrow, DuckDB or Parquet call, a hundred times per batch
and more, and while the consuming thread was filling the next batch each of those waited up to 5 ms (bench: 8%
more events/s at 1 ms)."""

TOPIC_ID_INTERVAL_S = 5.0
"""How often the worker asks the broker for its topics' ids (besides on every assignment and out-of-range event):
a topic deleted and created again, or an in-memory broker restarted, starts its offsets from 0 under a new id."""

BROKER_DOWN_LOG_S = 5.0
"""While the broker cannot be reached, the worker says so this often."""

DRAIN_LOG_S = 5.0
"""With --until-idle, how often an idle worker says why it is not done yet."""

DEAD_LETTER_ATTEMPTS = 3
"""Times a dead letter is produced before its batch fails."""

DEAD_LETTER_TIMEOUT_S = 10.0
"""How long one attempt waits for the dead-letter topic to acknowledge (librdkafka's message.timeout.ms)."""

LAKE_RETRY_S = 1.0
"""After the lake's filesystem refused a commit, the first retry waits this long; each failed one doubles it."""

LAKE_RETRY_MAX_S = 30.0
"""The longest wait between two retries of a lake that refuses writes."""

JOIN_GRACE_S = 30.0
"""With --until-idle, how long a worker that was given no partition yet waits before idle time starts counting."""


@dataclass
class IngestStats:
    consumed: int = 0
    replayed: int = 0
    """Rows dropped at commit because their table already held them (same topic id, offset below its watermark)."""
    dead_letter_failures: int = 0
    """Dead letters the dead-letter topic did not acknowledge (each attempt counts)."""
    gaps_reread: int = 0
    """Batches dropped and read again because the broker skipped offsets (see flywheel.streams.continuity)."""
    gaps_accepted: int = 0
    """Jumps in a partition's offsets that stayed after re-reading: offsets without data (transaction markers)."""
    consumed_bytes: int = 0
    landed: dict[str, int] = field(default_factory=lambda: {"inferences": 0, "feedback": 0, "quarantine": 0})
    flushes: int = 0
    started: float = field(default_factory=time.monotonic)
    first_event_at: float | None = None
    """Monotonic time the first event arrived (after the group join)."""
    lake_faults: int = 0
    """Commits the lake's filesystem refused (full, read-only, permission) and failed probes after them."""
    lake_fault: str | None = None
    """While the lake refuses writes: why, with its path and the fix; None otherwise."""
    last_commit_at: float | None = None
    """Monotonic time the last rows became durable (a commit that only moves watermarks does not count)."""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("consume", "idle", "validate", "arrange", "dead_letter", "commit"), 0.0))
    """Where the time went, per stage of the loop (`idle`: polls that returned nothing). The two topics are
    validated, and the tables committed, side by side: those stages add up the time of each, which can exceed
    the wall time they took."""

    @property
    def quarantined(self) -> int:
        return self.landed["quarantine"]


@dataclass
class _Batch:
    """A validated batch waiting to be committed: rows and next offsets per table."""

    rows: dict[str, list[pa.Table]]
    offsets: dict[str, dict[TP, int]]
    topic_ids: dict[str, str]
    """The topic ids the messages were read under: a batch read before the worker noticed a topic's new
    incarnation commits under the old id."""


@dataclass
class _Route:
    event_type: EventType
    table: str
    validator: BatchValidator


class IngestWorker:
    """The landing loop of one process (see the module docstring for the pipeline).

    Guarantees: a message's row lands at most once per topic id (replays are dropped at commit, counted in
    `IngestStats.replayed` and logged with topic[partition] and offsets), and no message is skipped: a partition
    resumes from the lake's watermark under the topic's current id, and when the broker answers that position is out
    of range the worker re-reads the topic's id: a new id restarts the partition from its beginning; the same id
    never does (the broker misreported its end: the worker resumes at the end it reports, re-reading replays).
    Topic ids are re-read on every assignment, on every out-of-range answer and every `TOPIC_ID_INTERVAL_S`; what
    was read under the old id commits under it first.

    Offsets a broker skipped (with `Settings.rereads_gaps`, on by default with the embedded broker): a batch whose
    offsets jump past the next one expected for a partition commits nothing, nor does any batch after it; every
    assigned partition is read again from the lake's watermarks, and a jump still there after
    `continuity.GAP_SETTLE_S` is taken for offsets without data, counted in `IngestStats.gaps_accepted` and logged.

    Dead letters: every invalid message is produced to the dead-letter topic before its batch commits, with its
    source topic, partition and offset in its headers (at-least-once: a crash before the commit repeats it). A dead
    letter the topic does not acknowledge is counted, logged with those coordinates and produced again, up to
    `DEAD_LETTER_ATTEMPTS` times; then the batch fails and the offsets do not advance, unless the message is a replay
    of one the quarantine table already holds (its dead letter was produced when it first landed). The quarantine
    row itself lands in the same commit as the watermarks, so it is never lost; the failure keeps the dead-letter
    topic complete for those who consume it.

    A full or read-only lake (`LakeUnwritable`) holds the worker, it does not end it: the worker stops consuming
    (pauses its partitions, staying in the group), drops what it buffered and had in flight (nothing of it is past
    the lake's watermarks), logs the error with the table's path and the fix, sets `flywheel_ingest_lake_unwritable`
    and `IngestStats.lake_fault`, and probes the lake after `LAKE_RETRY_S`, doubling up to `LAKE_RETRY_MAX_S`. Once
    a probe writes, it resumes every partition from the lake's watermarks, so the rows it dropped are read again and
    land exactly once; dead letters of those rows are produced again (at-least-once, as after a crash).
    """

    def __init__(self, settings: Settings, lake: Lake | None = None, *,
                 consumer_config: dict[str, object] | None = None,
                 dead_letter_config: dict[str, object] | None = None,
                 on_flush: Callable[[IngestStats], None] | None = None,
                 metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.lake = lake or Lake(settings.lake_location, settings.lake_codec)
        self.stats = IngestStats()
        self.metrics = metrics or IngestMetrics()
        self.on_flush = on_flush
        self._stop = threading.Event()
        self._routes = {
            settings.inference_topic: _Route(INFERENCE, "inferences",
                                             BatchValidator(INFERENCE, settings.max_event_bytes)),
            settings.feedback_topic: _Route(FEEDBACK, "feedback", BatchValidator(FEEDBACK, settings.max_event_bytes)),
        }
        self._consumer_config: dict[str, object] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            **librdkafka_config(settings),
            "group.id": settings.ingest_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # An out-of-range position comes back as an event the worker handles (see `_out_of_range`), never as a
            # silent jump to the beginning (every row a replay) or to the end (rows skipped).
            "auto.offset.reset": "error",
            "error_cb": self._on_kafka_error,
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "heartbeat.interval.ms": 1_000,
            "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
            # Bound what librdkafka prefetches (KB), so memory stays flat however large the backlog; when that
            # bound is hit, it postpones fetching the partition by fetch.queue.backoff.ms (1 s by default), which
            # left the worker idle for most of a second now and then (bench: 73k instead of 113k events/s).
            "queued.max.messages.kbytes": 65_536,
            "fetch.queue.backoff.ms": 20,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            **(consumer_config or {}),
        }
        self._buffer: list[Message] = []
        self._buffer_bytes = 0
        self._oldest: float | None = None
        self._last_watermark_commit: dict[str, float] = {}
        self._pending_offsets: dict[TP, int] = {}
        self._consumer: Consumer | None = None
        self._assigned = False
        self._broken = False
        self._topic_ids: dict[str, str] = {}
        self._admin: AdminClient | None = None
        self._ids_checked = 0.0
        self._broker_error: tuple[float, str] | None = None
        """(since, last error) while librdkafka reports that the broker cannot be reached."""
        self._broker_logged = 0.0
        self._fault: LakeUnwritable | None = None
        """The lake's last refusal, until a commit succeeds after it."""
        self._held = False
        """Consuming is paused because of `_fault`, until a probe writes."""
        self._retry_at = 0.0
        self._retry_delay = LAKE_RETRY_S
        self._out_of_range: set[TP] = set()
        self._continuity = Continuity() if settings.rereads_gaps else None
        self._drain_checked = self._drain_logged = 0.0
        self._dead_letter_config = dead_letter_config or {}
        self._dlq: Producer | None = None
        # Each topic has its own validator (and DuckDB connection) and each table its own commit lock, so the two
        # topics are validated, and the tables committed, side by side: DuckDB and delta-rs release the GIL, and a
        # flush otherwise leaves one of the two cores idle.
        self._pool: ThreadPoolExecutor | None = None
        # Landing runs beside consuming, in two stages of one thread each: a batch is validated (and its dead
        # letters sent) while the batch before it is committed. Commits stay in batch order, and at most
        # IN_FLIGHT batches are being landed, so memory stays bounded.
        self._stages: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._in_flight: deque[Future[None]] = deque()
        self._preparing: Future[_Batch] | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish: it flushes what it holds, then returns."""
        self._stop.set()

    def run(self, until_idle: float | None = None, install_signal_handlers: bool = False) -> IngestStats:
        """Land events until stopped, or until `until_idle` seconds pass without a new event."""
        ensure_topics(self.settings)
        _use_jemalloc()
        self._topic_ids = topic_ids(self.settings, list(self._routes))
        self._admin = admin(self.settings)
        self._ids_checked = time.monotonic()
        self.lake.ensure()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        for route in self._routes.values():
            # Plan the validating queries and load the JSON reader now, not while the first events wait.
            route.validator.validate([b"{}"])
        self._dlq = Producer({"bootstrap.servers": self.settings.kafka_bootstrap,
                              **librdkafka_config(self.settings), "enable.idempotence": True,
                              "linger.ms": 5, "compression.type": "zstd", "message.max.bytes": 64 * 1024 * 1024,
                              "message.timeout.ms": int(DEAD_LETTER_TIMEOUT_S * 1000), **self._dead_letter_config})
        consumer = self._consumer = Consumer(self._consumer_config)
        self._pool = ThreadPoolExecutor(len(SCHEMAS) + len(self._routes), thread_name_prefix="flywheel-land")
        self._stages = (ThreadPoolExecutor(1, thread_name_prefix="flywheel-prepare"),
                        ThreadPoolExecutor(1, thread_name_prefix="flywheel-commit"))
        consumer.subscribe(list(self._routes), on_assign=self._on_assign, on_revoke=self._on_revoke)
        started = time.monotonic()
        last_event: float | None = None
        gc_threshold = gc.get_threshold()
        # Every consumed message is a tracked Python object: with the default threshold the cyclic collector ran
        # every 700 of them, and its full passes walked every object imported at startup. Those are frozen out of
        # its way, and it runs every 50k allocations instead (measured: consuming took a quarter less time).
        gc.freeze()
        gc.set_threshold(50_000, gc_threshold[1], gc_threshold[2])
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                msgs = consumer.consume(num_messages=10_000, timeout=0.1)
                now = time.monotonic()
                self.stats.seconds["consume" if msgs else "idle"] += now - t0
                if msgs and self.stats.first_event_at is None:
                    self.stats.first_event_at = now
                # While this thread runs Python, the landing threads wait for the GIL: no per-message loop here.
                if msgs:
                    self._broker_error = None
                if self._held:
                    msgs = []  # fetched before the pause, or by an assignment since: read again on resuming
                elif any(map(Message.error, msgs)):
                    msgs = _without_errors(msgs, self._out_of_range)
                self._buffer += msgs
                self._buffer_bytes += sum(map(len, filter(None, map(Message.value, msgs))))
                if msgs and self._oldest is None:
                    self._oldest = now
                if msgs or (last_event is None and self._assigned):
                    # Idle time counts from the first assignment: joining the group can take seconds.
                    last_event = now
                try:
                    while self._in_flight and self._in_flight[0].done():
                        self._collect()  # a failed landing stops the loop here (but for a lake that refuses writes)
                    if self._held:
                        if now >= self._retry_at:
                            self._retry_lake(now)
                        continue
                    if self._out_of_range or now - self._ids_checked >= TOPIC_ID_INTERVAL_S:
                        self._check_topics(now)
                    self._log_broker_down(now)
                    if self._due(now):
                        self._hand_off()
                    elif self._buffer == [] and not self._in_flight and self._watermarks_due(now):
                        self.flush(force_watermarks=True)
                    if until_idle is not None and not self._buffer and not self._in_flight:
                        since = last_event if last_event is not None else started + JOIN_GRACE_S
                        if now - since >= until_idle and self._drained(now, since + until_idle):
                            break
                except LakeUnwritable as exc:
                    self._hold(exc)
                except OffsetGap as exc:
                    self._reread(exc)
            if self._held:
                log.warning("stopping while the lake refuses writes (%s): nothing was landed since; the next worker "
                            "resumes where the lake is", self._fault)
            else:
                try:
                    self.flush(force_watermarks=True)
                except OffsetGap as exc:
                    log.warning("stopping with the last batch not landed (%s): the next worker reads it again from "
                                "the lake's watermarks", exc)
        finally:
            try:
                for landing in self._in_flight:
                    landing.exception()  # let batches in flight finish: after a failure they commit nothing
                consumer.close()
            finally:
                gc.set_threshold(*gc_threshold)
                gc.unfreeze()
                sys.setswitchinterval(switch_interval)
                self._consumer = None
                self._in_flight.clear()
                for pool in (*(self._stages or ()), self._pool):
                    if pool is not None:
                        pool.shutdown()
                self._stages = self._pool = None
                if self._dlq is not None:
                    if not self._broken:
                        self._dlq.flush(10)
                    # Closed with the run: kept alive by a worker object, librdkafka's client would log a failed
                    # connection every second once the broker is gone. Nothing purged was acknowledged, so no
                    # offset past it was committed: the next run dead-letters it again.
                    self._dlq.purge()
                    self._dlq.close()
                self._dlq = None
        return self.stats

    def _due(self, now: float) -> bool:
        s = self.settings
        if not self._buffer:
            return False
        if len(self._buffer) >= s.flush_max_events or self._buffer_bytes >= s.flush_max_bytes \
                or (self._oldest is not None and now - self._oldest >= s.flush_interval_s):
            return True
        # Validating is the slowest stage: when it has nothing to do, a batch an eighth full goes at once rather
        # than leave it waiting for the consumer to fill a whole one (as at the start, or after a pause).
        return (self._preparing is None or self._preparing.done()) and (
            len(self._buffer) >= s.flush_max_events // 8 or self._buffer_bytes >= s.flush_max_bytes // 8)

    def _watermarks_due(self, now: float) -> bool:
        return bool(self._pending_offsets) and any(
            now - self._last_watermark_commit.get(t, 0.0) >= WATERMARK_INTERVAL_S for t in SCHEMAS)

    def _drained(self, now: float, idle_at: float) -> bool:
        """With --until-idle: is every partition of the topics landed up to the end the broker reports? Logs why
        not every `DRAIN_LOG_S`, and raises DrainIncomplete once idle for `Settings.drain_timeout_s` beyond
        `idle_at` (a partition another worker holds, or a dead one until its session expires, is not landed)."""
        if now - self._drain_checked < 1.0:
            return False
        self._drain_checked = now
        if self._pending_offsets:
            self.flush(force_watermarks=True)  # the lake must say how far this worker went
        lag, unowned = self._lag()
        if not lag:
            log.info("drained: every partition of %s is landed up to the broker's end", list(self._routes))
            return True
        waited = now - idle_at
        if waited >= self.settings.drain_timeout_s:
            raise DrainIncomplete(lag, unowned, waited)
        if now - self._drain_logged >= DRAIN_LOG_S:
            self._drain_logged = now
            log.warning("idle but not drained: %s; waiting up to %.0f s more", _describe_lag(lag, unowned),
                        self.settings.drain_timeout_s - waited)
        return False

    def _lag(self) -> tuple[dict[TP, int], list[TP]]:
        """Per partition of the topics not landed up to the broker's end: how many offsets are missing; and which of
        those this worker does not own. A partition whose offsets cannot be read counts as lagging by -1. An owned
        partition is landed up to the consumer's position too: this runs with nothing buffered or in flight, so
        every message consumed before that position has landed, and the position moves past offsets without data
        (a transaction marker that ends the log, which the lake's watermark never passes)."""
        assert self._consumer is not None
        lag: dict[TP, int] = {}
        try:
            md = self._consumer.list_topics(timeout=2.0)
            tps = [(t, p) for t in self._routes for p in sorted(md.topics[t].partitions)]
        except Exception as exc:
            log.warning("cannot list the topics' partitions (%s)", exc)
            return {(t, -1): -1 for t in self._routes}, []
        owned = {(p.topic, p.partition) for p in self._consumer.assignment()}
        try:
            positions = {(p.topic, p.partition): p.offset
                         for p in self._consumer.position([TopicPartition(*tp) for tp in sorted(owned)])}
        except Exception:  # no position known: the lake's watermarks alone say
            positions = {}
        for tp, resume in self._resume_positions(tps).items():
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=2.0, cached=False)
            except Exception:
                lag[tp] = -1
                continue
            landed = max(resume if resume >= 0 else low, positions.get(tp, -1))
            if high > landed:
                lag[tp] = high - landed
        return lag, [tp for tp in lag if tp not in owned]

    # ------------------------------------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            if not self._broken:
                self._wait_landed()  # the watermarks read below must include the batch in flight
            # A broker that restarted re-forms the group: this is where a running worker first hears of it, and
            # the topics may have come back under new ids.
            self._refresh_topic_ids(seek=False)
        except LakeUnwritable as exc:
            self._hold(exc)
        except OffsetGap:  # nothing of that batch landed: reading from the lake's watermarks below re-reads it
            self._drop_skipped()
        tps: list[TP] = [(p.topic, p.partition) for p in partitions]
        resume = self._resume_positions(tps)
        for p, tp in zip(partitions, tps):
            p.offset = resume[tp]
            self._expect(tp, resume[tp])
        log.info("assigned %s, resuming at %s (topic ids %s)", tps, [p.offset for p in partitions], self._topic_ids)
        self._assigned = True
        self._broker_error = None
        consumer.assign(partitions)
        if self._held:
            consumer.pause(partitions)

    def _resume_positions(self, tps: list[TP]) -> dict[TP, int]:
        """Where each partition resumes under the current topic ids: where the furthest-behind table it feeds
        stands (rows the other table already has are dropped at commit); a table that never landed it under this
        id means from the beginning."""
        marks = {table: self.lake.watermarks(table, tps, self._topic_ids) for table in SCHEMAS}
        out = {}
        for tp in tps:
            feeds = [marks[self._routes[tp[0]].table][tp], marks["quarantine"][tp]]
            out[tp] = OFFSET_BEGINNING if None in feeds else min(m for m in feeds if m is not None)
        return out

    # ------------------------------------------------------------------------------------------------ topic ids

    def _refresh_topic_ids(self, seek: bool = True) -> set[str]:
        """Re-read the topics' ids; for a topic whose id changed, land what was read under the old id first, then
        (with `seek`) restart its assigned partitions from the lake's watermarks under the new one. Returns the
        topics whose id changed. A broker that does not answer changes nothing."""
        self._ids_checked = time.monotonic()
        assert self._admin is not None
        found = describe_topic_ids(self._admin, list(self._routes), timeout=2.0)
        changed = {t for t, tid in found.items() if isinstance(tid, str) and tid != self._topic_ids.get(t)}
        missing = [t for t, tid in found.items() if isinstance(tid, Exception)]
        if missing:
            log.debug("topic ids of %s unknown for now: %s", missing, [str(found[t]) for t in missing])
        else:
            self._broker_error = None
        if not changed:
            return changed
        if self._buffer and not self._broken:
            self._hand_off()  # the buffer was read under the old ids: the batch carries them
        if not self._broken:
            self._wait_landed()
        for t in changed:
            log.warning("topic %s has a new id %s (was %s): the broker restarted or the topic was created again; "
                        "its partitions restart under the new id", t, found[t], self._topic_ids.get(t))
            self._topic_ids[t] = str(found[t])
            for tp in [tp for tp in self._pending_offsets if tp[0] == t]:
                del self._pending_offsets[tp]  # offsets of the old incarnation mean nothing under the new id
        if seek and self._consumer is not None:
            tps = [(p.topic, p.partition) for p in self._consumer.assignment() if p.topic in changed]
            for tp, off in self._resume_positions(tps).items():
                self._seek(tp, off)
        return changed

    def _check_topics(self, now: float) -> None:
        """Periodically, and after out-of-range events: notice new topic ids, and resume out-of-range partitions
        of an unchanged topic without ever going back to the beginning."""
        pending, self._out_of_range = self._out_of_range, set()
        changed = self._refresh_topic_ids()
        assert self._consumer is not None
        for tp in sorted(pending):
            if tp[0] in changed:
                continue  # restarted under the new id above
            resume = self._resume_positions([tp])[tp]
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=2.0, cached=False)
            except Exception as exc:
                log.warning("%s[%s] is out of range and its offsets cannot be read (%s); retrying", *tp, exc)
                self._out_of_range.add(tp)
                continue
            if resume == OFFSET_BEGINNING:
                target = OFFSET_BEGINNING
            elif resume > high:
                # Same topic id, so the rows up to `resume` are landed: the broker misreports its end (Tansu after
                # a crash). Read on from the end it reports; whatever it returns below `resume` is a replay.
                target = high
            elif resume < low:
                log.error("%s[%s]: offsets %d..%d are gone from the broker before they were landed; resuming at %d",
                          tp[0], tp[1], resume, low - 1, low, extra=coords(*tp, low, offsets=f"{resume}..{low - 1}"))
                target = low
            else:
                target = resume
            log.warning("%s[%s]: the broker reports offsets %d..%d, the lake is at %s; resuming at %s "
                        "(same topic id %s: never from the beginning)", tp[0], tp[1], low, high, resume, target,
                        self._topic_ids.get(tp[0]), extra=coords(*tp, target, topic_id=self._topic_ids.get(tp[0])))
            self._seek(tp, target)

    def _expect(self, tp: TP, offset: int) -> None:
        """Tell the continuity check that `tp` is read from `offset` on (the log's start for OFFSET_BEGINNING)."""
        if self._continuity is None:
            return
        if offset == OFFSET_BEGINNING and self._consumer is not None:
            try:
                offset = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=2.0, cached=False)[0]
            except Exception:  # unknown: the partition's next batch sets it
                offset = -1
        self._continuity.expect(tp, offset)

    def _seek(self, tp: TP, offset: int) -> None:
        assert self._consumer is not None
        if self._continuity is not None:
            self._wait_landed()  # no batch being prepared may move the expected offset past this seek
            self._expect(tp, offset)
        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], offset))
        except Exception as exc:  # e.g. not fetching yet: try again on the next check
            log.warning("cannot move %s[%s] to offset %s yet (%s); retrying", tp[0], tp[1], offset, exc)
            self._out_of_range.add(tp)

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE,
                          KafkaError._TIMED_OUT):
            since = self._broker_error[0] if self._broker_error else time.monotonic()
            self._broker_error = (since, err.str())
        else:
            log.warning("kafka: %s", err.str())

    def _log_broker_down(self, now: float) -> None:
        if self._broker_error is None or now - self._broker_logged < BROKER_DOWN_LOG_S:
            return
        self._broker_logged = now
        since, last = self._broker_error
        log.warning("cannot reach the Kafka broker at %s for %.0f s (%s); waiting for it, landing nothing meanwhile",
                    self.settings.kafka_bootstrap, now - since, last)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Land what we hold before another worker takes the partitions over (unless landing failed: then the
        # lake is left exactly as the last successful commit made it, for the next owner to resume from).
        if not self._broken:
            try:
                self.flush(force_watermarks=True)
            except LakeUnwritable as exc:  # the next owner resumes where the lake is
                self._hold(exc)
            except OffsetGap:  # the next owner reads the skipped batch from the lake's watermarks
                self._drop_skipped()
        for p in partitions:
            self._pending_offsets.pop((p.topic, p.partition), None)
            try:  # another worker owns its lag now
                self.metrics.lag.remove(p.topic, str(p.partition))
            except KeyError:
                pass
        consumer.unassign()

    # ------------------------------------------------------------------------------------------------ landing

    def flush(self, force_watermarks: bool = False) -> None:
        """Land the buffered batch and wait until it is landed: dead letters first, then one commit per table
        with its watermarks."""
        self._hand_off(force_watermarks)
        self._wait_landed()

    def _hand_off(self, force_watermarks: bool = False) -> None:
        """Start landing the buffered batch (waiting, if IN_FLIGHT batches are being landed, for the oldest)."""
        while len(self._in_flight) >= IN_FLIGHT:
            self._collect()
        if self._broken:
            self._wait_landed()  # raises the failure that broke it, if a batch in flight holds it
            raise FlywheelError("this worker stopped landing after a failed commit; start a new one, it resumes "
                                "where the lake is")
        msgs, nbytes = self._buffer, self._buffer_bytes
        self._buffer, self._buffer_bytes, self._oldest = [], 0, None
        if self._stages is None:  # outside run(): in this thread
            prepared = _done(self._prepare, msgs, dict(self._topic_ids))
            self._in_flight.append(_done(self._commit_batch, prepared, len(msgs), nbytes, force_watermarks))
        else:
            prepare, commit = self._stages
            prepared = self._preparing = prepare.submit(self._prepare, msgs, dict(self._topic_ids))
            self._in_flight.append(commit.submit(self._commit_batch, prepared, len(msgs), nbytes, force_watermarks))

    def _collect(self) -> None:
        """Wait for the oldest batch in flight to land (raising its failure), then tell Kafka."""
        self._in_flight.popleft().result()
        if self._fault is not None:
            self._clear_fault()
        if self._preparing is not None and self._preparing.done():
            self._preparing = None  # its future holds the whole prepared batch: let it go once landed
        # On this thread: the consumer must not be called from two threads at once.
        self._commit_kafka_offsets()
        self._observe_lag()

    def _observe_lag(self) -> None:
        """Set the lag gauge of every partition landed so far, from the end the broker reported in its last fetch
        response (librdkafka's cache: no request)."""
        if self._consumer is None:
            return
        for (topic, partition), landed in self._pending_offsets.items():
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception:  # not fetched yet, or no longer assigned: nothing to say
                continue
            if high >= 0:
                self.metrics.lag.labels(topic, str(partition)).set(max(high - landed, 0))

    # ------------------------------------------------------------------------------------------ lake faults

    def _drop_in_flight(self) -> None:
        """After a batch failed to land: let the batches in flight finish (after the failure none commits), then
        drop them and the buffer. None of it is past the lake's watermarks, where this worker reads on."""
        for landing in self._in_flight:
            landing.exception()
        self._in_flight.clear()
        self._preparing = None
        self._buffer, self._buffer_bytes, self._oldest = [], 0, None

    def _drop_skipped(self) -> None:
        """After an `OffsetGap`: drop the batches in flight and the buffer, and land again. The gap was found in
        preparing, before anything of its batch committed, and the batches before it landed (they are collected in
        order): the lake is exactly as its last commit left it, so this worker is not broken."""
        self._drop_in_flight()
        self._broken = False

    def _reread(self, gap: OffsetGap) -> None:
        """A batch skipped offsets (see flywheel.streams.continuity): nothing of it, or after it, was committed.
        Read every assigned partition again from the lake's watermarks, after `GAP_RETRY_S`. On the consuming
        thread."""
        self._drop_skipped()
        self.stats.gaps_reread += 1
        self.metrics.offset_gaps.labels(gap.topic, "reread").inc()
        (log.info if gap.waited else log.warning)(
            "%s; landing nothing of the batch and reading every partition again from the lake's watermarks", gap,
            extra=coords(gap.topic, gap.partition, gap.first_missing,
                         offsets=f"{gap.first_missing}..{gap.resumes_at - 1}"))
        time.sleep(GAP_RETRY_S)
        assert self._consumer is not None
        assignment = [(p.topic, p.partition) for p in self._consumer.assignment()]
        for tp, off in self._resume_positions(assignment).items():
            self._seek(tp, off)

    def _hold(self, exc: LakeUnwritable) -> None:
        """The lake refused a commit: pause consuming and drop what is buffered or in flight (none of it is past
        the lake's watermarks, where this worker resumes); retry after a backoff. On the consuming thread."""
        self._drop_in_flight()
        first = self._fault is None
        self._retry_delay = LAKE_RETRY_S if first else min(self._retry_delay * 2, LAKE_RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._retry_delay
        self._note_fault(exc)
        self._held = True
        if self._consumer is not None:
            self._consumer.pause(self._consumer.assignment())
        if first:
            log.error("%s; holding the offsets (nothing is lost: Kafka keeps the events) and retrying every %.0f-%.0f "
                      "s", exc, LAKE_RETRY_S, LAKE_RETRY_MAX_S, extra={"table": exc.table, "path": exc.path,
                                                                      "reason": exc.reason})

    def _note_fault(self, exc: LakeUnwritable) -> None:
        self._fault = exc
        self.stats.lake_faults += 1
        self.stats.lake_fault = str(exc)
        self.metrics.lake_unwritable.set(1)
        self.metrics.lake_write_failures.labels(exc.table, exc.reason).inc()

    def _retry_lake(self, now: float) -> None:
        """While held: probe the lake; once it takes a write, resume every partition from its watermarks."""
        assert self._consumer is not None
        refused = self.lake.unwritable()
        if refused is not None:
            self._note_fault(refused)
            self._retry_delay = min(self._retry_delay * 2, LAKE_RETRY_MAX_S)
            self._retry_at = now + self._retry_delay
            log.warning("%s; still holding, next try in %.0f s", refused, self._retry_delay,
                        extra={"table": refused.table, "path": refused.path, "reason": refused.reason})
            return
        assignment = self._consumer.assignment()
        self._broken = self._held = False
        for tp, off in self._resume_positions([(p.topic, p.partition) for p in assignment]).items():
            self._seek(tp, off)
        self._consumer.resume(assignment)
        log.warning("the lake at %s takes writes again: resuming %d partitions from its watermarks",
                    self.lake.root, len(assignment))

    def _clear_fault(self) -> None:
        log.warning("the lake accepts writes again after %d refused attempts: landing", self.stats.lake_faults)
        self._fault = None
        self.stats.lake_fault = None
        self.metrics.lake_unwritable.set(0)

    def _wait_landed(self) -> None:
        while self._in_flight:
            self._collect()

    def _prepare(self, msgs: list[Message], ids: dict[str, str]) -> _Batch:
        """First stage: validate each topic's messages (side by side), arrange the rows per table, and send the
        invalid ones to the dead-letter topic."""
        now_wall = datetime.now(timezone.utc)
        batch = _Batch({t: [] for t in SCHEMAS}, {t: {} for t in SCHEMAS}, ids)
        dead: list[tuple[Message, str]] = []
        topics = cast(list[str], list(map(Message.topic, msgs)))  # a consumed message has a topic
        names = set(topics)
        by_topic = {t: msgs if len(names) == 1 else list(compress(msgs, map(t.__eq__, topics))) for t in names}
        landing = {topic: self._submit(self._land_topic, self._routes[topic], tmsgs, now_wall, ids.get(topic))
                   for topic, tmsgs in by_topic.items()}
        for topic, tmsgs in by_topic.items():
            route = self._routes[topic]
            valid, invalid, bad_idx, next_offsets, seconds = landing[topic].result()
            for stage, spent in seconds.items():
                self.stats.seconds[stage] += spent
            batch.rows[route.table].append(valid)
            batch.rows["quarantine"].append(invalid)
            batch.offsets[route.table].update(next_offsets)
            batch.offsets["quarantine"].update(next_offsets)
            dead += [(tmsgs[i], r) for i, r in zip(bad_idx, invalid.column("reason").to_pylist())]
        t0 = time.monotonic()
        if dead:
            self._dead_letter(dead, ids)
        self.stats.seconds["dead_letter"] += time.monotonic() - t0
        return batch

    def _commit_batch(self, prepared: Future[_Batch], n: int, nbytes: int, force_watermarks: bool) -> None:
        """Second stage: one commit per table with its watermarks, in batch order; after a failure, none."""
        if self._broken:
            raise FlywheelError("an earlier batch failed to land; this one was not committed")
        try:
            self._commit_tables(prepared.result(), force_watermarks)
        except BaseException:
            # After a partial failure nothing more may be committed from this worker's state (a watermark-only
            # commit could claim rows that never landed): a new worker resumes from the lake instead.
            self._broken = True
            raise
        self.stats.consumed += n
        self.stats.consumed_bytes += nbytes
        self.stats.flushes += 1
        if n:
            m = self.metrics
            m.consumed.inc(n)
            m.consumed_bytes.inc(nbytes)
            m.batches.inc()
            m.batch_events.observe(n)
            m.batch_bytes.observe(nbytes)
        if n and self.on_flush:
            self.on_flush(self.stats)

    def _commit_tables(self, batch: _Batch, force_watermarks: bool) -> None:
        now = time.monotonic()
        commits: dict[str, Future[tuple[CommitResult, float]]] = {}
        for table in SCHEMAS:
            parts = batch.rows[table]
            rows = pa.concat_tables(parts) if parts else SCHEMAS[table].empty_table()
            marks = dict(batch.offsets[table])
            stale = force_watermarks or now - self._last_watermark_commit.get(table, 0.0) >= WATERMARK_INTERVAL_S
            if rows.num_rows == 0 and not stale:
                continue
            if stale:  # also record partitions this table has not heard from lately (landed by earlier flushes)
                for tp, off in self._pending_offsets.items():
                    if self._feeds(table, tp[0]):
                        marks.setdefault(tp, off)
            if rows.num_rows == 0 and not marks:
                continue
            commits[table] = self._submit(self._commit, table, rows, marks, batch.topic_ids)
        failures = []
        for table, commit in commits.items():
            try:
                result, spent = commit.result()
            except BaseException as exc:  # wait for every commit before failing: none may still be running
                failures.append(exc)
                continue
            landed = result.rows
            for (topic, partition), (n, low, high) in result.replayed.items():
                self.stats.replayed += n
                self.metrics.replays.labels(topic, table).inc(n)
                log.warning("dropped %d rows of %s[%s] offsets %d..%d as replays: table %s already holds them "
                            "(topic id %s)", n, topic, partition, low, high, table, batch.topic_ids.get(topic),
                            extra=coords(topic, partition, low, offsets=f"{low}..{high}", table=table, count=n,
                                         topic_id=batch.topic_ids.get(topic)))
            self.stats.seconds["commit"] += spent
            self.metrics.commit_seconds.labels(table).observe(spent)
            if landed:
                self.stats.last_commit_at = time.monotonic()
                self.metrics.last_landed.set_to_current_time()
            self._last_watermark_commit[table] = now
            self.stats.landed[table] += landed
            (self.metrics.quarantined if table == "quarantine" else self.metrics.landed.labels(table)).inc(landed)
        if failures:  # an error other than a refusing filesystem ends the worker: it is the one to raise
            raise next((f for f in failures if not isinstance(f, LakeUnwritable)), failures[0])
        # Only now is this batch landed in every table it feeds.
        for table in SCHEMAS:
            self._pending_offsets.update(batch.offsets[table])

    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        return self._pool.submit(fn, *args) if self._pool is not None else _done(fn, *args)

    def _commit(self, table: str, rows: pa.Table, marks: dict[TP, int], ids: dict[str, str]
                ) -> tuple[CommitResult, float]:
        t0 = time.monotonic()
        result = self.lake.commit(table, rows, marks, ids)
        return result, time.monotonic() - t0

    def _feeds(self, table: str, topic: str) -> bool:
        return table == "quarantine" or self._routes[topic].table == table

    def _land_topic(self, route: _Route, msgs: list[Message], now: datetime, topic_id: str | None
                    ) -> tuple[pa.Table, pa.Table, list[int], dict[TP, int], dict[str, float]]:
        """(valid rows, quarantined rows, indices of the invalid messages, next offsets, seconds per stage)."""
        start = time.monotonic()
        topic = cast(str, msgs[0].topic())
        values = list(map(Message.value, msgs))
        partitions = pa.array(np.fromiter(map(Message.partition, msgs), np.int32, len(msgs)))
        offsets = pa.array(np.fromiter(map(Message.offset, msgs), np.int64, len(msgs)))
        if self._continuity is not None:
            for tp, first, resumes in self._continuity.check(topic, partitions, offsets):
                self.stats.gaps_accepted += 1
                self.metrics.offset_gaps.labels(topic, "accepted").inc()
                log.warning("%s[%s]: offsets %d..%d never came back after re-reading for %.0f s: taken for offsets "
                            "without data (transaction markers, compaction)", tp[0], tp[1], first, resumes - 1,
                            GAP_SETTLE_S, extra=coords(tp[0], tp[1], first, offsets=f"{first}..{resumes - 1}"))
        t0 = time.monotonic()
        typed, reasons = route.validator.validate(values)
        t1 = time.monotonic()
        ingested = pa.scalar(now, pa.timestamp("us", tz="UTC"))
        bad_idx = [i for i, r in enumerate(reasons) if r is not None]
        valid, valid_partitions, valid_offsets = typed, partitions, offsets
        if bad_idx:  # filtering copies every column, the long texts too: only when something is to be left out
            ok = pa.array([r is None for r in reasons], pa.bool_())
            valid, valid_partitions, valid_offsets = typed.filter(ok), partitions.filter(ok), offsets.filter(ok)
        if valid.num_rows:
            valid = landed_rows(route.table, valid, topic=topic, partitions=valid_partitions, offsets=valid_offsets,
                                ingested_at=now, topic_id=topic_id)
        else:
            valid = SCHEMAS[route.table].empty_table()
        if bad_idx:
            idx = pa.array(bad_idx, pa.int64())
            ids = typed[route.event_type.id_field].take(idx)
            invalid = pa.table({
                "event_type": pa.array([route.event_type.name] * len(bad_idx), pa.string()),
                "reason": pa.array([reasons[i] for i in bad_idx], pa.string()),
                "event_id": ids.cast(pa.string()),
                "payload": pa.array([values[i] for i in bad_idx], pa.binary()),
                "payload_bytes": pa.array([len(values[i] or b"") for i in bad_idx], pa.int64()),
                "key": pa.array([msgs[i].key() for i in bad_idx], pa.binary()),
                "kafka_timestamp": pa.array([_kafka_ts(msgs[i]) for i in bad_idx], pa.timestamp("us", tz="UTC")),
                "quarantine_date": pa.array([now.date()] * len(bad_idx), pa.date32()),
                "_topic": pa.array([topic] * len(bad_idx), pa.string()),
                "_partition": partitions.take(idx),
                "_offset": offsets.take(idx),
                "_ingested_at": pa.array([now] * len(bad_idx), ingested.type),
                "_topic_id": pa.array([topic_id] * len(bad_idx), pa.string()),
            }, schema=SCHEMAS["quarantine"])
        else:
            invalid = SCHEMAS["quarantine"].empty_table()
        # The next offset to read, per partition: one past the highest offset seen.
        highest = pa.table({"p": partitions, "o": offsets}).group_by("p").aggregate([("o", "max")])
        next_offsets: dict[TP, int] = {(topic, p): o + 1 for p, o in zip(highest["p"].to_pylist(),
                                                                          highest["o_max"].to_pylist())}
        seconds = {"validate": t1 - t0, "arrange": time.monotonic() - start - (t1 - t0)}
        return valid, invalid, bad_idx, next_offsets, seconds

    def _dead_letter(self, dead: list[tuple[Message, str]], ids: dict[str, str]) -> None:
        """Produce the dead letters and wait for every acknowledgement; retry the unacknowledged ones, then fail
        (see the class docstring) unless each remaining one is a replay the quarantine table already holds."""
        assert self._dlq is not None
        topic = self.settings.deadletter_topic
        pending = dead
        for attempt in range(1, DEAD_LETTER_ATTEMPTS + 1):
            failed: list[tuple[Message, str]] = []
            errors: list[str] = []
            for m, reason in pending:
                headers: list[tuple[str, str | bytes | None]] = [
                           ("flywheel.reason", reason.encode()), ("flywheel.topic", _topic(m).encode()),
                           ("flywheel.partition", str(m.partition()).encode()),
                           ("flywheel.offset", str(m.offset()).encode())]

                def delivered(err: KafkaError | None, _msg: Message, source: tuple[Message, str] = (m, reason)) -> None:
                    if err is not None:  # called during this attempt's flush: these lists are this attempt's
                        failed.append(source)  # noqa: B023
                        errors.append(err.str())  # noqa: B023
                while True:
                    try:
                        self._dlq.produce(topic, value=m.value(), key=m.key(), headers=headers, on_delivery=delivered)
                        break
                    except BufferError:
                        self._dlq.poll(0.1)
            # Every message is either delivered or failed (its callback fires) within message.timeout.ms.
            remaining = self._dlq.flush(DEAD_LETTER_TIMEOUT_S + 5)
            if remaining:
                m = pending[0][0]
                raise DeadLetterFailed(topic, *_coords(m), remaining,
                                       "no acknowledgement or failure reported in time")
            if not failed:
                return
            self.stats.dead_letter_failures += len(failed)
            self.metrics.dead_letter_failures.inc(len(failed))
            for m, _ in failed[:20]:
                log.warning("dead letter for %s[%s]@%s not acknowledged by %s (attempt %d of %d): %s", m.topic(),
                            m.partition(), m.offset(), topic, attempt, DEAD_LETTER_ATTEMPTS, errors[0],
                            extra=coords(*_coords(m), deadletter_topic=topic))
            pending = failed
        marks = self.lake.watermarks("quarantine", sorted({_coords(m)[:2] for m, _ in pending}), ids)
        lost = [m for m, _ in pending if (marks[_coords(m)[:2]] or 0) <= _coords(m)[2]]
        if lost:
            raise DeadLetterFailed(topic, *_coords(lost[0]), len(lost), errors[0])
        log.warning("%d dead letters were not produced again; the quarantine table already holds them, and their "
                    "dead letters were produced when they first landed", len(pending))

    def _commit_kafka_offsets(self) -> None:
        if self._consumer is None or not self._pending_offsets:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self._pending_offsets.items()],
                                  asynchronous=True)
        except Exception as exc:  # informational only: the lake holds the offsets that matter
            log.debug("kafka offset commit skipped: %s", exc)


def _without_errors(msgs: list[Message], out_of_range: set[TP]) -> list[Message]:
    """The messages of a consume call that are not error events. Out-of-range positions are added to
    `out_of_range` for the loop to handle; other errors are logged, but partition EOFs."""
    kept = []
    for m in msgs:
        err = m.error()
        if err is None:
            kept.append(m)
        elif err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            log.info("%s[%s]: %s", m.topic(), m.partition(), err, extra=coords(m.topic(), m.partition()))
            out_of_range.add(_coords(m)[:2])
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka error on %s[%s]: %s", m.topic(), m.partition(), err,
                        extra=coords(m.topic(), m.partition(), m.offset()))
    return kept


class DeadLetterFailed(FlywheelError):
    """A dead letter could not be produced: its batch was not committed, so its offsets did not advance. Retryable:
    a new worker resumes from the lake and produces it again once the dead-letter topic accepts writes."""

    retryable = True

    def __init__(self, deadletter_topic: str, topic: str, partition: int, offset: int, count: int, error: str) -> None:
        self.deadletter_topic, self.topic, self.partition, self.offset, self.count = (
            deadletter_topic, topic, partition, offset, count)
        super().__init__(f"{count} dead letters (first: {topic}[{partition}]@{offset}) were not acknowledged by "
                         f"{deadletter_topic} after {DEAD_LETTER_ATTEMPTS} attempts ({error}); nothing of the batch "
                         "was committed, restart the worker once the topic accepts writes")


class DrainIncomplete(FlywheelError):
    """`--until-idle` gave up: some partitions were not landed up to the broker's end within the drain timeout."""

    retryable = True

    def __init__(self, lag: dict[TP, int], unowned: list[TP], waited: float) -> None:
        self.lag, self.unowned, self.waited = lag, unowned, waited
        super().__init__(f"drain incomplete after {waited:.0f} s idle: {_describe_lag(lag, unowned)}; another "
                         "worker may still hold those partitions (a killed one until its session expires): run the "
                         "drain again, or raise FLYWHEEL_DRAIN_TIMEOUT_S")


def _describe_lag(lag: dict[TP, int], unowned: list[TP]) -> str:
    return ", ".join(f"{t}[{p}] lag {n}{' (not owned by this worker)' if (t, p) in unowned else ''}"
                     for (t, p), n in sorted(lag.items()))


def _topic(m: Message) -> str:
    return m.topic() or ""


def _coords(m: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (which has all three)."""
    return m.topic() or "", m.partition() or 0, m.offset() or 0


def _done(fn: Callable[..., _T], *args: object) -> Future[_T]:
    """`fn(*args)` run in this thread, as a completed future."""
    done: Future[_T] = Future()
    try:
        done.set_result(fn(*args))
    except BaseException as exc:
        done.set_exception(exc)
    return done


def _kafka_ts(m: Message) -> datetime | None:
    kind, ms = m.timestamp()
    return None if kind == 0 or ms < 0 else datetime.fromtimestamp(ms / 1000, timezone.utc)


def _use_jemalloc() -> None:
    """Make jemalloc Arrow's allocator in this process, where the wheel ships it.

    Landing allocates and frees hundreds of MB per flush; with pyarrow's default (mimalloc) the worker spent about
    a third of its CPU time in the kernel faulting fresh pages in, and landed about 25% fewer events per second
    (bench/ingest.py, measured on this project's 2-core machine).
    """
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):
        log.debug("pyarrow has no jemalloc here; keeping %s", pa.default_memory_pool().backend_name)

"""The SDK applications use to emit events: `log_inference(...)` and `log_feedback(...)`, on kafka-python.

Calls return at once and never wait on the network: events are validated against the contract here, at the edge
(a bad call raises `ContractViolation` naming every problem), put in a bounded in-memory buffer, and handed by a
background thread to kafka-python, which batches, compresses and delivers them with idempotence on (acks=all), so a
retry never duplicates a message.

Telemetry never takes the application down: the client starts while the broker is unreachable, buffers within
`buffer_bytes` meanwhile, delivers once the broker answers, and counts what it had to drop (`client.stats`).
A producer that kafka-python can no longer use (a fatal idempotence error: the broker lost its producer ids, as an
in-memory broker does when it restarts) is replaced by a new one, and what the old one gave up on is sent again by
it, up to `RESENDS` times per event. Every event that is not delivered is reported once, as `UndeliveredEvents`
(count, first error, topics): by `flush()`, `close()` and the end of a `with` block, which raise it, or by the exit
hook, which logs it. `strict=True`
fails fast instead: the constructor raises `BrokerUnavailable` when no broker answers, and a full buffer or an
earlier delivery failure raises on the next call.

    from flywheel.streams import FlywheelClient
    fw = FlywheelClient()                       # settings from FLYWHEEL_* variables
    iid = fw.log_inference(app="support-bot", model="gpt-4o", input="Hi", output="Hello!", latency_ms=420)
    fw.log_feedback(inference_id=iid, kind="thumbs", value=1)
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable, ConfigError, ContractViolation, FlywheelError
from flywheel.schemas.contract import FEEDBACK, INFERENCE, EventType, event_type_of
from flywheel.schemas.validation import check_event
from flywheel.streams.releases import Champion, ChampionFeed
from flywheel.streams.security import kafka_python_config

DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,  # small enough for interactive apps, large enough to batch under load
    "batch_size": 256 * 1024,
    "compression_type": "lz4",
    "max_request_size": 8 * 1024 * 1024,
    "max_block_ms": 10_000,  # only the background thread calls send(), so this never blocks the application
    "bootstrap_timeout_ms": 10_000,  # one connection attempt; the background thread retries until close()
}

log = logging.getLogger("flywheel.sdk")

RESENDS = 2
"""Times an event the producer gave up on because it had failed fatally is handed to a new producer. A batch the
old one had in flight when it failed may have been written, so a resend can repeat an event in Kafka (the lake's
views keep the first row per id); one it never sent cannot."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise ContractViolation("event", ["timestamps must be timezone-aware datetimes (e.g. tzinfo=UTC)"])
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=_jsonable,
                      allow_nan=False).encode()


@dataclass(frozen=True)
class ClientStats:
    """Counts since the client started. `sent` = `delivered` + `failed` + `dropped` + `buffered`."""

    sent: int
    """Events accepted by a `log_*`/`send*` call."""
    delivered: int
    """Acknowledged by the broker (acks=all)."""
    failed: int
    """Given up by kafka-python (after its retries) or refused by it (e.g. too large)."""
    dropped: int
    """Never handed to Kafka: over the buffer budget, or still buffered when `close()` or the exit gave up."""
    buffered: int
    """Waiting for the broker, in the SDK's buffer or in flight."""
    buffered_bytes: int


class UndeliveredEvents(BrokerUnavailable):
    """Events that were accepted and will never reach Kafka. `count` = `failed` + `dropped`; `first_error` is the
    first cause (a Kafka error, or why the SDK dropped one); `topics` the topics they were for, sorted."""

    def __init__(self, failed: int, dropped: int, first_error: BaseException, topics: tuple[str, ...],
                 bootstrap: str, when: str) -> None:
        self.failed, self.dropped, self.first_error, self.topics = failed, dropped, first_error, topics
        self.count = failed + dropped
        super().__init__(f"{self.count} events were not delivered to {bootstrap} {when} ({failed} failed, {dropped} "
                         f"dropped; topics {', '.join(topics)}): first error: {first_error}", bootstrap=bootstrap,
                         topics=topics, count=self.count)


class _Failures:
    """Undelivered events not yet reported: each is reported once, by whichever of flush/close/exit comes first."""

    def __init__(self) -> None:
        self.failed = self.dropped = 0
        self.first: BaseException | None = None
        self.topics: set[str] = set()

    def add(self, topic: str, exc: BaseException, dropped: bool) -> None:
        if dropped:
            self.dropped += 1
        else:
            self.failed += 1
        self.first = self.first or exc
        self.topics.add(topic)


class FlywheelClient:
    """A thread-safe event producer. One per process is enough.

    Settings (constructor arguments), beyond `settings` (where the broker and topics are, and how to reach it:
    TLS and SASL from `FLYWHEEL_KAFKA_SECURITY_PROTOCOL` and the rest, see `flywheel.streams.security`) and
    kafka-python's own producer options (`**producer_config`, over `DEFAULT_PRODUCER_CONFIG` and those from the
    settings):
    - `strict` (False): fail fast, as above, instead of buffering while the broker is away.
    - `buffer_bytes` (64 MiB): budget of payload bytes accepted but not yet acknowledged (buffered or in flight).
      An event that does not fit is dropped, the newest one (what is already buffered keeps its order), counted in
      `stats.dropped` and reported; in strict mode the call raises `UndeliveredEvents` instead.
    - `block_ms` (0): the longest a `log_*`/`send*` call waits for room in a full buffer before it drops (or, in
      strict mode, raises). Apart from that wait and the validation of the event, a call does no work and never
      touches the network: the application's thread is never blocked longer.
    - `close_timeout_s` (10): how long `close()` (without its own timeout), the end of a `with` block and the
      exit hook wait for buffered events before they count as dropped.
    - `champion_ttl_s` (10): how long `champion(app)` keeps its answer before it reads the releases topic again.
    """

    def __init__(self, settings: Settings | None = None, *, validate: bool = True, strict: bool = False,
                 buffer_bytes: int = 64 * 1024 * 1024, block_ms: float = 0, close_timeout_s: float = 10.0,
                 champion_ttl_s: float = 10.0, **producer_config: Any) -> None:
        self.settings = settings or Settings.from_env()
        self.validate = validate
        self._champions = ChampionFeed(self.settings, ttl_s=champion_ttl_s)
        self.strict = strict
        if buffer_bytes <= 0 or block_ms < 0 or close_timeout_s < 0:
            raise ConfigError(f"FlywheelClient: buffer_bytes must be positive ({buffer_bytes!r}), block_ms "
                              f"({block_ms!r}) and close_timeout_s ({close_timeout_s!r}) not negative")
        self.buffer_bytes, self.block_s, self.close_timeout_s = buffer_bytes, block_ms / 1000, close_timeout_s
        # TLS and SASL from the settings (FLYWHEEL_KAFKA_SECURITY_PROTOCOL, ...); explicit options win over them
        self._config = {**DEFAULT_PRODUCER_CONFIG, **kafka_python_config(self.settings), **producer_config}
        unknown = sorted(set(self._config) - set(KafkaProducer.DEFAULT_CONFIG))
        if unknown:  # kafka-python would only say so in the background thread, where nobody hears it
            raise ConfigError(f"FlywheelClient: unknown producer options {', '.join(unknown)} (see kafka-python's "
                              "KafkaProducer)")
        self._topics = {"inference": self.settings.inference_topic, "feedback": self.settings.feedback_topic}
        self._cond = threading.Condition()  # guards everything below; notified whenever a count changes
        self._queue: deque[tuple[str, bytes, bytes | None, int]] = deque()
        """(topic, payload, key, resends so far), oldest first."""
        self._resend: list[tuple[str, bytes, bytes | None, int]] = []
        """What a producer that failed fatally gave up on: sent again, first, by its replacement."""
        self._pending_bytes = 0  # queued + in flight
        self._in_flight: dict[str, int] = {}  # topic -> events handed to kafka-python, not yet settled
        self._sent = self._delivered = self._failed = self._dropped = 0
        self._unreported = _Failures()
        self._closing = self._closed = self._abandoned = False
        self._producer: KafkaProducer | None = None
        self._connect_error: BaseException | None = None
        if strict:
            self._producer = self._connect()  # raises BrokerUnavailable: today's fail-fast contract
        ref = weakref.ref(self)
        def exit_hook() -> None:
            c = ref()
            if c is not None:
                c._at_exit()

        # Before the thread starts: once connected, it registers the hook again (ahead of kafka-python's), and a
        # thread that connected before the constructor got here died of the missing attribute, sending nothing.
        self._exit_hook = exit_hook
        atexit.register(self._exit_hook)
        self._pump = threading.Thread(target=self._run, name="flywheel-sdk", daemon=True)
        self._pump.start()

    # --------------------------------------------------------------------------------------------- releases

    def champion(self, app: str) -> Champion | None:
        """The app's current champion (model, model version, prompt version), as the releases topic says, cached
        for `champion_ttl_s`: an application that asks before each call follows a promotion or a rollback within
        that time, without a redeploy. None when the app has no release yet."""
        return self._champions.champion(app)

    # --------------------------------------------------------------------------------------------- typed calls

    def log_inference(self, *, app: str, model: str, input: str | list[dict[str, Any]], output: str,
                      inference_id: str | None = None, timestamp: datetime | str | None = None,
                      tools: list[dict[str, Any]] | None = None, **optional: Any) -> str:
        """Emit an inference event; returns its `inference_id` (generated when not given). A tool-calling app
        passes its chat messages as OpenAI has them (`tool_calls`, `tool_call_id`, `name`) and the `tools` it
        offered the model, unchanged."""
        event = {"inference_id": inference_id or str(uuid.uuid4()), "timestamp": timestamp or _now(),
                 "app": app, "model": model, "input": input, "output": output,
                 **({"tools": tools} if tools is not None else {}), **optional}
        self.send(event, INFERENCE)
        return str(event["inference_id"])

    def log_feedback(self, *, inference_id: str, kind: str, value: float | None = None,
                     feedback_id: str | None = None, timestamp: datetime | str | None = None,
                     **optional: Any) -> str:
        """Emit a feedback event about `inference_id`; returns its `feedback_id`."""
        event: dict[str, Any] = {"feedback_id": feedback_id or str(uuid.uuid4()), "inference_id": inference_id,
                                 "timestamp": timestamp or _now(), "kind": kind, **optional}
        if value is not None:
            event["value"] = value
        self.send(event, FEEDBACK)
        return str(event["feedback_id"])

    # --------------------------------------------------------------------------------------------- raw events

    def send(self, event: dict[str, Any], event_type: EventType | None = None) -> None:
        """Validate and enqueue one event (a dict in wire format). Raises `ContractViolation` when invalid."""
        et = event_type or event_type_of(event)
        if et is None:
            raise ContractViolation("event", ["cannot tell whether this is an inference or a feedback event: "
                                              "add `type` or the id fields"], event)
        payload = encode(event)
        if self.validate:
            # Validate what goes on the wire (datetimes as strings, tuples as lists), exactly as the worker will.
            reasons = check_event(et, json.loads(payload))
            if len(payload) > self.settings.max_event_bytes:
                reasons.append(f"payload of {len(payload)} bytes exceeds the {self.settings.max_event_bytes}"
                               "-byte limit")
            if reasons:
                raise ContractViolation(et.name, reasons, event)
        self.send_raw(self._topics[et.name], payload, key=str(event.get("inference_id", "")).encode() or None)

    def send_raw(self, topic: str, payload: bytes, key: bytes | None = None) -> None:
        """Enqueue bytes as they are (no validation): for replaying files and for tests of bad input."""
        with self._cond:
            if self._closing:
                raise FlywheelError("this FlywheelClient is closed: create a new one to send more events")
            if self.strict:
                self._raise_unreported("since the last call")
            self._sent += 1
            size = len(payload) + len(key or b"")
            if self._pending_bytes + size > self.buffer_bytes and self.block_s > 0:
                self._cond.wait_for(lambda: self._pending_bytes + size <= self.buffer_bytes, self.block_s)
            if self._pending_bytes + size > self.buffer_bytes:
                self._dropped += 1
                self._unreported.add(topic, BufferError(
                    f"the SDK's buffer of {self.buffer_bytes} bytes was full (the broker at "
                    f"{self.settings.kafka_bootstrap} is away or slower than the application)"), dropped=True)
                if self.strict:
                    self._raise_unreported("now")
                return
            self._queue.append((topic, payload, key, 0))
            self._pending_bytes += size
            self._cond.notify_all()

    @property
    def stats(self) -> ClientStats:
        with self._cond:
            return ClientStats(self._sent, self._delivered, self._failed, self._dropped,
                               len(self._queue) + len(self._resend) + sum(self._in_flight.values()),
                               self._pending_bytes)

    # ------------------------------------------------------------------------------------- delivery (background)

    def _connect(self) -> KafkaProducer:
        try:
            return KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap.split(","), **self._config)
        except KafkaError:
            raise BrokerUnavailable(f"no Kafka broker at {self.settings.kafka_bootstrap}: start one with "
                                    "`flywheel broker start` or set FLYWHEEL_KAFKA_BOOTSTRAP",
                                    bootstrap=self.settings.kafka_bootstrap) from None

    def _run(self) -> None:
        """The one thread that talks to kafka-python: connects (retrying while the broker is away), then moves
        buffered events into the producer."""
        if not self._connect_until_closing():
            return
        # kafka-python's own exit hook closes the producer with a 1 s timeout; run ours before it.
        atexit.unregister(self._exit_hook)
        atexit.register(self._exit_hook)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._resend or self._closing)
                if self._resend:  # ahead of what was handed over later, in the order handed over
                    self._queue.extendleft(reversed(self._resend))
                    self._resend = []
                failed = self._producer if not self._closing and _fatal(self._producer) else None
                if failed is None:
                    if not self._queue:
                        return
                    topic, payload, key, resends = self._queue.popleft()
                    self._in_flight[topic] = self._in_flight.get(topic, 0) + 1
            if failed is not None:
                self._replace(failed)
                continue
            size = len(payload) + len(key or b"")
            producer = self._producer
            assert producer is not None, "events are sent only once a producer connected"
            try:
                fut = producer.send(topic, value=payload, key=key)
            except Exception as exc:  # refused at once (too large, no metadata within max_block_ms, closed)
                self._settle(topic, size, exc)
                continue
            fut.add_callback(lambda _md, t=topic, n=size: self._settle(t, n, None))
            fut.add_errback(lambda exc, t=topic, p=payload, k=key, r=resends, pr=producer:
                            self._settle(t, len(p) + len(k or b""), exc, (p, k, r) if _fatal(pr) else None))

    def _replace(self, failed: KafkaProducer) -> None:
        """Close a producer that failed fatally and connect a new one (retrying while the broker is away)."""
        log.warning("flywheel SDK: the Kafka producer failed for good (%s); starting a new one and sending again "
                    "what it gave up on", _fatal_error(failed))
        try:
            failed.close(0)
        except KafkaError:  # kafka-python 3.0's close() raises while batches are incomplete, before stopping its
            sender = getattr(failed, "_sender", None)  # thread: stop it, failing what it holds (resent above)
            if sender is not None:
                sender.force_close()
        self._connect_until_closing()

    def _connect_until_closing(self) -> bool:
        """Connect a producer, retrying every second while the broker is away, and make it the client's; False
        (and no producer) if the client closed first."""
        while True:
            try:
                producer = self._connect()
                break
            except BrokerUnavailable as exc:
                with self._cond:
                    self._connect_error = exc
                    if self._cond.wait_for(lambda: self._closing, 1.0):
                        return False
        with self._cond:
            if self._closing:  # close() gave up on us while we connected
                producer.close(0)
                return False
            self._producer, self._connect_error = producer, None
        return True

    def _settle(self, topic: str, size: int, exc: BaseException | None,
                resend: tuple[bytes, bytes | None, int] | None = None) -> None:
        """Count one event's outcome; `resend` (payload, key, resends so far) when its producer failed fatally."""
        with self._cond:
            if self._abandoned:
                return  # close() already counted it as dropped
            self._in_flight[topic] -= 1
            if exc is not None and resend is not None and resend[2] < RESENDS and not self._closing:
                self._resend.append((topic, resend[0], resend[1], resend[2] + 1))  # still pending: bytes stay
            elif exc is None:
                self._pending_bytes -= size
                self._delivered += 1
            else:
                self._pending_bytes -= size
                self._failed += 1
                self._unreported.add(topic, exc, dropped=False)
            self._cond.notify_all()

    # --------------------------------------------------------------------------------------------- the contract

    def _raise_unreported(self, when: str) -> None:
        """Raise (and forget) what failed or was dropped since the last report. Call with `_cond` held."""
        u = self._unreported
        if u.failed or u.dropped:
            self._unreported = _Failures()
            assert u.first is not None
            raise UndeliveredEvents(u.failed, u.dropped, u.first, tuple(sorted(u.topics)),
                                    self.settings.kafka_bootstrap, when)

    def _wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is buffered or in flight; False when `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            producer = self._producer
        if producer is not None:
            # linger_ms would hold the last batch back; flush() sends it now (and waits, bounded by `timeout`).
            try:
                producer.flush(timeout)
            except KafkaError:
                pass  # what is still in flight stays counted: the wait below decides
        with self._cond:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return self._cond.wait_for(lambda: not self._queue and not self._resend
                                       and not any(self._in_flight.values()), left)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event accepted so far is delivered or failed (or `timeout` seconds pass), then raise
        `UndeliveredEvents` for those that failed or were dropped since the last report. On a timeout, events
        still buffered are not dropped: they stay buffered, and this raises `BrokerUnavailable` saying so."""
        idle = self._wait_idle(timeout)
        with self._cond:
            self._raise_unreported("by flush()")
            if not idle:
                reason = f" ({self._connect_error})" if self._connect_error else ""
                left = len(self._queue) + sum(self._in_flight.values())
                where = self.settings.kafka_bootstrap
                raise BrokerUnavailable(f"flush to {where} timed out after {timeout} s with {left} events still "
                                        f"buffered{reason}", bootstrap=where)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered, waiting up to `timeout` seconds (default: `close_timeout_s`), then stop.
        Events still buffered then are dropped. Raises `UndeliveredEvents` when any event accepted since the
        last report was not delivered. Calling it again does nothing."""
        self._close(self.close_timeout_s if timeout is None else timeout, "by close()")

    def _close(self, timeout: float, when: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._wait_idle(timeout)
        with self._cond:
            self._closing = True
            first = self._connect_error or BrokerUnavailable(
                f"still buffered after waiting {timeout} s for {self.settings.kafka_bootstrap}",
                bootstrap=self.settings.kafka_bootstrap)
            self._queue.extendleft(reversed(self._resend))
            self._resend = []
            while self._queue:
                topic, payload, key, _ = self._queue.popleft()
                self._pending_bytes -= len(payload) + len(key or b"")
                self._dropped += 1
                self._unreported.add(topic, first, dropped=True)
            self._cond.notify_all()
            producer = self._producer
        atexit.unregister(self._exit_hook)
        self._pump.join(1.0)
        if producer is not None:
            producer.close(0)  # whatever it still holds is aborted now: its errbacks count it as failed
        with self._cond:
            if not self._cond.wait_for(lambda: not any(self._in_flight.values()), 2.0):
                self._abandoned = True
                for topic, n in self._in_flight.items():
                    for _ in range(n):
                        self._dropped += 1
                        self._unreported.add(topic, first, dropped=True)
            self._raise_unreported(when)

    def _at_exit(self) -> None:
        try:
            self._close(self.close_timeout_s, "at exit")
        except UndeliveredEvents as exc:
            # Nobody is left to catch it: say it where an operator looks (stderr, when logging is not set up).
            log.error("flywheel SDK: %s", exc)

    def __enter__(self) -> "FlywheelClient":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Close; raise `UndeliveredEvents` on failure, unless the block already raised (then it is logged, and
        the block's own exception goes on)."""
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except UndeliveredEvents as undelivered:
            log.error("flywheel SDK: %s", undelivered)


def _fatal(producer: KafkaProducer | None) -> bool:
    """kafka-python keeps an idempotent producer that hit a fatal error failing every later batch; its transaction
    manager (private in kafka-python 3.0, the version pinned) is the one place that says so."""
    tm = getattr(producer, "_transaction_manager", None)
    return bool(tm is not None and tm.has_fatal_error())


def _fatal_error(producer: KafkaProducer) -> object:
    tm = getattr(producer, "_transaction_manager", None)
    return getattr(tm, "last_error", None)


_default: FlywheelClient | None = None
_default_lock = threading.Lock()


def default_client() -> FlywheelClient:
    global _default
    with _default_lock:
        if _default is None:
            _default = FlywheelClient()
        return _default


def log_inference(**kwargs: Any) -> str:
    """`FlywheelClient.log_inference` on a process-wide client configured from the environment."""
    return default_client().log_inference(**kwargs)


def log_feedback(**kwargs: Any) -> str:
    """`FlywheelClient.log_feedback` on a process-wide client configured from the environment."""
    return default_client().log_feedback(**kwargs)


def flush(timeout: float | None = None) -> None:
    """`FlywheelClient.flush` on the process-wide client, if one was made."""
    if _default is not None:
        _default.flush(timeout)

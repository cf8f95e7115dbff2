"""The SDK applications use to emit events: `log_inference(...)` and `log_feedback(...)`, on kafka-python.

Calls return at once: events are validated against the contract here, at the edge (a bad call raises
`ContractViolation` naming every problem), then batched, compressed and delivered by kafka-python's background
thread with idempotence on (acks=all), so a retry never duplicates a message. `flush()` waits for delivery;
the client also flushes when the process exits.

    from flywheel.streams import FlywheelClient
    fw = FlywheelClient()                       # settings from FLYWHEEL_* variables
    iid = fw.log_inference(app="support-bot", model="gpt-4o", input="Hi", output="Hello!", latency_ms=420)
    fw.log_feedback(inference_id=iid, kind="thumbs", value=1)
"""

from __future__ import annotations

import atexit
import json
import threading
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable, ContractViolation
from flywheel.schemas.contract import FEEDBACK, INFERENCE, EventType, event_type_of
from flywheel.schemas.validation import check_event

DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,  # small enough for interactive apps, large enough to batch under load
    "batch_size": 256 * 1024,
    "compression_type": "lz4",
    "max_request_size": 8 * 1024 * 1024,
    "max_block_ms": 10_000,
    "bootstrap_timeout_ms": 10_000,  # fail fast, with a clear error, when no broker answers
}


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


class FlywheelClient:
    """A thread-safe event producer. One per process is enough."""

    def __init__(self, settings: Settings | None = None, *, validate: bool = True, **producer_config: Any) -> None:
        self.settings = settings or Settings.from_env()
        self.validate = validate
        config = {**DEFAULT_PRODUCER_CONFIG, **producer_config}
        try:
            self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap.split(","), **config)
        except KafkaError:
            raise BrokerUnavailable(f"no Kafka broker at {self.settings.kafka_bootstrap}: start one with "
                                    "`flywheel broker start` or set FLYWHEEL_KAFKA_BOOTSTRAP") from None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._topics = {"inference": self.settings.inference_topic, "feedback": self.settings.feedback_topic}
        ref = weakref.ref(self)
        atexit.register(lambda: (c := ref()) is not None and c.close())

    # --------------------------------------------------------------------------------------------- typed calls

    def log_inference(self, *, app: str, model: str, input: str | list[dict[str, str]], output: str,
                      inference_id: str | None = None, timestamp: datetime | str | None = None,
                      **optional: Any) -> str:
        """Emit an inference event; returns its `inference_id` (generated when not given)."""
        event = {"inference_id": inference_id or str(uuid.uuid4()), "timestamp": timestamp or _now(),
                 "app": app, "model": model, "input": input, "output": output, **optional}
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
        self._raise_delivery_errors()
        fut = self._producer.send(topic, value=payload, key=key)
        fut.add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _raise_delivery_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise BrokerUnavailable(f"{len(errors)} events could not be delivered to {self.settings.kafka_bootstrap}"
                                    f": {errors[0]}")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged by the broker; raise if any failed."""
        try:
            self._producer.flush(timeout)
        except KafkaError as exc:
            raise BrokerUnavailable(f"flush to {self.settings.kafka_bootstrap} failed: {exc}") from exc
        self._raise_delivery_errors()

    def close(self, timeout: float | None = 30) -> None:
        try:
            self._producer.flush(timeout)
        finally:
            self._producer.close(timeout)

    def __enter__(self) -> "FlywheelClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    if _default is not None:
        _default.flush(timeout)

"""The two validators derived from the contract agree, event by event, on valid and hostile input."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from flywheel.infra.testing.corpus import generate, hostile_payloads, load_corpus
from flywheel.schemas.contract import EVENT_TYPES, FEEDBACK, INFERENCE, event_type_of
from flywheel.schemas.validation import BatchValidator, validate_payload

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(generate(load_corpus(), 400, seed=3))


def _batch(et_name: str, payloads: list[bytes]) -> list[str | None]:
    _, reasons = BatchValidator(EVENT_TYPES[et_name], LIMIT).validate(pa.array(payloads, pa.binary()))
    return reasons


def test_generated_events_are_valid(events: list[dict]) -> None:
    for name in ("inference", "feedback"):
        payloads = [json.dumps(e).encode() for e in events if event_type_of(e).name == name]
        assert len(payloads) > 100
        assert _batch(name, payloads) == [None] * len(payloads)
        assert all(validate_payload(EVENT_TYPES[name], p, LIMIT) == [] for p in payloads)


@pytest.mark.parametrize("et_name", ["inference", "feedback"])
def test_batch_and_per_event_validators_agree_on_hostile_input(events: list[dict], et_name: str) -> None:
    et = EVENT_TYPES[et_name]
    valid = [e for e in events if event_type_of(e) is et]
    hostile = hostile_payloads(valid, 600, big_bytes=2 * LIMIT)
    payloads = [p for _, p in hostile] + [json.dumps(e).encode() for e in valid[:50]]
    batch = _batch(et_name, payloads)
    for (name, payload), got in zip(hostile + [("valid", b"")] * 50, batch):
        if name == "valid":
            continue
        per_event = "; ".join(validate_payload(et, payload, LIMIT))
        assert got, f"{name} payload accepted by the batch validator: {payload[:200]!r}"
        assert got == per_event, f"{name}: batch says {got!r}, per-event says {per_event!r}"
    assert batch[-50:] == [None] * 50


CASES = [
    # (event type, event, expected reasons)
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01T00:00:00+02:00", "app": "x", "model": "m",
                   "input": "q", "output": ""}, []),
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model": "m",
                   "input": [{"role": "user", "content": "q"}], "output": "o", "input_tokens": 3}, []),
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model": "m",
                   "input": [], "output": "o"}, ["`input` must be a string or a non-empty list of {role, content} "
                                                 "messages"]),
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model": "m",
                   "input": [{"role": "user"}], "output": "o"},
     ["`input` must be a string or a non-empty list of {role, content} messages"]),
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01", "app": 3, "model": "m", "input": "q",
                   "output": "o", "input_tokens": 1.5, "cost_usd": -1},
     ["`timestamp` must be an RFC 3339 timestamp with an offset", "`app` must be a string",
      "`input_tokens` must be an integer", "`cost_usd` must be >= 0"]),
    ("inference", {"inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model": "m",
                   "input": "q", "output": "o", "type": "feedback"},
     ["a feedback event was sent where inference events belong"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "thumbs",
                  "value": 1}, []),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "thumbs",
                  "value": 0}, ["thumbs feedback needs value 1 or -1"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "rating",
                  "value": 9, "scale": [0, 10]}, []),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "rating",
                  "value": 6}, ["rating value must lie within its scale"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "rating",
                  "value": 3, "scale": [5, 1]}, ["rating scale must have min < max",
                                                 "rating value must lie within its scale"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z",
                  "kind": "preference", "value": 0}, ["preference feedback needs `other_inference_id`"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z",
                  "kind": "correction", "correction": ""}, ["correction feedback needs a non-empty `correction`"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "flag"},
     ["flag feedback needs a `reason`"]),
    ("feedback", {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "implicit",
                  "signal": "copy", "source": "crowd"}, ["`source` must be one of user, expert, judge"]),
    ("feedback", {"feedback_id": "f", "timestamp": "2026-11-01T00:00:00Z", "kind": "nope"},
     ["missing required field `inference_id`", "`kind` must be one of thumbs, rating, correction, preference, "
                                                 "flag, implicit"]),
]


@pytest.mark.parametrize("et_name,event,expected", CASES)
def test_reasons(et_name: str, event: dict, expected: list[str]) -> None:
    et = EVENT_TYPES[et_name]
    payload = json.dumps(event).encode()
    assert validate_payload(et, payload, LIMIT) == expected
    assert _batch(et_name, [payload]) == ["; ".join(expected) if expected else None]


def test_a_message_without_a_value_gets_a_reason_on_both_paths() -> None:
    valid = json.dumps({"inference_id": "i1", "timestamp": "2026-11-01T00:00:00Z", "app": "a", "model": "m",
                        "input": "q", "output": "a"}).encode()
    for fast in (True, False):
        typed, reasons = BatchValidator(INFERENCE, LIMIT, fast=fast).validate([None, valid, None])
        assert reasons == ["message has no value (a tombstone)", None, "message has no value (a tombstone)"]
        assert typed["inference_id"].to_pylist() == [None, "i1", None]
    assert validate_payload(INFERENCE, None) == ["message has no value (a tombstone)"]


def test_typed_rows_of_a_chat_input() -> None:
    event = {"inference_id": "a", "timestamp": "2026-11-01T23:30:00-02:00", "app": "x", "model": "m",
             "input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello"}], "output": "o", "metadata": {"k": [1]}}
    typed, reasons = BatchValidator(INFERENCE, LIMIT).validate(pa.array([json.dumps(event).encode()]))
    row = typed.to_pylist()[0]
    assert reasons == [None]
    assert row["input"] == "hi"  # the last user message
    assert [m["role"] for m in row["input_messages"]] == ["system", "user", "assistant"]
    assert row["timestamp"].isoformat() == "2026-11-02T01:30:00+00:00"
    assert json.loads(row["metadata"]) == {"k": [1]}
    assert row["schema_version"] == 1


def test_feedback_defaults() -> None:
    event = {"feedback_id": "f", "inference_id": "a", "timestamp": "2026-11-01T00:00:00Z", "kind": "rating",
             "value": 4}
    typed, _ = BatchValidator(FEEDBACK, LIMIT).validate(pa.array([json.dumps(event).encode()]))
    row = typed.to_pylist()[0]
    assert (row["scale_min"], row["scale_max"], row["source"]) == (1.0, 5.0, "user")


def test_a_single_threaded_validator_gives_the_same_verdicts_on_the_calling_thread_alone() -> None:
    """`threads=1` (the collector's) changes where the work runs, never the typed rows or the reasons."""
    events = [e for e in generate(load_corpus(), 600, seed=8) if event_type_of(e).name == "inference"]
    good = [json.dumps(e).encode() for e in events]
    payloads = good + [p for _, p in hostile_payloads(events, 40, seed=2)] + good[:50]
    single = BatchValidator(INFERENCE, max_bytes=1 << 20, threads=1)
    assert single._fast_path is not None and single._fast_path.use_threads is False
    for batch in (good, payloads):
        (t1, r1), (t2, r2) = single.validate(batch), BatchValidator(INFERENCE, max_bytes=1 << 20).validate(batch)
        assert r1 == r2 and t1.equals(t2)
    assert single.rows_fast >= len(good)

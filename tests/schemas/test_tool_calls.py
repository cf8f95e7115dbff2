"""Tool-calling events (OpenAI's chat format): accepted with their tools and tool calls kept exactly, bad shapes
rejected with a reason, and the same verdict and typed rows from the per-event, full and fast validators."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from flywheel.infra.testing.tool_calls import WEATHER_TOOLS, bad_shapes, tool_inferences
from flywheel.schemas.contract import INFERENCE
from flywheel.schemas.validation import BatchValidator, validate_payload

LIMIT = 1 << 20


_VALIDATORS: dict[bool, BatchValidator] = {}


def _validate(payloads: list[bytes], fast: bool) -> tuple[pa.Table, list[str | None], BatchValidator]:
    v = _VALIDATORS.get(fast) or _VALIDATORS.setdefault(fast, BatchValidator(INFERENCE, LIMIT, fast=fast))
    v.rows_fast = 0
    typed, reasons = v.validate(pa.array(payloads, pa.binary()))
    return typed, reasons, v


def test_tool_calling_events_land_with_their_tools_and_calls_exactly() -> None:
    events = tool_inferences(6)
    payloads = [json.dumps(e, ensure_ascii=False).encode() for e in events]
    assert all(validate_payload(INFERENCE, p) == [] for p in payloads)
    typed, reasons, v = _validate(payloads, fast=True)
    full, full_reasons, _ = _validate(payloads, fast=False)
    assert reasons == full_reasons == [None] * len(events)
    assert v.rows_fast == len(events)  # the fast path took them all
    assert typed.equals(full)
    for row, ev in zip(typed.to_pylist(), events):
        assert json.loads(row["tools"]) == WEATHER_TOOLS  # `strict` and every JSON Schema key kept
        sent = ev["input"]
        assert [m["role"] for m in row["input_messages"]] == [m["role"] for m in sent]
        for got, want in zip(row["input_messages"], sent):
            assert got["content"] == want.get("content") and got["name"] == want.get("name")
            assert got["tool_call_id"] == want.get("tool_call_id")
            assert got["tool_calls"] == want.get("tool_calls")  # `arguments` verbatim: the provider's JSON string
        assert row["input"] == sent[1]["content"]  # the text view: the last user message


def test_each_bad_tool_shape_is_rejected_with_its_reason_by_every_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = bad_shapes(tool_inferences(1)[0])
    payloads = [json.dumps(event).encode() for _, event, _ in cases]
    for (what, _, reason), payload in zip(cases, payloads):
        assert "; ".join(validate_payload(INFERENCE, payload)) == reason, what
    clean = [json.dumps(e).encode() for e in tool_inferences(2, prefix="ok")]
    # Each bad event alone in its chunk, then as the one bad event of a chunk of valid ones: the fast path must
    # send its chunk to the full validator, and keep the valid events of the other chunks.
    for chunk, batch, fast_rows in ((1, payloads + clean, 2),
                                    (3, [x for p in payloads for x in (clean[0], p, clean[1])] + clean + clean[:1], 3)):
        monkeypatch.setattr("flywheel.schemas.validation.CHUNK_ROWS", chunk)
        fast_typed, fast_reasons, v = _validate(batch, fast=True)
        full_typed, full_reasons, _ = _validate(batch, fast=False)
        assert fast_reasons == full_reasons
        assert fast_typed.equals(full_typed)
        expected = {p: r for p, (_, _, r) in zip(payloads, cases)}
        assert fast_reasons == [expected.get(p) for p in batch]
        assert v.rows_fast == fast_rows  # the chunks of valid events only


def test_an_event_without_tools_still_lands_as_before() -> None:
    event = {"inference_id": "i-1", "timestamp": "2026-11-01T12:00:00Z", "app": "a", "model": "m",
             "input": [{"role": "user", "content": "hi"}], "output": "o"}
    typed, reasons, v = _validate([json.dumps(event).encode()], fast=True)
    assert reasons == [None] and v.rows_fast == 1
    row = typed.to_pylist()[0]
    assert row["tools"] is None
    assert row["input_messages"] == [{"role": "user", "content": "hi", "name": None, "tool_call_id": None,
                                      "tool_calls": None}]

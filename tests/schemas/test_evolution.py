"""The evolution policy stated in schemas/contract.py, checked."""

from __future__ import annotations

import json

import pyarrow as pa

from flywheel.schemas.contract import INFERENCE, SCHEMA_VERSION
from flywheel.schemas.validation import BatchValidator, validate_payload

BASE = {"inference_id": "i-1", "timestamp": "2026-11-01T12:00:00Z", "app": "a", "model": "m", "input": "q",
        "output": "o"}


def _land(event: dict) -> tuple[dict, str | None]:
    typed, reasons = BatchValidator(INFERENCE, 1 << 20).validate(pa.array([json.dumps(event).encode()]))
    return typed.to_pylist()[0], reasons[0]


def test_an_unknown_field_is_kept_not_rejected() -> None:
    row, reason = _land({**BASE, "reasoning_tokens": 120, "tool_calls": [{"name": "search"}]})
    assert reason is None
    assert json.loads(row["extra"]) == {"reasoning_tokens": 120, "tool_calls": [{"name": "search"}]}
    assert validate_payload(INFERENCE, json.dumps({**BASE, "reasoning_tokens": 120})) == []


def test_an_absent_optional_field_lands_as_null_or_its_default() -> None:
    row, reason = _land(BASE)
    assert reason is None
    assert row["latency_ms"] is None and row["model_version"] is None and row["extra"] is None
    assert row["schema_version"] == SCHEMA_VERSION


def test_a_missing_required_field_rejects_the_event_with_its_name() -> None:
    event = {k: v for k, v in BASE.items() if k != "model"}
    _, reason = _land(event)
    assert reason == "missing required field `model`"
    _, reason = _land({**BASE, "model": None})
    assert reason == "missing required field `model`"


def test_a_newer_schema_version_is_accepted() -> None:
    row, reason = _land({**BASE, "schema_version": SCHEMA_VERSION + 1, "new_optional": True})
    assert reason is None and row["schema_version"] == SCHEMA_VERSION + 1

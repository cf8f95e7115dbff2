"""Docs are derived from the contract and kept in the repository: they must not drift."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas import docs
from flywheel.schemas.contract import event_type_of

EVENTS_MD = Path(__file__).resolve().parents[2] / "schemas" / "EVENTS.md"


def test_events_md_is_current() -> None:
    assert EVENTS_MD.read_text() == docs.markdown() + "\n", "regenerate: flywheel schema > schemas/EVENTS.md"


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_events_satisfy_the_json_schema(seed: int) -> None:
    schema = docs.json_schema()
    for event in generate(load_corpus(), 100, seed=seed):
        sub = schema["$defs"][event_type_of(event).name]
        jsonschema.validate(json.loads(json.dumps(event)), sub)


def test_json_schema_rejects_a_missing_required_field() -> None:
    sub = docs.json_schema()["$defs"]["inference"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"inference_id": "x"}, sub)

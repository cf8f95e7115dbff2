"""A tool-calling app's own traffic becomes a dataset to fine-tune it on: events with `tools` and tool calls go
through the SDK and the embedded broker, land, curate into SFT, and the exported OpenAI chat line holds the tools
and every tool call exactly; bad shapes land in the quarantine with their reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from flywheel.config import Settings
from flywheel.infra.testing.tool_calls import WEATHER_TOOLS, bad_shapes, tool_inferences
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.datasets import DatasetSettings, curate, load
from flywheel.warehouse.datasets.exports import JSON_SCHEMAS
from flywheel.warehouse.datasets.recipes import parse_recipe
from flywheel.warehouse.query import connect

pytestmark = pytest.mark.broker


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    """What OpenAI's fine-tuning format holds for a message sent: its keys, a null content left out."""
    return {k: v for k, v in m.items() if v is not None}


def test_tool_calling_traffic_lands_and_exports_with_its_tools_and_calls(tmp_path: Path, broker_port: int) -> None:
    tag = tmp_path.name.replace("_", "")[-10:]
    s = Settings(home=tmp_path, broker_port=broker_port, topic_prefix=f"tc{tag}", ingest_group=f"g{tag}",
                 partitions=1, flush_interval_s=0.5)
    ensure_topics(s)
    events = tool_inferences(4)  # four cities: no two conversations the same
    bad = bad_shapes(events[0])
    with FlywheelClient(s) as fw:
        for ev in events:
            fields = {k: v for k, v in ev.items() if k not in ("app", "model", "input", "output", "tools")}
            fw.log_inference(app=ev["app"], model=ev["model"], input=ev["input"], output=ev["output"],
                             tools=ev["tools"], **fields)
            fw.log_feedback(inference_id=ev["inference_id"], kind="thumbs", value=1)
        for i, (_, event, _) in enumerate(bad):  # as a producer without the SDK's check would send them
            fw.send_raw(s.inference_topic, json.dumps({**event, "inference_id": f"bad-{i}"}).encode())
    stats = IngestWorker(s).run(until_idle=2)
    assert stats.landed["inferences"] == len(events) and stats.quarantined == len(bad)

    con = connect(s)
    try:
        quarantined = dict(con.sql("SELECT event_id, reason FROM quarantine").fetchall())
    finally:
        con.close()
    assert quarantined == {f"bad-{i}": reason for i, (_, _, reason) in enumerate(bad)}

    ds = DatasetSettings()
    version = curate(s, ds, parse_recipe({"name": "agent-sft", "kind": "sft", "exports": ["openai_chat", "trl"],
                                          "splits": {"fractions": {"train": 1.0}},
                                          # the four differ by a city and a temperature: near duplicates by design
                                          "steps": {"near_dedupe": None}}))
    assert dict(version.splits) == {"train": len(events)}
    lines = [json.loads(line) for line in
             (version.path / "openai_chat" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    by_answer = {line["messages"][-1]["content"]: line for line in lines}
    for ev in events:
        line = by_answer[ev["output"]]
        jsonschema.validate(line, JSON_SCHEMAS["openai_chat"])
        assert line == {"messages": [*map(_openai_message, ev["input"]),
                                     {"role": "assistant", "content": ev["output"]}],
                        "tools": WEATHER_TOOLS}
    # `arguments` byte for byte: the JSON string the model produced, not a re-serialization of it.
    raw = (version.path / "openai_chat" / "train.jsonl").read_text(encoding="utf-8")
    assert json.dumps(events[0]["input"][2]["tool_calls"][0]["function"]["arguments"], ensure_ascii=False) in raw
    for line in (version.path / "trl" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        jsonschema.validate(json.loads(line), JSON_SCHEMAS["trl_sft"])
    rows = load("agent-sft", "train", settings=s, ds=ds).to_pylist()
    assert {json.dumps(json.loads(r["tools"]), sort_keys=True) for r in rows} == {
        json.dumps(WEATHER_TOOLS, sort_keys=True)}


def test_the_export_schemas_refuse_tool_calls_openai_would_refuse() -> None:
    ok = {"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]},
                       {"role": "tool", "tool_call_id": "c1", "content": "42"},
                       {"role": "assistant", "content": "It is 42."}], "tools": WEATHER_TOOLS}
    jsonschema.validate(ok, JSON_SCHEMAS["openai_chat"])
    broken = [
        {**ok, "messages": [ok["messages"][0], {"role": "tool", "content": "42"}, ok["messages"][3]]},
        {**ok, "messages": [ok["messages"][0], {"role": "assistant"}, ok["messages"][3]]},
        {**ok, "messages": [{**ok["messages"][0], "tool_calls": ok["messages"][1]["tool_calls"]},
                            ok["messages"][3]]},
        {**ok, "messages": [ok["messages"][0], {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}, ok["messages"][3]]},
        {**ok, "tools": [{"type": "function", "function": {"description": "no name"}}]},
    ]
    for record in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(record, JSON_SCHEMAS["openai_chat"])

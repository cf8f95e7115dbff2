"""A tool-calling app's traffic, for tests of the contract, landing, curation and exports.

The shapes are OpenAI's documented ones: the Chat Completions function-calling guide (a request's
`tools: [{type: "function", function: {name, description, parameters}}]`, an assistant message whose
`tool_calls: [{id, type: "function", function: {name, arguments}}]` has no content, and the `tool` message answering
it by `tool_call_id`), and the fine-tuning guide's chat example with tool calls, whose JSONL line carries `tools` next
to `messages` (https://platform.openai.com/docs/guides/fine-tuning). `arguments` is a JSON string, as OpenAI sends
it; one here holds non-ASCII text and escaped quotes, which must come out byte for byte.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

WEATHER_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
            "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location", "format"]}}},
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Look up an order by its number",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"],
                       "additionalProperties": False},
        "strict": True}},
]

CITIES = [("Paris, France", "18", "partly cloudy"), ("Zürich, Switzerland", "9", "light rain"),
          ("São Paulo, Brazil", "27", "sunny"), ("Kyoto, Japan", "14", "clear")]


def weather_conversation(i: int) -> tuple[list[dict[str, Any]], str]:
    """(input messages, final answer) of the i-th weather question: the model called the tool, the app ran it."""
    city, temp, sky = CITIES[i % len(CITIES)]
    call_id = f"call_{i:04d}wx"
    args = json.dumps({"location": city, "format": "celsius", "note": 'user said "today"'}, ensure_ascii=False)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Use the tools when they help."},
        {"role": "user", "name": f"guest_{i}", "content": f"What's the weather like in {city.split(',')[0]} today?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_current_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature": temp, "sky": sky})},
    ]
    if i % 2:  # an assistant turn that omits `content` altogether, and two calls in one turn
        messages[2] = {"role": "assistant", "tool_calls": [
            messages[2]["tool_calls"][0],
            {"id": f"call_{i:04d}or", "type": "function",
             "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1042"}'}}]}
        messages.append({"role": "tool", "tool_call_id": f"call_{i:04d}or", "content": '{"status": "shipped"}'})
    return messages, f"It is {temp} °C and {sky} in {city.split(',')[0]} right now."


def tool_inferences(n: int, *, app: str = "travel-agent", start: datetime | None = None,
                    prefix: str = "t") -> list[dict[str, Any]]:
    """`n` inference events of a tool-calling app, each with `tools` and a conversation holding tool calls."""
    t0 = start or datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        messages, answer = weather_conversation(i)
        out.append({"inference_id": f"{prefix}-{i}", "timestamp": (t0 + timedelta(seconds=i)).isoformat(),
                    "app": app, "model": "gpt-4o-mini", "provider": "openai", "input": messages, "output": answer,
                    "tools": WEATHER_TOOLS, "session_id": f"st-{i}", "user_id": f"ut-{i}",
                    "prompt_template": "default"})
    return out


def _swap(messages: list[dict[str, Any]], at: int, **changes: Any) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    out[at] = {k: v for k, v in {**out[at], **changes}.items() if v is not ...}
    return out


INPUT_REASON = "`input` must be a string or a non-empty list of {role, content} messages"
TOOLS_REASON = ('`tools` must be a non-empty list of {type: "function", function: {name, description?, '
                'parameters?}} tools')
TOOL_CALL_ID_REASON = "a `tool` message in `input` needs a non-empty `tool_call_id`"
TOOL_CALLS_REASON = ('`tool_calls` in `input` belong to assistant messages and must be a list of {id, type: '
                     '"function", function: {name, arguments}}, `arguments` a JSON string')


def bad_shapes(event: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(what is wrong, the event with that defect, the reason the contract gives) for a valid tool event."""
    msgs = event["input"]
    call = msgs[2]["tool_calls"][0]
    fn = call["function"]
    return [
        ("tool message without tool_call_id", {**event, "input": _swap(msgs, 3, tool_call_id=...)},
         TOOL_CALL_ID_REASON),
        ("tool message with an empty tool_call_id", {**event, "input": _swap(msgs, 3, tool_call_id="")},
         TOOL_CALL_ID_REASON),
        ("arguments as an object, not a JSON string",
         {**event, "input": _swap(msgs, 2, tool_calls=[{**call, "function": {**fn, "arguments": {"a": 1}}}])},
         TOOL_CALLS_REASON),
        ("a tool call without an id", {**event, "input": _swap(
            msgs, 2, tool_calls=[{k: v for k, v in call.items() if k != "id"}])}, TOOL_CALLS_REASON),
        ("a tool call of type other than function", {**event, "input": _swap(
            msgs, 2, tool_calls=[{**call, "type": "retrieval"}])}, TOOL_CALLS_REASON),
        ("tool_calls on a user message", {**event, "input": _swap(msgs, 1, tool_calls=[call])}, TOOL_CALLS_REASON),
        ("tool_calls not a list", {**event, "input": _swap(msgs, 2, content="", tool_calls=call)},
         TOOL_CALLS_REASON),
        ("a null tool call", {**event, "input": _swap(msgs, 2, content="", tool_calls=[None])}, TOOL_CALLS_REASON),
        ("null content without tool calls", {**event, "input": _swap(msgs, 2, tool_calls=...)}, INPUT_REASON),
        ("null content on a user message", {**event, "input": _swap(msgs, 1, content=None)}, INPUT_REASON),
        ("null content with an empty tool_calls", {**event, "input": _swap(msgs, 2, tool_calls=[])}, INPUT_REASON),
        ("a name that is not a string", {**event, "input": _swap(msgs, 1, name=7)}, INPUT_REASON),
        ("tools not a list", {**event, "tools": WEATHER_TOOLS[0]}, TOOLS_REASON),
        ("tools empty", {**event, "tools": []}, TOOLS_REASON),
        ("a tool without a function", {**event, "tools": [{"type": "function"}]}, TOOLS_REASON),
        ("a tool of type other than function",
         {**event, "tools": [{**WEATHER_TOOLS[0], "type": "code_interpreter"}]}, TOOLS_REASON),
        ("a function without a name", {**event, "tools": [{"type": "function", "function": {"description": "x"}}]},
         TOOLS_REASON),
        ("a function with an empty name", {**event, "tools": [{"type": "function", "function": {"name": ""}}]},
         TOOLS_REASON),
        ("parameters as a string", {**event, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": "{\"type\": \"object\"}"}}]}, TOOLS_REASON),
        ("a null tool", {**event, "tools": [None]}, TOOLS_REASON),
        ("both defects at once", {**event, "tools": [], "input": _swap(msgs, 3, tool_call_id=...)},
         f"{TOOL_CALL_ID_REASON}; {TOOLS_REASON}"),
    ]

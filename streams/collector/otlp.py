"""OTLP/HTTP traces -> inference events: decoding (protobuf or JSON) into typed spans, and GenAI span mapping.

Pure functions over typed records: `decode_protobuf` / `decode_json` turn an `ExportTraceServiceRequest` into
`Span`s (or raise `OtlpDecodeError`), and `map_span` turns one span into an `Inference` (the contract's inference
event), a `Refusal` with its reason, or None for a span that is not a GenAI inference (an HTTP or database span,
an embeddings or tool call): those are not ours, and are skipped without a word.

The mapping follows the OpenTelemetry GenAI semantic conventions (README, "HTTP and OpenTelemetry collector", has
the table). Content (prompts and answers) is opt-in in every GenAI instrumentation; a span without it is refused,
not landed as a metrics-only inference: the contract requires `input` and `output`, and a flywheel learns nothing
from an inference it cannot read. An error span with its input but no answer lands with an empty `output` and the
error in `metadata.otel.error`, since failed calls are what a flywheel most needs to see.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from flywheel.errors import FlywheelError

Value = str | bool | int | float | bytes | None | tuple["Value", ...] | Mapping[str, "Value"]
"""An attribute value as OTLP carries it (arrays become tuples, key-value lists mappings)."""

Json = str | bool | int | float | None | list["Json"] | dict[str, "Json"]

INFERENCE_OPERATIONS = ("chat", "text_completion", "generate_content")
"""`gen_ai.operation.name`s that are one model call with a prompt and an answer."""

STATUS_ERROR = 2


class OtlpDecodeError(FlywheelError):
    """The request body is not an OTLP `ExportTraceServiceRequest` in the encoding it claims (answered 400)."""

    def __init__(self, encoding: str, detail: str) -> None:
        self.encoding = encoding
        super().__init__(f"the body is not a valid OTLP {encoding} ExportTraceServiceRequest: {detail}")


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: Mapping[str, Value]


@dataclass(frozen=True)
class Span:
    """One span, with the attributes of the resource that emitted it (`service.name` is the app)."""

    trace_id: str
    """Lower-case hex, as OTLP/JSON and every trace viewer show it."""
    span_id: str
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: Mapping[str, Value]
    resource: Mapping[str, Value]
    events: tuple[SpanEvent, ...] = ()
    status_code: int = 0
    status_message: str = ""

    def attr(self, *names: str) -> Value:
        """The first of `names` the span has (later names are older spellings of the same attribute)."""
        for n in names:
            if n in self.attributes:
                return self.attributes[n]
        return None

    @property
    def where(self) -> str:
        return f"span `{self.name}` (trace {self.trace_id}, span {self.span_id})"


@dataclass(frozen=True)
class ToolCall:
    """A `tool_call` part: `arguments` as JSON text, as OpenAI's format and the contract keep them."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """A chat message in the contract's (OpenAI's) shape: an assistant's tool calls, or a tool's answer to one."""

    role: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def wire(self) -> dict[str, Json]:
        out: dict[str, Json] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name,
                                                                               "arguments": c.arguments}}
                                 for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class Inference:
    """The inference event a GenAI span maps to, before validation (the collector checks it with the contract,
    as it checks every posted event)."""

    inference_id: str
    timestamp: str | None
    app: str | None
    model: str | None
    input: tuple[Message, ...]
    output: str
    trace_id: str
    model_version: str | None = None
    provider: str | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    user_id: str | None = None
    session_id: str | None = None
    tools: list[Json] | None = None
    metadata: dict[str, Json] = field(default_factory=dict)

    def payload(self) -> bytes:
        """The event in wire format (absent optional fields left out, as the SDK does)."""
        event: dict[str, Json] = {
            "inference_id": self.inference_id, "timestamp": self.timestamp, "app": self.app, "model": self.model,
            "input": [m.wire() for m in self.input], "output": self.output, "tools": self.tools,
            "model_version": self.model_version, "provider": self.provider, "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "user_id": self.user_id,
            "session_id": self.session_id, "trace_id": self.trace_id, "metadata": {"otel": self.metadata},
        }
        return json.dumps({k: v for k, v in event.items() if v is not None}, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class Refusal:
    span: Span
    reason: str


# --------------------------------------------------------------------------------------------------- decoding


def decode_protobuf(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OtlpDecodeError("protobuf", str(exc) or type(exc).__name__) from None
    return _spans(request)


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_HEX_ID = re.compile(r"(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{16})")


def decode_json(body: bytes) -> list[Span]:
    """OTLP/JSON: protobuf's JSON mapping, except that trace and span ids are hex, not base64."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise OtlpDecodeError("JSON", f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise OtlpDecodeError("JSON", "the body must be a JSON object with `resourceSpans`")
    _hex_ids_to_base64(obj)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(obj, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise OtlpDecodeError("JSON", str(exc)) from None
    return _spans(request)


def _hex_ids_to_base64(node: object) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _ID_FIELDS and isinstance(v, str) and _HEX_ID.fullmatch(v):
                node[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                _hex_ids_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            _hex_ids_to_base64(v)


def _value(v: AnyValue) -> Value:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind is None:
        return None
    out: Value = getattr(v, kind)
    return out


def _attributes(kvs: object) -> dict[str, Value]:
    return {kv.key: _value(kv.value) for kv in kvs}  # type: ignore[attr-defined]


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), name=s.name,
                    start_time_unix_nano=s.start_time_unix_nano, end_time_unix_nano=s.end_time_unix_nano,
                    attributes=_attributes(s.attributes), resource=resource,
                    events=tuple(SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in s.events),
                    status_code=s.status.code, status_message=s.status.message))
    return out


# --------------------------------------------------------------------------------------------------- mapping

CONTENT_HINT = ("enable content capture in the instrumentation (for example "
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true)")


def map_span(span: Span) -> Inference | Refusal | None:
    """The inference event of a GenAI inference span; a `Refusal` when its content was not captured; None for a
    span that is not a GenAI inference."""
    operation = span.attr("gen_ai.operation.name", "llm.request.type")
    provider = span.attr("gen_ai.provider.name", "gen_ai.system")
    if operation is None and provider is None:
        return None
    operation = str(operation or "chat")
    if operation not in INFERENCE_OPERATIONS:
        return None
    details = next((e.attributes for e in span.events if e.name == "gen_ai.client.inference.operation.details"), {})
    messages = _input(span, details)
    error_type = span.attr("error.type")
    failed = span.status_code == STATUS_ERROR or error_type is not None
    output = _output(span, details)
    if not messages or (output is None and not failed):
        missing = " and ".join(n for n, ok in (("input", bool(messages)), ("output", output is not None)) if not ok)
        return Refusal(span, f"GenAI {span.where} carries no captured {missing} messages "
                             f"(gen_ai.input.messages, gen_ai.output.messages): {CONTENT_HINT}")
    request_model = _str(span.attr("gen_ai.request.model"))
    response_model = _str(span.attr("gen_ai.response.model"))
    metadata: dict[str, Json] = {"span_id": span.span_id, "span_name": span.name, "operation": operation}
    for key, attr in (("response_id", "gen_ai.response.id"), ("server_address", "server.address"),
                      ("finish_reasons", "gen_ai.response.finish_reasons")):
        if span.attr(attr) is not None:
            metadata[key] = _json(span.attr(attr))
    params = {k.removeprefix("gen_ai.request."): _json(v) for k, v in span.attributes.items()
              if k.startswith("gen_ai.request.") and k != "gen_ai.request.model"}
    if params:
        metadata["request"] = params
    if failed:
        metadata["error"] = {"type": _json(error_type or "error"), "message": span.status_message}
    return Inference(
        inference_id=f"{span.trace_id}-{span.span_id}",
        timestamp=_rfc3339(span.start_time_unix_nano),
        app=_str(span.resource.get("service.name")),
        model=request_model or response_model,
        input=messages,
        output=output or "",
        trace_id=span.trace_id,
        model_version=response_model if response_model and response_model != request_model else None,
        provider=_str(provider),
        latency_ms=((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
                    if span.start_time_unix_nano and span.end_time_unix_nano else None),
        input_tokens=_int(span.attr("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")),
        output_tokens=_int(span.attr("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")),
        user_id=_str(span.attr("user.id", "enduser.id")),
        session_id=_str(span.attr("gen_ai.conversation.id", "session.id")),
        tools=_tools(span.attr("gen_ai.tool.definitions") or details.get("gen_ai.tool.definitions")),
        metadata=metadata,
    )


def _input(span: Span, details: Mapping[str, Value]) -> tuple[Message, ...]:
    system = _parts_text(_structured(span.attr("gen_ai.system_instructions")
                                     or details.get("gen_ai.system_instructions")))
    messages = _messages(span.attr("gen_ai.input.messages") or details.get("gen_ai.input.messages"))
    if not messages:
        messages = _indexed(span, "gen_ai.prompt") or _plain(span.attr("gen_ai.prompt"), "user")
    if messages and system:
        messages = (Message("system", system), *messages)
    return messages


def _output(span: Span, details: Mapping[str, Value]) -> str | None:
    # `output` is text: tool calls the model answered with stay in it as JSON (see `_parts_text`).
    messages = (_messages(span.attr("gen_ai.output.messages") or details.get("gen_ai.output.messages"), calls=False)
                or _indexed(span, "gen_ai.completion") or _plain(span.attr("gen_ai.completion"), "assistant"))
    # Several choices (n > 1) are one answer each: the first is the one an application shows.
    return messages[0].content if messages else None


def _structured(v: Value) -> Value:
    """Instrumentations record structured content as a JSON string (most) or as OTLP arrays and maps."""
    if isinstance(v, str):
        try:
            parsed: Value = _from_json(json.loads(v))
            return parsed
        except ValueError:
            return v
    return v


def _from_json(v: object) -> Value:
    if isinstance(v, list):
        return tuple(_from_json(x) for x in v)
    if isinstance(v, dict):
        return {str(k): _from_json(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return str(v)


def _messages(v: Value, calls: bool = True) -> tuple[Message, ...]:
    """`[{role, parts: [{type, content | ...}]}]` (the current conventions) or `[{role, content}]` (older); with
    `calls`, tool calls and their answers as the contract's messages, else as JSON in the text."""
    v = _structured(v)
    if not isinstance(v, tuple):
        return ()
    out: list[Message] = []
    for m in v:
        if not isinstance(m, Mapping):
            continue
        role = str(m.get("role") or "user")
        if "parts" in m:
            out += _from_parts(role, m["parts"]) if calls else [Message(role, _parts_text(m["parts"]))]
        else:
            out.append(Message(role, _text(m.get("content"))))
    return tuple(out)


def _from_parts(role: str, parts: Value) -> list[Message]:
    """One message's parts as the contract's messages: `tool_call` parts become the message's tool calls (its
    content null when it has no text), each `tool_call_response` part a `tool` message answering its call."""
    if not isinstance(parts, tuple):
        return [Message(role, _parts_text(parts))]
    def typed(p: Value, kind: str) -> bool:
        return isinstance(p, Mapping) and p.get("type") == kind
    calls = tuple(ToolCall(_text(p.get("id")), _text(p.get("name")), _arguments(p.get("arguments")))
                  for p in parts if isinstance(p, Mapping) and typed(p, "tool_call"))
    answers = [p for p in parts if isinstance(p, Mapping) and typed(p, "tool_call_response")]
    rest = tuple(p for p in parts if not typed(p, "tool_call") and not typed(p, "tool_call_response"))
    out = []
    if calls:
        out.append(Message(role, _parts_text(rest) or None, tool_calls=calls))
    elif rest or not answers:
        out.append(Message(role, _parts_text(rest)))
    out += [Message("tool", _text(p.get("response")), tool_call_id=_text(p.get("id"))) for p in answers]
    return out


def _arguments(v: Value) -> str:
    """A tool call's arguments as JSON text: a string as sent (OpenAI's form), an object encoded."""
    return v if isinstance(v, str) else json.dumps(_json(v) if v is not None else {}, ensure_ascii=False)


def _tools(v: Value) -> list[Json] | None:
    """`gen_ai.tool.definitions` (`[{type, name, description, parameters}]`) in OpenAI's shape, `[{type,
    function: {name, description, parameters}}]`; a definition already in that shape is kept."""
    v = _structured(v)
    if not isinstance(v, tuple) or not v:
        return None
    out: list[Json] = []
    for d in v:
        if not isinstance(d, Mapping):
            return None  # not definitions this mapping knows: the event goes without them
        plain = {k: _json(x) for k, x in d.items()}
        if "function" in plain:
            out.append(plain)
        else:
            out.append({"type": plain.get("type", "function"),
                        "function": {k: plain[k] for k in ("name", "description", "parameters") if k in plain}})
    return out


def _parts_text(parts: Value) -> str:
    """Text parts as they are; tool calls and their responses as JSON, so the record of what happened is kept."""
    if isinstance(parts, str) or parts is None:
        return parts or ""
    if not isinstance(parts, tuple):
        return _text(parts)
    out = []
    for p in parts:
        if isinstance(p, Mapping) and p.get("type") == "text":
            out.append(_text(p.get("content")))
        elif isinstance(p, Mapping) and p.get("type") == "reasoning":
            continue  # the model's scratchpad is not its answer
        else:
            out.append(json.dumps(_json(p), ensure_ascii=False))
    return "\n".join(out)


def _indexed(span: Span, prefix: str) -> tuple[Message, ...]:
    """OpenLLMetry's flattened form: `gen_ai.prompt.0.role`, `gen_ai.prompt.0.content`, ..."""
    out = []
    i = 0
    while f"{prefix}.{i}.content" in span.attributes or f"{prefix}.{i}.role" in span.attributes:
        out.append(Message(str(span.attributes.get(f"{prefix}.{i}.role") or "user"),
                           _text(span.attributes.get(f"{prefix}.{i}.content"))))
        i += 1
    return tuple(out)


def _plain(v: Value, role: str) -> tuple[Message, ...]:
    return (Message(role, v),) if isinstance(v, str) and v else ()


def _text(v: Value) -> str:
    if isinstance(v, str):
        return v
    return "" if v is None else json.dumps(_json(v), ensure_ascii=False)


def _json(v: Value) -> Json:
    if isinstance(v, tuple):
        return [_json(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _json(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


def _str(v: Value) -> str | None:
    return v if isinstance(v, str) and v else None


def _int(v: Value) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _rfc3339(unix_nano: int) -> str | None:
    if unix_nano <= 0:
        return None
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos // 1000:06d}Z"  # microseconds: what the lake's timestamps hold

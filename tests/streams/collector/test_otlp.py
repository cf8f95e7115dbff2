"""OTLP/HTTP ingestion: real spans from the OpenTelemetry SDK's exporter land as inference events; bad requests get
their documented answers and never take the collector down."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from flywheel.config import Settings
from flywheel.streams.collector import otlp
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.query import connect

INPUT = [{"role": "user", "parts": [{"type": "text", "content": "How do I reset my password?"}]}]
OUTPUT = [{"role": "assistant", "finish_reason": "stop",
           "parts": [{"type": "text", "content": "Open Settings, then Security, then Reset."}]}]


def _tracer(base: str, headers: dict[str, str], compression: Compression = Compression.NoCompression
            ) -> tuple[TracerProvider, OTLPSpanExporter]:
    exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, compression=compression, timeout=20)
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _chat(provider: TracerProvider, *, content: bool = True, error: bool = False, **extra: object) -> str:
    tracer = provider.get_tracer("my-genai-instrumentation")
    with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                             "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                             "gen_ai.request.temperature": 0.2, "gen_ai.usage.input_tokens": 12,
                             "gen_ai.usage.output_tokens": 9, "gen_ai.conversation.id": "conv-7",
                             "gen_ai.response.id": "chatcmpl-1", "gen_ai.response.finish_reasons": ("stop",)})
        if content:
            span.set_attribute("gen_ai.input.messages", json.dumps(INPUT))
            if not error:
                span.set_attribute("gen_ai.output.messages", json.dumps(OUTPUT))
        if error:
            span.set_attribute("error.type", "RateLimitError")
            span.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
        span.set_attributes(extra)  # type: ignore[arg-type]
        ctx = span.get_span_context()
        return f"{ctx.trace_id:032x}-{ctx.span_id:016x}"


def test_spans_from_the_otlp_exporter_land_as_inference_events(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    provider, exporter = _tracer(collector, auth, Compression.Gzip)
    answered = _chat(provider)
    failed = _chat(provider, error=True)
    with provider.get_tracer("http").start_as_current_span("GET /health"):
        pass  # not a GenAI span: skipped
    provider.shutdown()
    # A JSON export of the same shape, hex ids as OTLP/JSON has them.
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "writing-assistant"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "text_completion m",
            "startTimeUnixNano": "1764590400000000000", "endTimeUnixNano": "1764590400250000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "text_completion"}},
                           {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
                           {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "3"}},
                           {"key": "gen_ai.prompt.0.role", "value": {"stringValue": "user"}},
                           {"key": "gen_ai.prompt.0.content", "value": {"stringValue": "Write a haiku"}},
                           {"key": "gen_ai.completion.0.content", "value": {"stringValue": "Leaves fall"}}]}]}]}]}
    r = httpx.post(f"{collector}/v1/traces", content=gzip.compress(json.dumps(body).encode()),
                   headers={**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json() == {}  # no partial_success: every GenAI span was accepted

    s = kafka_settings
    assert count_messages(s, s.inference_topic) == 3
    IngestWorker(s).run(until_idle=2)
    con = connect(s)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    rows = {r[0]: r for r in con.execute(
        "SELECT inference_id, app, model, model_version, provider, input, input_messages, output, input_tokens, "
        "output_tokens, session_id, trace_id, latency_ms, json_extract_string(metadata, '$.otel.error.type'), "
        "json_extract(metadata, '$.otel.request.temperature')::DOUBLE FROM inferences").fetchall()}
    assert set(rows) == {answered, failed, "5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"}
    ok = rows[answered]
    assert ok[1:6] == ("support-bot", "gpt-4o", "gpt-4o-2024-08-06", "openai", "How do I reset my password?")
    assert ok[6] == [{"role": "user", "content": "How do I reset my password?", "name": None, "tool_call_id": None,
                      "tool_calls": None}]  # a message's fields the span did not have are null
    assert ok[7:12] == ("Open Settings, then Security, then Reset.", 12, 9, "conv-7", answered.split("-")[0])
    assert ok[12] >= 0 and ok[13] is None and ok[14] == 0.2
    assert rows[failed][7] == "" and rows[failed][13] == "RateLimitError"
    legacy = rows["5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"]
    assert legacy[1:3] == ("writing-assistant", "m") and legacy[5] == "Write a haiku" and legacy[7] == "Leaves fall"
    assert legacy[12] == 250.0


def test_bad_otlp_requests_get_their_documented_answers_and_the_collector_keeps_serving(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    url = f"{collector}/v1/traces"
    protobuf = {**auth, "Content-Type": "application/x-protobuf"}
    r = httpx.post(url, content=b"\x0a\xff\xff\xff\xff\x0f\x01", headers=protobuf)
    assert r.status_code == 400 and "not a valid OTLP protobuf" in r.json()["error"]
    r = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not a valid OTLP JSON" in r.json()["error"]
    r = httpx.post(url, content=b"<spans/>", headers={**auth, "Content-Type": "application/xml"})
    assert r.status_code == 415 and "application/x-protobuf" in r.json()["error"]

    # Real spans, encoded as the SDK's exporter encodes them: one whose event breaks the contract, one without
    # captured content. Each alone is refused (422) with the reason in partial_success.
    answers = []
    for content, extra in ((True, {"gen_ai.usage.input_tokens": -5}), (False, {})):
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        _chat(provider, content=content, **extra)
        body = encode_spans(memory.get_finished_spans()).SerializeToString()
        answers.append(httpx.post(url, content=body, headers=protobuf))
    invalid, contentless = answers
    assert invalid.status_code == 422
    reply = ExportTraceServiceResponse.FromString(invalid.content)
    assert reply.partial_success.rejected_spans == 1
    assert "maps to an invalid inference event: `input_tokens` must be >= 0" in reply.partial_success.error_message
    assert contentless.status_code == 422
    reply = ExportTraceServiceResponse.FromString(contentless.content)
    assert "carries no captured input and output messages" in reply.partial_success.error_message
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in reply.partial_success.error_message
    assert count_messages(kafka_settings, kafka_settings.inference_topic) == 0
    # Mixed in one export, the accepted span is produced and the refused one counted: a partial success (200).
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _chat(provider)
    _chat(provider, content=False)
    r = httpx.post(url, content=encode_spans(memory.get_finished_spans()).SerializeToString(), headers=protobuf)
    assert r.status_code == 200
    assert ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans == 1
    assert count_messages(kafka_settings, kafka_settings.inference_topic) == 1
    assert httpx.get(f"{collector}/healthz").status_code == 200
    assert httpx.get(f"{collector}/readyz").status_code == 200


def test_the_span_mapping_skips_what_is_not_an_inference_and_reads_content_where_it_is() -> None:
    """Mapping is pure: a span without content is refused with its reason; a non-GenAI span is skipped."""
    base = dict(trace_id="ab" * 16, span_id="cd" * 8, name="chat m", start_time_unix_nano=1_764_590_400_000_000_000,
                end_time_unix_nano=1_764_590_401_000_000_000, resource={"service.name": "app"})
    http = otlp.Span(attributes={"http.method": "GET"}, **base)  # type: ignore[arg-type]
    assert otlp.map_span(http) is None
    embeddings = otlp.Span(attributes={"gen_ai.operation.name": "embeddings"}, **base)  # type: ignore[arg-type]
    assert otlp.map_span(embeddings) is None
    bare = otlp.Span(attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
                     **base)  # type: ignore[arg-type]
    refused = otlp.map_span(bare)
    assert isinstance(refused, otlp.Refusal) and "no captured input and output" in refused.reason
    details = otlp.SpanEvent("gen_ai.client.inference.operation.details", 0, {
        "gen_ai.input.messages": json.dumps(INPUT), "gen_ai.output.messages": json.dumps(OUTPUT),
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}])})
    on_event = otlp.Span(attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
                         events=(details,), **base)  # type: ignore[arg-type]
    event = otlp.map_span(on_event)
    assert isinstance(event, otlp.Inference)
    assert [m.role for m in event.input] == ["system", "user"] and event.output.startswith("Open Settings")
    assert event.timestamp == "2025-12-01T12:00:00.000000Z" and event.latency_ms == 1000.0
    wire = json.loads(event.payload())
    assert wire["metadata"]["otel"]["span_id"] == "cd" * 8 and "model_version" not in wire


def test_tool_call_parts_and_tool_definitions_map_to_the_contracts_tool_fields() -> None:
    """GenAI semantic conventions: `tool_call` / `tool_call_response` parts and `gen_ai.tool.definitions` become
    OpenAI-shaped `tool_calls`, `tool` messages and `tools`, which the contract accepts."""
    from flywheel.schemas.contract import INFERENCE
    from flywheel.schemas.validation import validate_payload

    base = dict(trace_id="ab" * 16, span_id="cd" * 8, name="chat m", start_time_unix_nano=1_764_590_400_000_000_000,
                end_time_unix_nano=1_764_590_401_000_000_000, resource={"service.name": "app"})
    messages = [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather",
                                         "arguments": {"location": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "18 C"}]},
    ]
    tools = [{"type": "function", "name": "get_weather", "description": "Current weather",
              "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]
    span = otlp.Span(attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                                 "gen_ai.input.messages": json.dumps(messages),
                                 "gen_ai.output.messages": json.dumps(OUTPUT),
                                 "gen_ai.tool.definitions": json.dumps(tools)}, **base)  # type: ignore[arg-type]
    event = otlp.map_span(span)
    assert isinstance(event, otlp.Inference)
    wire = json.loads(event.payload())
    assert wire["input"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"location": "Paris"}'}}]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}]
    assert wire["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    assert validate_payload(INFERENCE, event.payload()) == []

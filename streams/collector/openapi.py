"""The collector's OpenAPI 3.1 document, served at `/openapi.json`; the event schemas come from the contract."""

from __future__ import annotations

from typing import Any

from flywheel.schemas.contract import FEEDBACK, INFERENCE
from flywheel.schemas.docs import json_schema

_ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "What went wrong and what to do."},
    "errors": {"type": "array", "description": "400 only: every reason of every bad line.", "items": {
        "type": "object", "required": ["line", "field", "reason"], "properties": {
            "line": {"type": "integer", "description": "1-based line of the NDJSON batch (1 for a JSON body)."},
            "field": {"type": ["string", "null"], "description": "The field at fault, when one is."},
            "reason": {"type": "string"}}}}}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry_after:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return out


_COMMON = {
    "401": _error("No valid API key (`Authorization: Bearer <key>` or `X-API-Key`)."),
    "413": _error("The body (after gzip decoding) or the batch is over the configured limit."),
    "415": _error("Another content type, or a content encoding other than gzip."),
    "503": _error("The broker is unreachable or did not acknowledge in time: nothing was accepted; retry with the "
                  "same ids.", retry_after=True),
}


def _events(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"post": {
        "summary": f"Produce {name} events",
        "description": f"One {name} event (application/json) or one per line (application/x-ndjson). Answered "
                       "once the broker has acknowledged every event; a batch with a bad line is refused whole.",
        "security": [{"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": ref},
            "application/x-ndjson": {"schema": {"type": "string", "description": f"{name} events, one JSON "
                                                                                 "object per line"}}}},
        "responses": {
            "202": {"description": "Every event is acknowledged by the broker.", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"accepted": {"type": "integer"},
                                                            "ids": {"type": "array", "items": {"type": "string"}}}}}}},
            "400": _error("Some line breaks the contract (every reason listed); nothing was accepted."),
            **_COMMON}}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "flywheel collector", "version": "1",
                 "description": "Events over HTTP and OTLP/HTTP GenAI traces into the flywheel's Kafka topics."},
        "paths": {
            "/v1/inference": _events("inference"),
            "/v1/feedback": _events("feedback"),
            "/v1/traces": {"post": {
                "summary": "OTLP/HTTP traces (ExportTraceServiceRequest)",
                "description": "GenAI inference spans (gen_ai.operation.name chat, text_completion, "
                               "generate_content) become inference events; other spans are skipped. Spans without "
                               "captured content, or whose event breaks the contract, are refused and explained "
                               "in partial_success.",
                "security": [{"bearer": []}, {"apiKey": []}],
                "requestBody": {"required": True, "content": {"application/x-protobuf": {}, "application/json": {}}},
                "responses": {
                    "200": {"description": "ExportTraceServiceResponse, in the request's encoding; partial_success "
                                           "counts refused spans."},
                    "400": _error("The body is not an ExportTraceServiceRequest in the encoding it claims."),
                    "422": {"description": "Every GenAI span was refused: the ExportTraceServiceResponse's "
                                           "partial_success says why."},
                    **_COMMON}}},
            "/healthz": {"get": {"summary": "The process serves", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "The topics exist and the broker answers", "responses": {
                "200": {"description": "ready"}, "503": {"description": "not ready, with the reason"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
        "components": {
            "schemas": {"inference": json_schema(INFERENCE), "feedback": json_schema(FEEDBACK), "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }

"""The HTTP and OpenTelemetry collector: events over HTTP (JSON, NDJSON) and OTLP/HTTP GenAI spans, produced to
Kafka with the SDK's delivery guarantees (`flywheel collect`)."""

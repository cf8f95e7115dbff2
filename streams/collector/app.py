"""The collector's ASGI app: events over HTTP and OTLP/HTTP traces, produced to Kafka before the answer.

Answers (the OpenAPI document at `/openapi.json` states them too):
- `POST /v1/inference`, `POST /v1/feedback`: one JSON event (`application/json`) or a batch of them, one per line
  (`application/x-ndjson`). 202 `{"accepted": n, "ids": [...]}` once the broker acknowledged every event (acks=all,
  idempotent producer); 400 with every reason of every bad line (`errors: [{line, field, reason}]`), and then no
  event of the batch is produced, so a corrected batch can simply be sent again; 413 for a body over
  `max_body_bytes` or a batch over `max_batch_events`; 415 for another content type or encoding; 401 without a
  valid key; 503 with Retry-After while the broker is unreachable or did not acknowledge in time.
  Ids are the client's (the contract requires them): a retry with the same ids lands each event once.
- `POST /v1/traces`: OTLP/HTTP, protobuf or JSON, optionally gzip. GenAI inference spans become inference events
  (`flywheel.streams.collector.otlp`); other spans are skipped. 200 with an `ExportTraceServiceResponse` in the
  request's encoding (its `partial_success` counts and explains the refused spans: no captured content, or an event
  the contract rejects); 422 when spans were refused and none was accepted; 400 for a body that does not decode;
  415, 413, 401 and 503 as above.
- `GET /healthz` (the process serves), `GET /readyz` (topics exist and the broker answers), `GET /openapi.json`,
  `GET /metrics` (Prometheus text format: `flywheel.streams.metrics.CollectorMetrics`): no key needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable
from flywheel.schemas.contract import FEEDBACK, INFERENCE, EventType
from flywheel.schemas.validation import BatchValidator, check_event, parse_payload
from flywheel.streams.collector import otlp
from flywheel.streams.collector.openapi import document
from flywheel.streams.collector.producer import AckedProducer, Records, name_os_thread
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.metrics import CONTENT_TYPE, CollectorMetrics, exposition
from flywheel.streams.topics import ensure_topics

log = logging.getLogger("flywheel.collector")

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
VECTORIZED_MIN_EVENTS = 256
"""Batches of at least this many events are checked by the vectorized validator: below it, its fixed cost per call
(milliseconds: planning DuckDB's query) outweighs what it saves per event."""
WATCH_INTERVAL_S = 1.0
"""How often the collector retries creating the topics, or probes a broker that went away."""


class HttpError(Exception):
    """An answer other than success, with its status, JSON body and headers."""

    def __init__(self, status: int, error: str, *, headers: dict[str, str] | None = None,
                 errors: list[dict[str, object]] | None = None) -> None:
        self.status = status
        self.error = error
        self.headers = headers or {}
        self.errors = errors
        super().__init__(error)

    def response(self) -> JSONResponse:
        body: dict[str, object] = {"error": self.error}
        if self.errors is not None:
            body["errors"] = self.errors
        return JSONResponse(body, self.status, headers=self.headers)


@dataclass(frozen=True)
class FieldError:
    """One reason one line of a request breaks the contract; `field` is None for a line that is not an object."""

    line: int
    field: str | None
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


_FIELD = re.compile(r"`([^`]+)`")


def field_of(et: EventType, reason: str) -> str | None:
    """The field a contract reason is about: the one it names, or the one its cross-field rule is about."""
    named = _FIELD.search(reason)
    if named:
        return named.group(1)
    rule = next((r for r in et.rules if r.reason == reason), None)
    if rule is not None:
        return rule.fields[0] if rule.fields else str(rule.args[0])
    return "type" if "event was sent where" in reason else None


class _Slot:
    """A thread and the validators only it uses (a BatchValidator's DuckDB connection is not shared between
    threads): one request at a time is validated on it."""

    def __init__(self, n: int, max_event_bytes: int) -> None:
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"collector-validate-{n}",
                                         initializer=name_os_thread, initargs=(f"collector-val-{n}",))
        self.validators = {et.name: BatchValidator(et, max_bytes=max_event_bytes, threads=1)
                           for et in (INFERENCE, FEEDBACK)}


class Collector:
    """The state behind the routes: settings, the producer, and whether the topics are known to exist."""

    def __init__(self, settings: Settings, collector: CollectorSettings) -> None:
        collector.check_startable()
        self.settings = settings
        self.config = collector
        self.keys = collector.keys
        self.topics_ready = False
        self.producer: AckedProducer | None = None
        self.metrics = CollectorMetrics()
        self._topics = {"inference": settings.inference_topic, "feedback": settings.feedback_topic}
        # Requests are validated side by side, each on one slot's thread alone (threads=1): a request's 1,000 events
        # split over Arrow's and DuckDB's pools waited for those threads to be scheduled, which on a busy machine is
        # most of a request's time (bench, load average 11 on 2 cores: validating 1,000 events took 110 ms at the
        # median against 150 ms, p95 190 ms against 290 ms, for the same CPU); two requests on two slots need not
        # wait for each other.
        self._slots: asyncio.Queue[_Slot] = asyncio.Queue()
        self._all_slots = [_Slot(n, settings.max_event_bytes) for n in range(collector.validate_threads)]

    # ------------------------------------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.producer = AckedProducer(self.settings, self.config)
        loop = asyncio.get_running_loop()
        # Plan the validating queries now, not while the first large batches wait (as the landing worker does).
        await asyncio.gather(*(loop.run_in_executor(slot.thread, validator.validate, [b"{}"])
                               for slot in self._all_slots for validator in slot.validators.values()))
        for slot in self._all_slots:
            self._slots.put_nowait(slot)
        # What start-up allocated (modules, query plans) lives as long as the process: keep it out of the cyclic
        # collector's way, whose full passes over it would otherwise land in the middle of requests.
        gc.collect()
        gc.freeze()
        watch = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watch.cancel()
            await asyncio.get_running_loop().run_in_executor(None, self.producer.close)
            for slot in self._all_slots:
                slot.thread.shutdown()

    async def _watch(self) -> None:
        """Create the topics once the broker answers, and probe a broker that went away until it is back."""
        loop = asyncio.get_running_loop()
        assert self.producer is not None
        producer = self.producer
        while True:
            try:
                if not self.topics_ready:
                    created = await loop.run_in_executor(None, lambda: ensure_topics(self.settings, timeout=2.0))
                    self.topics_ready = True
                    producer.probe()
                    if created:
                        log.info("created topics %s", ", ".join(created))
                elif producer.brokers_down:
                    # Still down (requests get 503, readyz says so) until the producer is replaced and the topics
                    # are checked: a request taken in between went to the old producer, which the reset purges, or
                    # to a new broker without the topics, and waited out the delivery timeout for a 503.
                    if await loop.run_in_executor(None, lambda: producer.probe(clear=False)):
                        log.warning("the Kafka broker at %s answers again", self.settings.kafka_bootstrap)
                        await loop.run_in_executor(None, producer.reset)
                        # It may be a new cluster (or the embedded broker, which keeps nothing): check the topics,
                        # then probe (which clears brokers_down).
                        self.topics_ready = False
                        continue
            except BrokerUnavailable:
                pass  # not ready: requests get 503 meanwhile
            except Exception:  # keep watching whatever the admin client throws; say what it was
                log.exception("could not check the topics on %s", self.settings.kafka_bootstrap)
            await asyncio.sleep(WATCH_INTERVAL_S)

    @property
    def unready_reason(self) -> str | None:
        if not self.topics_ready:
            return f"the topics are not known to exist yet: no Kafka broker answered at {self.settings.kafka_bootstrap}"
        if self.producer is None or self.producer.brokers_down:
            return f"no Kafka broker answers at {self.settings.kafka_bootstrap}"
        return None

    # ------------------------------------------------------------------------------------------------ checks

    def authenticate(self, request: Request) -> None:
        if not self.keys and self.config.allow_anonymous:
            return
        auth = request.headers.get("authorization", "")
        presented = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
        if not self.keys.accepts(presented):
            raise HttpError(401, "a valid API key is required: send `Authorization: Bearer <key>` or "
                                 "`X-API-Key: <key>`", headers={"WWW-Authenticate": 'Bearer realm="flywheel"'})

    def unavailable(self, why: str) -> HttpError:
        return HttpError(503, f"{why}; nothing was accepted, retry later with the same ids",
                         headers={"Retry-After": str(self.config.retry_after_s)})

    def require_ready(self) -> None:
        reason = self.unready_reason
        if reason is not None:
            raise self.unavailable(reason)

    async def body(self, request: Request) -> bytes:
        """The request body, gzip-decoded if it says so, refused with 413 past `max_body_bytes` (before or after
        decoding, so a small bomb is refused too)."""
        limit = self.config.max_body_bytes
        too_large = HttpError(413, f"the body is larger than {limit} bytes (FLYWHEEL_COLLECTOR_MAX_BODY_BYTES): "
                                   "send smaller batches")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        raw = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding != "gzip":
            raise HttpError(415, f"content encoding {encoding!r} is not supported: send gzip or none")
        inflate = zlib.decompressobj(wbits=31)
        try:
            out = inflate.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise HttpError(400, f"the body is not valid gzip: {exc}") from None
        if len(out) > limit or inflate.unconsumed_tail:
            raise too_large
        if not inflate.eof:
            raise HttpError(400, "the body is not valid gzip: it ends before the end of its stream")
        return out

    # ------------------------------------------------------------------------------------------------ events

    async def events(self, request: Request, et: EventType) -> Response:
        self.authenticate(request)
        kind = _media_type(request)
        if kind not in JSON_TYPES + NDJSON_TYPES:
            raise HttpError(415, f"content type {kind or '(none)'!r} is not accepted here: send application/json "
                                 "(one event) or application/x-ndjson (one event per line)")
        self.require_ready()
        body = await self.body(request)
        # Split on b"\n" only: JSON strings may hold U+2028, which str.splitlines() would break on.
        # isspace(), not strip(): strip() would copy every line (a copy of the whole body) just to test it.
        lines = [body] if kind in JSON_TYPES else [ln for ln in body.split(b"\n") if ln and not ln.isspace()]
        if not lines or not body or body.isspace():
            raise HttpError(400, "the body holds no event")
        if len(lines) > self.config.max_batch_events:
            raise HttpError(413, f"{len(lines)} events in one request; at most {self.config.max_batch_events} "
                                 "(FLYWHEEL_COLLECTOR_MAX_BATCH_EVENTS)")
        records, ids, errors = await self._check(et, lines)
        if errors:
            bad = len({e.line for e in errors})
            self.metrics.refused.labels(et.name).inc(bad)
            raise HttpError(400, f"{bad} of {len(lines)} {et.name} events break the contract; none was accepted",
                            errors=[e.as_json() for e in errors])
        await self._produce(records)
        self.metrics.accepted.labels(et.name).inc(len(ids))
        self.metrics.batch_events.labels(et.name).observe(len(ids))
        return JSONResponse({"accepted": len(ids), "ids": ids}, 202)

    async def _check(self, et: EventType, lines: list[bytes]) -> tuple[Records, list[str], list[FieldError]]:
        """The records and ids of `lines`, or every reason some line breaks the contract. A large batch is
        checked by the landing worker's vectorized validator (in a thread: Arrow and DuckDB let go of the GIL),
        which took a third to a half of the per-event path's CPU per event at 500-1,000 events; the per-event
        path, whose reason texts are the same, runs for small batches and to explain a batch that failed."""
        if len(lines) >= VECTORIZED_MIN_EVENTS:
            slot = await self._slots.get()
            try:
                typed, reasons = await asyncio.get_running_loop().run_in_executor(
                    slot.thread, slot.validators[et.name].validate, lines)
            finally:
                self._slots.put_nowait(slot)
            if reasons.count(None) == len(reasons):
                ids = [str(i) for i in typed.column(et.id_field).to_pylist()]
                keys = [str(k) for k in typed.column("inference_id").to_pylist()]
                return Records(self._topics[et.name], keys, lines), ids, []
        return self._check_each(et, lines)

    def _check_each(self, et: EventType, lines: list[bytes]) -> tuple[Records, list[str], list[FieldError]]:
        keys, values, ids, errors = [], [], [], []
        for n, line in enumerate(lines, 1):
            obj, reasons = parse_payload(line, self.settings.max_event_bytes)
            if obj is not None:
                reasons = check_event(et, obj)
            if reasons:
                errors += [FieldError(n, field_of(et, r), r) for r in reasons]
                continue
            assert obj is not None
            ids.append(str(obj[et.id_field]))
            keys.append(str(obj["inference_id"]))
            values.append(line)
        return Records(self._topics[et.name], keys, values), ids, errors

    async def _produce(self, records: Records) -> None:
        assert self.producer is not None
        t0 = time.perf_counter()
        try:
            await self.producer.produce(records)
            self.metrics.produce_seconds.observe(time.perf_counter() - t0)
        except BrokerUnavailable as exc:
            log.warning("answering 503: %s", exc)
            raise self.unavailable(str(exc)) from None

    # ------------------------------------------------------------------------------------------------ traces

    async def traces(self, request: Request) -> Response:
        self.authenticate(request)
        kind = _media_type(request)
        if kind not in PROTOBUF_TYPES + JSON_TYPES:
            raise HttpError(415, f"content type {kind or '(none)'!r} is not OTLP/HTTP: send application/x-protobuf "
                                 "or application/json")
        self.require_ready()
        body = await self.body(request)
        try:
            spans = otlp.decode_protobuf(body) if kind in PROTOBUF_TYPES else otlp.decode_json(body)
        except otlp.OtlpDecodeError as exc:
            raise HttpError(400, str(exc)) from None
        keys: list[str] = []
        values: list[bytes] = []
        refused: list[str] = []
        for span in spans:
            mapped = otlp.map_span(span)
            if isinstance(mapped, otlp.Refusal):
                refused.append(mapped.reason)
            elif mapped is not None:
                payload = mapped.payload()
                obj, reasons = parse_payload(payload, self.settings.max_event_bytes)
                if obj is not None:
                    reasons = check_event(INFERENCE, obj)
                if reasons:
                    refused.append(f"{span.where} maps to an invalid inference event: {'; '.join(reasons)}")
                else:
                    keys.append(mapped.inference_id)
                    values.append(payload)
        if len(values) > self.config.max_batch_events:
            raise HttpError(413, f"{len(values)} GenAI spans in one export; at most {self.config.max_batch_events}")
        await self._produce(Records(self.settings.inference_topic, keys, values))
        if values:
            self.metrics.accepted.labels(INFERENCE.name).inc(len(values))
            self.metrics.batch_events.labels(INFERENCE.name).observe(len(values))
        if refused:
            self.metrics.refused.labels(INFERENCE.name).inc(len(refused))
            log.warning("refused %d of %d GenAI spans: %s", len(refused), len(refused) + len(values), refused[0])
        reply = ExportTraceServiceResponse()
        if refused:
            reply.partial_success.rejected_spans = len(refused)
            reply.partial_success.error_message = "; ".join(refused[:20]) + (
                f"; and {len(refused) - 20} more" if len(refused) > 20 else "")
        status = 422 if refused and not values else 200
        if kind in PROTOBUF_TYPES:
            return Response(reply.SerializeToString(), status, media_type="application/x-protobuf")
        return JSONResponse(json_format.MessageToDict(reply), status)

    # ------------------------------------------------------------------------------------------------ probes

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        reason = self.unready_reason
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable", "reason": reason}, 503,
                            headers={"Retry-After": str(self.config.retry_after_s)})

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(document())

    async def prometheus(self, _request: Request) -> Response:
        return Response(exposition(self.metrics.registry), media_type=CONTENT_TYPE)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def create_app(settings: Settings, collector: CollectorSettings) -> Starlette:
    """The collector as an ASGI app (serve it with uvicorn, as `flywheel collect` does). Raises `ConfigError` when
    no API key is configured and anonymous access was not asked for."""
    c = Collector(settings, collector)

    def answering(path: str, handler: Callable[[Request], Awaitable[Response]]) -> Route:
        """The route, answering `HttpError`s with their response, and counted and timed in the metrics (from the
        request's arrival to its answer being ready: reading the body and the broker's acknowledgement included)."""
        latency = c.metrics.latency.labels(path)

        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            response: Response | None = None
            try:
                response = await handler(request)
            except HttpError as exc:
                response = exc.response()
            finally:
                latency.observe(time.perf_counter() - t0)
                # An exception that escapes is answered 500 by the server.
                c.metrics.requests.labels(path, str(response.status_code) if response is not None else "500").inc()
            return response

        return Route(path, endpoint, methods=["POST"] if path.startswith("/v1/") else ["GET"])

    routes = [
        answering("/v1/inference", lambda r: c.events(r, INFERENCE)),
        answering("/v1/feedback", lambda r: c.events(r, FEEDBACK)),
        answering("/v1/traces", c.traces),
        answering("/healthz", c.healthz),
        answering("/readyz", c.readyz),
        answering("/openapi.json", c.openapi),
        Route("/metrics", c.prometheus, methods=["GET"]),  # not counted: scrapes would count themselves
    ]
    app = Starlette(routes=routes, lifespan=c.lifespan)
    app.state.collector = c
    return app

"""Prometheus metrics of the long-running processes: the landing worker, the live-signals worker, the collector.

Each process keeps its metrics in a registry of its own (one per worker or app object, so that tests running
several in one process read each one's exact values), and serves it in the Prometheus text format: the workers on
`MetricsSettings.port` (`serve()`, a small HTTP server in a thread, off unless a port is set), the collector at
`GET /metrics` on its own port. Names carry the `flywheel_` prefix and Prometheus' unit suffixes; labels are
topics, partitions, tables, routes and status codes only: never a key, a URL or an event's content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from flywheel.config import env_settings
from flywheel.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EVENT_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
BYTE_BUCKETS = tuple(float(1024 * 4 ** k) for k in range(10))  # 1 KiB .. 256 MiB
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class MetricsSettings:
    metrics_port: int = 0
    """FLYWHEEL_METRICS_PORT: port on which `flywheel ingest` and `flywheel signals` serve Prometheus metrics at
    /metrics (0: not served; give each process its own, e.g. with --metrics-port). The collector serves /metrics
    on its own port regardless."""

    metrics_host: str = "127.0.0.1"
    """FLYWHEEL_METRICS_HOST: address the workers' metrics endpoint listens on (0.0.0.0 for a remote scraper)."""

    def __post_init__(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"FLYWHEEL_METRICS_PORT must be 0..65535, got {self.metrics_port}",
                              variable="FLYWHEEL_METRICS_PORT")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MetricsSettings:
        return env_settings(cls, "FLYWHEEL_", environ)


class MetricsServer:
    """A registry served over HTTP in a daemon thread, until `close()`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port} ({exc.strerror}): choose another port with "
                              "FLYWHEEL_METRICS_PORT or --metrics-port", variable="FLYWHEEL_METRICS_PORT") from None
        server: WSGIServer = self._server
        self.host, self.port = host, server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (for an app that serves it on its own routes)."""
    return generate_latest(registry)


class IngestMetrics:
    """The landing worker's. At any scrape, `events_consumed_total` = the sum of `events_landed_total` over its
    tables + `events_quarantined_total` + `replays_dropped_total` (each consumed message is a row of exactly one
    table, landed or dropped as a replay); all count committed batches only."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.consumed = Counter("flywheel_ingest_events_consumed", "Messages consumed and landed (in committed "
                                "batches), valid or not", registry=r)
        self.consumed_bytes = Counter("flywheel_ingest_consumed_bytes", "Payload bytes of those messages",
                                      registry=r)
        self.landed = Counter("flywheel_ingest_events_landed", "Valid events committed to the lake", ["table"],
                              registry=r)
        self.quarantined = Counter("flywheel_ingest_events_quarantined", "Invalid events committed to the "
                                   "quarantine table (and produced to the dead-letter topic)", registry=r)
        self.replays = Counter("flywheel_ingest_replays_dropped", "Rows dropped at commit because their table "
                               "already held them", ["topic", "table"], registry=r)
        self.offset_gaps = Counter("flywheel_ingest_offset_gaps", "Jumps in a partition's offsets: `reread` (the "
                                   "batch was dropped and read again), `accepted` (offsets without data)",
                                   ["topic", "outcome"], registry=r)
        self.dead_letter_failures = Counter("flywheel_ingest_dead_letter_failures", "Dead-letter deliveries the "
                                            "dead-letter topic did not acknowledge (each attempt)", registry=r)
        self.batches = Counter("flywheel_ingest_batches", "Batches committed", registry=r)
        self.batch_events = Histogram("flywheel_ingest_batch_events", "Messages per committed batch",
                                      buckets=EVENT_BUCKETS, registry=r)
        self.batch_bytes = Histogram("flywheel_ingest_batch_bytes", "Payload bytes per committed batch",
                                     buckets=BYTE_BUCKETS, registry=r)
        self.commit_seconds = Histogram("flywheel_ingest_commit_duration_seconds", "Time of one table's lake "
                                        "commit (rows and watermarks)", ["table"], buckets=SECOND_BUCKETS,
                                        registry=r)
        self.lag = Gauge("flywheel_ingest_consumer_lag", "Messages of a partition this worker owns that are not "
                         "landed yet: the broker's end as last fetched minus the next offset landed",
                         ["topic", "partition"], registry=r)
        self.lake_unwritable = Gauge("flywheel_ingest_lake_unwritable", "1 while the lake's filesystem refuses "
                                     "this worker's commits (full, read-only, permission): it holds its offsets "
                                     "and retries", registry=r)
        self.lake_write_failures = Counter("flywheel_ingest_lake_write_failures", "Commits the lake's filesystem "
                                           "refused", ["table", "reason"], registry=r)
        self.last_landed = Gauge("flywheel_ingest_last_landed_timestamp_seconds", "Unix time the last rows "
                                 "became durable", registry=r)


class SignalMetrics:
    """The live-signals worker's."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("flywheel_signals_events", "Events read from the source topics", ["topic"],
                              registry=r)
        self.alerts = Counter("flywheel_signals_alerts", "Live-signal alerts handed to the outbox (new ones only)",
                              ["signal"], registry=r)
        self.checks = Histogram("flywheel_signals_check_duration_seconds", "Time of one judgement of the current "
                                "windows (and delivery of due alerts)", buckets=SECOND_BUCKETS, registry=r)
        self.volume_skipped = Counter("flywheel_signals_volume_windows_skipped", "Complete windows whose volume "
                                      "was not judged: the worker was behind its topics until the next one ended",
                                      registry=r)
        self.outbox_depth = Gauge("flywheel_outbox_depth", "Alerts in the outbox not delivered yet (as of the "
                                  "last check)", registry=r)


class CollectorMetrics:
    """The collector's. `route` is the route's path (unknown paths are not counted), `status` the answer's code."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("flywheel_collector_requests", "Requests answered", ["route", "status"],
                                registry=r)
        self.latency = Histogram("flywheel_collector_request_duration_seconds", "Time from the request's arrival "
                                 "to its answer (the broker's acknowledgement included)", ["route"],
                                 buckets=SECOND_BUCKETS, registry=r)
        self.accepted = Counter("flywheel_collector_events_accepted", "Events the broker acknowledged",
                                ["type"], registry=r)
        self.refused = Counter("flywheel_collector_events_refused", "Events (lines or spans) refused for "
                               "breaking the contract", ["type"], registry=r)
        self.batch_events = Histogram("flywheel_collector_batch_events", "Events per accepted request",
                                      ["type"], buckets=EVENT_BUCKETS, registry=r)
        self.produce_seconds = Histogram("flywheel_collector_produce_duration_seconds", "Time from handing a "
                                         "request's events to the producer to the broker's last acknowledgement",
                                         buckets=SECOND_BUCKETS, registry=r)

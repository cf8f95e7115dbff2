"""The landing worker's Prometheus metrics, scraped over HTTP while it runs, and its JSON log lines: exact counts
against what was produced, on the embedded broker and a real lake."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from flywheel.logs import JsonFormatter
from flywheel.schemas.arrow import SCHEMAS
from flywheel.schemas.contract import event_type_of
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.metrics import MetricsServer
from flywheel.streams.topics import topic_ids
from flywheel.warehouse.lake import Lake

from .conftest import Produced, read_topic


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_over_http_count_what_a_running_worker_landed_and_a_replay_logs_json(
        produced: Produced, sample_events: list[dict[str, Any]]) -> None:
    s = produced.settings
    events = sample_events[:120]
    for e in events:
        produced.event(e)
    for i in range(4):
        produced.raw("feedback", "junk", b"not json %d" % i)
    produced.flush()
    inferences = [e for e in events if event_type_of(e).name == "inference"]
    feedback = [e for e in events if event_type_of(e).name == "feedback"]
    total = len(events) + 4
    # A table that already claims partition 0's first offsets, as after a crash between two tables' commits:
    # the worker reads them again (the quarantine table never landed them) and drops them there as replays.
    on_p0 = sum(m.partition() == 0 for m in read_topic(s, s.inference_topic, s.partitions))
    replays = min(5, on_p0)
    assert replays > 0
    lake = Lake(s.lake)
    lake.ensure()
    ids = topic_ids(s, [s.inference_topic])
    lake.commit("inferences", SCHEMAS["inferences"].empty_table(), {(s.inference_topic, 0): replays}, ids)

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    ingest_log = logging.getLogger("flywheel.ingest")
    ingest_log.addHandler(handler)
    worker = IngestWorker(s)
    server = MetricsServer(worker.metrics.registry, "127.0.0.1", 0)
    running = threading.Thread(target=worker.run, daemon=True)
    running.start()
    try:
        deadline = time.monotonic() + 60
        got = scrape(server.url)

        def settled() -> bool:
            # the lag gauges are set by the consuming thread once it collects a landed batch, up to a poll later
            # than the landing thread counts it: wait for both, then assert on one scrape
            lagged = sum(name == "flywheel_ingest_consumer_lag" and dict(labels)["topic"] == s.inference_topic
                         for name, labels in got)
            return got.get(("flywheel_ingest_events_consumed_total", ()), 0) >= total and lagged >= s.partitions

        while not settled() and time.monotonic() < deadline:
            time.sleep(0.2)
            got = scrape(server.url)
        assert running.is_alive()  # scraped while the worker runs
    finally:
        worker.stop()
        running.join(30)
        server.close()
        ingest_log.removeHandler(handler)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    consumed = value("flywheel_ingest_events_consumed_total")
    landed = {t: value("flywheel_ingest_events_landed_total", table=t) for t in ("inferences", "feedback")}
    quarantined = value("flywheel_ingest_events_quarantined_total")
    replayed = value("flywheel_ingest_replays_dropped_total", topic=s.inference_topic, table="inferences")
    assert consumed == total
    assert landed == {"inferences": len(inferences) - replays, "feedback": len(feedback)}
    assert quarantined == 4 and replayed == replays
    assert consumed == sum(landed.values()) + quarantined + replayed
    assert value("flywheel_ingest_consumed_bytes_total") == worker.stats.consumed_bytes > 0
    # Batch sizes: every committed batch observed once, their events adding up to what was consumed.
    batches = value("flywheel_ingest_batches_total")
    assert value("flywheel_ingest_batch_events_count") == batches >= 1
    assert value("flywheel_ingest_batch_events_sum") == total
    assert value("flywheel_ingest_batch_bytes_sum") == worker.stats.consumed_bytes
    commits = value("flywheel_ingest_commit_duration_seconds_count", table="inferences")
    assert commits >= 1 and value("flywheel_ingest_commit_duration_seconds_sum", table="inferences") > 0
    # Lag per partition: every partition was landed to the broker's end.
    lags = {dict(labels)["partition"]: v for (name, labels), v in got.items()
            if name == "flywheel_ingest_consumer_lag" and dict(labels)["topic"] == s.inference_topic}
    assert lags == {str(p): 0.0 for p in range(s.partitions)}
    assert value("flywheel_ingest_last_landed_timestamp_seconds") > time.time() - 120

    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    replay = [r for r in records if "as replays" in r["message"]]
    assert sum(r["count"] for r in replay) == replays, records  # one line per batch that held replays
    first = replay[0]
    assert first["level"] == "warning" and first["logger"] == "flywheel.ingest" and first["table"] == "inferences"
    assert (first["topic"], first["partition"], first["offset"]) == (s.inference_topic, 0, 0)
    assert first["offsets"] == f"0..{first['count'] - 1}" and first["time"].endswith("+00:00")

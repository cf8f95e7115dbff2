"""The collector's /metrics: request counts by route and status, the latency histogram, events accepted and
refused, scraped over HTTP from a real collector after real posts."""

from __future__ import annotations

import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of

NDJSON = {"Content-Type": "application/x-ndjson"}


def _samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{base}/metrics")  # no key: like /healthz
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_by_status_and_time_them(collector: str, auth: dict[str, str]) -> None:
    events = list(generate(load_corpus(), 200, seed=3))
    inferences = [e for e in events if event_type_of(e).name == "inference"]
    body = b"".join(json.dumps(e).encode() + b"\n" for e in inferences)
    for _ in range(3):
        assert httpx.post(f"{collector}/v1/inference", content=body, headers={**auth, **NDJSON}).status_code == 202
    bad: dict[str, Any] = {**inferences[0], "input": None}
    assert httpx.post(f"{collector}/v1/inference", json=bad, headers=auth).status_code == 400
    assert httpx.post(f"{collector}/v1/inference", json=inferences[0]).status_code == 401
    assert httpx.get(f"{collector}/healthz").status_code == 200

    got = _samples(collector)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    route = "/v1/inference"
    assert value("flywheel_collector_requests_total", route=route, status="202") == 3
    assert value("flywheel_collector_requests_total", route=route, status="400") == 1
    assert value("flywheel_collector_requests_total", route=route, status="401") == 1
    assert value("flywheel_collector_requests_total", route="/healthz", status="200") == 1
    assert value("flywheel_collector_request_duration_seconds_count", route=route) == 5
    assert value("flywheel_collector_request_duration_seconds_bucket", route=route, le="+Inf") == 5
    assert 0 < value("flywheel_collector_request_duration_seconds_sum", route=route) < 30
    assert value("flywheel_collector_events_accepted_total", type="inference") == 3 * len(inferences)
    assert value("flywheel_collector_events_refused_total", type="inference") == 1
    assert value("flywheel_collector_batch_events_count", type="inference") == 3
    assert value("flywheel_collector_batch_events_sum", type="inference") == 3 * len(inferences)
    assert value("flywheel_collector_produce_duration_seconds_count") == 3
    # Scrapes are not counted, and no label holds a key.
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in got)
    assert not any(auth["Authorization"][7:] in str(labels) for _, labels in got)

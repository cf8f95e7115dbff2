"""The HTTP collector: valid, invalid, oversized, unauthenticated and broker-down requests, and what lands."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from flywheel.config import Settings
from flywheel.errors import ConfigError
from flywheel.infra import broker as embedded
from flywheel.infra.testing.collector import serving
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams.collector.app import VECTORIZED_MIN_EVENTS
from flywheel.streams.collector.settings import CollectorSettings
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.query import connect

NDJSON = {"Content-Type": "application/x-ndjson"}


def _events(n: int, seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    evs = list(generate(load_corpus(), n, seed=seed))
    return ([e for e in evs if event_type_of(e).name == "inference"],
            [e for e in evs if event_type_of(e).name == "feedback"])


def _ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)


def test_valid_events_are_acknowledged_before_the_answer_and_land_exactly_once(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    s = kafka_settings
    inferences, feedback = _events(300)
    one, batch = inferences[0], inferences[1:]
    assert len(batch) >= VECTORIZED_MIN_EVENTS > len(feedback)  # both ways of checking a batch are exercised
    r = httpx.post(f"{collector}/v1/inference", json=one, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "ids": [one["inference_id"]]}
    r = httpx.post(f"{collector}/v1/inference", content=_ndjson(batch), headers={**auth, **NDJSON})
    assert r.status_code == 202, r.text
    assert r.json()["ids"] == [e["inference_id"] for e in batch]
    r = httpx.post(f"{collector}/v1/feedback", content=gzip.compress(_ndjson(feedback)),
                   headers={**auth, **NDJSON, "Content-Encoding": "gzip"})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(feedback)
    # Answered only after the broker acknowledged: every event is in the topic the moment the answer arrives.
    assert count_messages(s, s.inference_topic) == len(inferences)
    assert count_messages(s, s.feedback_topic) == len(feedback)

    IngestWorker(s).run(until_idle=2)
    con = connect(s)
    assert con.execute("SELECT count(*) FROM lake_inferences").fetchone() == (len(inferences),)
    assert con.execute("SELECT count(*) FROM lake_feedback").fetchone() == (len(feedback),)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    landed = {row[0] for row in con.execute("SELECT inference_id FROM inferences").fetchall()}
    assert landed == {e["inference_id"] for e in inferences}

    # A client that retries a batch it got no answer for, with the same ids, still sees each event once.
    r = httpx.post(f"{collector}/v1/inference", content=_ndjson(batch[:30]), headers={**auth, **NDJSON})
    assert r.status_code == 202
    IngestWorker(s).run(until_idle=2)
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id) FROM inferences").fetchone() == (
        len(inferences), len(inferences))


def test_large_batches_posted_at_once_are_each_answered_for_their_own_events(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    """Requests validated side by side (FLYWHEEL_COLLECTOR_VALIDATE_THREADS, 2 by default) keep their verdicts
    and ids apart: the valid batches land whole, the one with a bad line gets its reason and lands nothing."""
    s = kafka_settings
    inferences, _ = _events(1400, seed=9)
    size = VECTORIZED_MIN_EVENTS + 20
    good = [inferences[i * size:(i + 1) * size] for i in range(3)]
    bad = [dict(e) for e in inferences[3 * size:4 * size]]
    bad[7]["input_tokens"] = -3
    assert all(len(b) == size for b in [*good, bad])

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=collector, headers={**auth, **NDJSON}, timeout=60) as http:
            return list(await asyncio.gather(*(http.post("/v1/inference", content=_ndjson(b))
                                               for b in [good[0], bad, good[1], good[2]])))

    answers = asyncio.run(post_all())
    assert [r.status_code for r in answers] == [202, 400, 202, 202], [r.text[:200] for r in answers]
    for r, batch in zip([answers[0], answers[2], answers[3]], good, strict=True):
        assert r.json()["ids"] == [e["inference_id"] for e in batch]
    assert [(e["line"], e["field"]) for e in answers[1].json()["errors"]] == [(8, "input_tokens")]
    assert count_messages(s, s.inference_topic) == 3 * size


def test_a_batch_with_bad_lines_is_refused_whole_with_every_field_error(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    inferences, feedback = _events(10)
    bad = {k: v for k, v in inferences[1].items() if k != "model"} | {"latency_ms": -3}
    body = _ndjson([inferences[0], bad]) + b'{"inference_id": "x", oops\n'
    r = httpx.post(f"{collector}/v1/inference", content=body, headers={**auth, **NDJSON})
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [
        {"line": 2, "field": "model", "reason": "missing required field `model`"},
        {"line": 2, "field": "latency_ms", "reason": "`latency_ms` must be >= 0"},
        {"line": 3, "field": None, "reason": "payload is not valid JSON"},
    ]
    assert "2 of 3 inference events break the contract; none was accepted" in r.json()["error"]
    thumbs = {"feedback_id": "f1", "inference_id": "i1", "timestamp": "2026-01-01T00:00:00Z", "kind": "thumbs",
              "value": 3}
    r = httpx.post(f"{collector}/v1/feedback", json=thumbs, headers=auth)
    assert r.status_code == 400
    assert r.json()["errors"] == [{"line": 1, "field": "value", "reason": "thumbs feedback needs value 1 or -1"}]
    # A batch large enough for the vectorized check: one bad line, found and explained as in a small batch.
    large, _ = _events(450, seed=9)
    large = large[:VECTORIZED_MIN_EVENTS] + [{**large[0], "input_tokens": 1.5}]
    r = httpx.post(f"{collector}/v1/inference", content=_ndjson(large), headers={**auth, **NDJSON})
    assert r.status_code == 400
    assert r.json()["errors"] == [{"line": len(large), "field": "input_tokens", "reason": "`input_tokens` must be "
                                                                                        "an integer"}]
    # An inference posted where feedback belongs is named as such.
    r = httpx.post(f"{collector}/v1/feedback", json={**inferences[0], "type": "inference"}, headers=auth)
    assert r.status_code == 400 and any(e["field"] == "type" for e in r.json()["errors"])
    r = httpx.post(f"{collector}/v1/inference", content=b"   \n", headers={**auth, **NDJSON})
    assert r.status_code == 400 and r.json()["error"] == "the body holds no event"
    r = httpx.post(f"{collector}/v1/inference", content=b"a,b\n", headers={**auth, "Content-Type": "text/csv"})
    assert r.status_code == 415 and "application/x-ndjson" in r.json()["error"]
    s = kafka_settings
    assert count_messages(s, s.inference_topic) == 0 and count_messages(s, s.feedback_topic) == 0


def test_oversized_bodies_batches_and_events_are_refused(
        collector: str, kafka_settings: Settings, auth: dict[str, str], count_messages: Callable[..., int]) -> None:
    # The fixture's limits: 1 MiB bodies, 500 events a batch; events above Settings.max_event_bytes (1 MiB).
    inferences, _ = _events(1500)
    big = _ndjson(inferences[:1000])
    assert len(big) > 1024 * 1024
    r = httpx.post(f"{collector}/v1/inference", content=big, headers={**auth, **NDJSON})
    assert r.status_code == 413 and "FLYWHEEL_COLLECTOR_MAX_BODY_BYTES" in r.json()["error"]
    # Small on the wire, large once inflated: refused after decoding, without inflating it all.
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    r = httpx.post(f"{collector}/v1/inference", content=bomb,
                   headers={**auth, **NDJSON, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    tiny = [{"inference_id": f"i{i}", "timestamp": "2026-01-01T00:00:00Z", "app": "a", "model": "m",
             "input": "q", "output": "a"} for i in range(501)]
    r = httpx.post(f"{collector}/v1/inference", content=_ndjson(tiny), headers={**auth, **NDJSON})
    assert r.status_code == 413 and "FLYWHEEL_COLLECTOR_MAX_BATCH_EVENTS" in r.json()["error"]
    r = httpx.post(f"{collector}/v1/inference", content=gzip.compress(_ndjson(inferences[:5]))[:-20],
                   headers={**auth, **NDJSON, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "not valid gzip" in r.json()["error"]
    r = httpx.post(f"{collector}/v1/inference", content=b"x", headers={**auth, **NDJSON, "Content-Encoding": "br"})
    assert r.status_code == 415
    s = kafka_settings
    assert count_messages(s, s.inference_topic) == 0


def test_an_event_over_the_event_size_limit_is_a_field_error(
        kafka_settings: Settings, auth: dict[str, str]) -> None:
    s = kafka_settings.replace(max_event_bytes=2000)
    with serving(s, CollectorSettings(api_keys="test-key-0123456789")) as base:
        _wait(base)
        event = {"inference_id": "i1", "timestamp": "2026-01-01T00:00:00Z", "app": "a", "model": "m",
                 "input": "q" * 3000, "output": "a"}
        r = httpx.post(f"{base}/v1/inference", json=event, headers=auth)
        assert r.status_code == 400
        [err] = r.json()["errors"]
        assert err["field"] is None and err["reason"].endswith("exceeds the 2000-byte limit")


def test_requests_without_a_valid_key_are_refused(collector: str, kafka_settings: Settings,
                                                  count_messages: Callable[..., int]) -> None:
    inferences, _ = _events(3)
    url = f"{collector}/v1/inference"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key-0123456789"},
                    {"X-API-Key": "test-key-012345678"}):
        r = httpx.post(url, json=inferences[0], headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer") and "test-key" not in r.text
    assert httpx.post(f"{collector}/v1/traces", content=b"", headers={"Content-Type": "application/x-protobuf"}
                      ).status_code == 401
    assert count_messages(kafka_settings, kafka_settings.inference_topic) == 0
    for headers in ({"X-API-Key": "test-key-0123456789"}, {"Authorization": "bearer other-key"}):
        assert httpx.post(url, json=inferences[0], headers=headers).status_code == 202
    # Probes and the API's description need no key.
    assert httpx.get(f"{collector}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{collector}/readyz").status_code == 200
    spec = httpx.get(f"{collector}/openapi.json").json()
    assert spec["openapi"].startswith("3.1") and {"/v1/inference", "/v1/feedback", "/v1/traces"} <= set(spec["paths"])
    assert "model" in spec["components"]["schemas"]["inference"]["required"]


def test_without_a_broker_every_request_is_answered_503_with_retry_after(tmp_path, auth: dict[str, str]) -> None:
    nothing = Settings(home=tmp_path / "home", broker_port=embedded.free_port())
    inferences, _ = _events(3)
    with serving(nothing, CollectorSettings(api_keys="test-key-0123456789", retry_after_s=7)) as base:
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and str(nothing.kafka_bootstrap) in ready.json()["reason"]
        t0 = time.monotonic()
        r = httpx.post(f"{base}/v1/inference", json=inferences[0], headers=auth)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert "nothing was accepted" in r.json()["error"]
        assert time.monotonic() - t0 < 2


def test_a_broker_that_goes_away_is_503_not_a_silent_drop(tmp_path, auth: dict[str, str],
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """A broker of the test's own, stopped under a ready collector: requests wait at most the delivery timeout,
    get 503, and the collector is ready again once a broker is back. Once stopped, the collector's producers are
    gone: none is left to log a failed connection every second (it did, to the end of the test run)."""
    s = Settings(home=tmp_path / "home", broker_port=embedded.free_port(), partitions=1)
    inferences, _ = _events(20)
    embedded.start(s)
    try:
        with serving(s, CollectorSettings(api_keys="test-key-0123456789", delivery_timeout_s=2)) as base:
            _wait(base)
            assert httpx.post(f"{base}/v1/inference", json=inferences[0], headers=auth).status_code == 202
            embedded.stop(s)
            t0 = time.monotonic()
            r = httpx.post(f"{base}/v1/inference", json=inferences[1], headers=auth, timeout=30)
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            assert time.monotonic() - t0 < 10
            embedded.start(s)  # a new, empty broker (memory storage): the collector creates the topics again
            _wait(base, timeout=30)
            assert httpx.post(f"{base}/v1/inference", json=inferences[2], headers=auth).status_code == 202
    finally:
        embedded.stop(s)
    capfd.readouterr()
    time.sleep(2.5)  # librdkafka retries a lost broker within a second (reconnect.backoff.max.ms)
    assert "Connection refused" not in capfd.readouterr().err


def test_the_collector_will_not_start_with_no_key_unless_asked() -> None:
    with pytest.raises(ConfigError, match="FLYWHEEL_COLLECTOR_API_KEYS") as err:
        CollectorSettings().check_startable()
    assert err.value.variable == "FLYWHEEL_COLLECTOR_API_KEYS"
    CollectorSettings(allow_anonymous=True).check_startable()
    s = CollectorSettings(api_keys="s3cret-a, s3cret-b")
    assert "s3cret" not in repr(s) and "s3cret" not in repr(s.keys)
    assert s.keys.accepts("s3cret-b") and not s.keys.accepts("s3cret") and not s.keys.accepts(None)


def _wait(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/readyz").status_code != 200:
        assert time.monotonic() < deadline, f"{base} not ready"
        time.sleep(0.1)

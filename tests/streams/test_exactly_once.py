"""Exactly once under SIGKILL: 200k events, the worker killed at random moments while landing, then restarted; with
the lake on local disk and on an S3-compatible store (moto's server on 127.0.0.1, the reliability tier)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, hostile_payloads, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.warehouse.query import connect

from .conftest import Produced

N_INFERENCES = 120_000  # with their feedback, about 200k events


def _env(s: Settings, lake: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port),
            "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_INGEST_GROUP": s.ingest_group,
            "FLYWHEEL_FLUSH_MAX_EVENTS": "5000", "FLYWHEEL_FLUSH_INTERVAL_S": "0.5",
            "FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS": "6000", **(lake or {})}


def _landed(s: Settings) -> int:
    where = s.lake_location
    if where.remote:
        uri = where.join("inferences")
        if not DeltaTable.is_deltatable(uri, where.storage_options):
            return 0
        return int(DeltaTable(uri, storage_options=where.storage_options).to_pyarrow_dataset().count_rows())
    path = Path(s.lake) / "inferences"
    if not DeltaTable.is_deltatable(str(path)):
        return 0
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return 0
    return int(duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0])


def lake_on(where: str, s: Settings, request: pytest.FixtureRequest) -> tuple[Settings, dict[str, str]]:
    """`s` with its lake on local disk (`where` "local") or in a fresh bucket on moto ("s3"), and the variables a
    worker subprocess needs to open it (the AWS keys are set in this process's environment too, for the reads)."""
    if where == "local":
        return s, {}
    server = request.getfixturevalue("s3_server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    s = server.lake(s)
    env = server.lake_environment(s)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    return s, env


LAKES = ["local", pytest.param("s3", marks=pytest.mark.reliability)]


@pytest.mark.slow
@pytest.mark.reliability  # fault injection: SIGKILLs a landing worker at random moments over 200k events
@pytest.mark.parametrize("where", LAKES)
def test_sigkill_at_random_moments_lands_every_event_exactly_once(produced: Produced, where: str,
                                                                  request: pytest.FixtureRequest) -> None:
    s, lake_env = lake_on(where, produced.settings.replace(partitions=3), request)
    produced.settings = s
    events = list(generate(load_corpus(), N_INFERENCES, seed=99, prefix="eo"))
    valid_inf = [e for e in events if event_type_of(e).name == "inference"]
    hostile = hostile_payloads(valid_inf[:500], 2000, seed=3, big_bytes=2 * 1024 * 1024)
    for i, e in enumerate(events):
        produced.event(e)
        if i % 100 == 0 and hostile:
            label, payload = hostile.pop()
            produced.raw("inference", label, payload)
    produced.flush()
    total_events = len(events) + len(produced.hostile)
    assert total_events >= 200_000

    rng = random.Random(2026)
    cmd = [sys.executable, "-m", "flywheel.cli", "-v", "ingest"]
    kills, progress = 0, []
    while kills < 6:
        before = _landed(s)
        proc = subprocess.Popen(cmd, env=_env(s, lake_env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment once this worker has landed something, i.e. while it lands.
        deadline = time.monotonic() + 120
        while _landed(s) == before and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress.append(_landed(s))
    final = subprocess.run(cmd[:-1] + ["ingest", "--until-idle", "5"], env=_env(s, lake_env), capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]

    mid_flight = [p for p in progress if 0 < p < len(valid_inf)]
    assert len(mid_flight) >= 3, f"kills did not land mid-flight: {progress}"
    con = connect(s)
    q = con.execute
    expect_inf = {e["inference_id"] for e in valid_inf}
    expect_fb = {e["feedback_id"] for e in events if "feedback_id" in e}
    # Raw tables: one row per Kafka message, no message twice.
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_inferences").fetchone() == (
        len(expect_inf), len(expect_inf))
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_feedback").fetchone() == (
        len(expect_fb), len(expect_fb))
    n_bad = len(produced.hostile)
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_quarantine").fetchone() == (
        n_bad, n_bad)
    # Views: every valid event exactly once.
    assert {r[0] for r in q("SELECT inference_id FROM inferences").fetchall()} == expect_inf
    assert {r[0] for r in q("SELECT feedback_id FROM feedback").fetchall()} == expect_fb
    print(json.dumps({"lake": where, "events": total_events, "kills": kills, "landed_after_each_kill": progress}))

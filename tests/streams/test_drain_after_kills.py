"""A drain after SIGKILLed workers: `flywheel ingest --until-idle` may exit 0 only when every partition is landed up
to the broker's end; partitions that killed members still hold (until their sessions expire) must be waited for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.warehouse.query import connect

from .conftest import Produced
from .test_exactly_once import LAKES, _landed, lake_on

N_INFERENCES = 12_000
KILL_GAP_S = 3.0


def _env(s: Settings, lake: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    return {**os.environ, **(lake or {}), "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port),
            "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_INGEST_GROUP": s.ingest_group,
            "FLYWHEEL_PARTITIONS": str(s.partitions), "FLYWHEEL_FLUSH_MAX_EVENTS": "2000",
            "FLYWHEEL_FLUSH_INTERVAL_S": "0.5", "FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS": "6000", **extra}


def _paced(produced: Produced, events: list, seconds: float) -> None:
    """Send `events` evenly over `seconds`, so that every kill lands in the middle of the stream."""
    start, step = time.monotonic(), seconds / len(events)
    for i, e in enumerate(events):
        produced.event(e)
        if i % 200 == 0:
            time.sleep(max(0.0, start + i * step - time.monotonic()))
    produced.flush()


@pytest.mark.slow
@pytest.mark.reliability  # fault injection: SIGKILLs workers and waits out a dead member's session
@pytest.mark.parametrize("where", LAKES)
def test_a_drain_after_killed_workers_waits_for_every_partition(kafka_settings: Settings, where: str,
                                                                request: pytest.FixtureRequest) -> None:
    """On object storage the three workers are three writers with no lock between them, as on three hosts."""
    s, lake_env = lake_on(where, kafka_settings.replace(partitions=3), request)
    produced = Produced(s)
    events = list(generate(load_corpus(), N_INFERENCES, seed=5, prefix="dr"))
    half = len(events) // 2
    for e in events[:half]:
        produced.event(e)
    produced.flush()
    cmd = [sys.executable, "-m", "flywheel.cli", "-v", "ingest"]
    workers = [subprocess.Popen(cmd, env=_env(s, lake_env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(3)]
    # The batching producer keeps sending while the workers land and are killed one by one.
    rest = threading.Thread(target=_paced, args=(produced, events[half:], KILL_GAP_S * len(workers)))
    try:
        deadline = time.monotonic() + 60
        while _landed(s) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        rest.start()
        for proc in workers:  # the scenario: kills about a session timeout apart, then a drain at once
            time.sleep(KILL_GAP_S)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        rest.join(60)
        t0 = time.monotonic()
        drain = subprocess.run(cmd + ["--until-idle", "3"], env=_env(s, lake_env, FLYWHEEL_DRAIN_TIMEOUT_S="60"),
                               capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    said = [ln for ln in drain.stderr.splitlines() if "assigned" in ln or "drain" in ln or "replays" in ln]
    print("\n".join(said)[-3000:])
    assert drain.returncode == 0, drain.stderr[-3000:]
    expect_inf = {e["inference_id"] for e in events if event_type_of(e).name == "inference"}
    expect_fb = {e["feedback_id"] for e in events if "feedback_id" in e}
    q = connect(s).execute
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_inferences").fetchone() == (
        len(expect_inf), len(expect_inf))
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_feedback").fetchone() == (
        len(expect_fb), len(expect_fb))
    waited = "not drained" in drain.stderr
    print(json.dumps({"lake": where, "events": len(events), "drain_seconds": round(took, 1), "drain_waited": waited,
                      "from_beginning": drain.stderr.count("resuming at [-2"),
                      "replay_warnings": drain.stderr.count("as replays")}))


@pytest.mark.slow
@pytest.mark.reliability  # fault injection: SIGKILLs workers and waits out a dead member's session
def test_a_drain_does_not_exit_0_while_a_hung_member_holds_unlanded_partitions(kafka_settings: Settings) -> None:
    s = kafka_settings.replace(partitions=3)
    produced = Produced(s)
    events = list(generate(load_corpus(), 3000, seed=6, prefix="hung"))
    for e in events[:1000]:
        produced.event(e)
    produced.flush()
    cmd = [sys.executable, "-m", "flywheel.cli", "-v", "ingest"]
    # A long session: the hung member holds its partitions for longer than the drain may wait.
    hung = subprocess.Popen(cmd, env=_env(s, FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS="45000"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _landed(s) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        hung.send_signal(signal.SIGSTOP)  # it keeps its partitions (no heartbeat) until its session expires
        for e in events[1000:]:
            produced.event(e)
        produced.flush()
        drain = subprocess.run(cmd + ["--until-idle", "2"], env=_env(s, FLYWHEEL_DRAIN_TIMEOUT_S="5"),
                               capture_output=True, text=True, timeout=120)
    finally:
        hung.kill()
        hung.wait()
    expect_inf = {e["inference_id"] for e in events if event_type_of(e).name == "inference"}
    got = connect(s).execute("SELECT count(DISTINCT inference_id) FROM lake_inferences").fetchone()[0]
    print("\n".join(ln for ln in drain.stderr.splitlines() if "assigned" in ln or "drain" in ln)[-2000:])
    if drain.returncode == 0:  # it may have been given the partitions after all: then everything is landed
        assert got == len(expect_inf), drain.stderr[-3000:]
    else:  # or it gave up, saying which partitions lag and that it does not own them
        assert got < len(expect_inf) and "drain incomplete" in drain.stderr and "not owned" in drain.stderr, \
            drain.stderr[-3000:]
    print(json.dumps({"drain_rc": drain.returncode, "landed": got, "expected": len(expect_inf)}))

"""The landing worker on a real Apache Kafka broker (flywheel.infra.kafka): every event once, through a SIGKILL.

The rest of the suite runs on the embedded Tansu broker, whose gaps (STACK-NOTES) flywheel works around (a skipped
batch read again, `FLYWHEEL_INGEST_REREAD_GAPS` auto): on Apache Kafka that workaround is off, and the worker must
land every event exactly once by its offsets alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.kafka import KafkaBroker, KafkaUnavailable, kafka
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.warehouse.query import connect

from .conftest import Produced
from .test_exactly_once import _env, _landed

N_INFERENCES = 3_000  # with their feedback, about 5k events

pytestmark = [
    pytest.mark.slow, pytest.mark.reliability,
    pytest.mark.cannot_run_here(reason="needs Java 17+ and Apache Kafka's jars, which Maven resolves once from Maven "
                                       "Central: a machine that reaches no Maven repository cannot run it (the skip "
                                       "says what is missing)"),
]


@pytest.fixture(scope="module")
def real_kafka() -> Iterator[KafkaBroker]:
    try:
        with kafka() as k:
            yield k
    except KafkaUnavailable as exc:
        pytest.skip(f"Apache Kafka cannot run here: {exc}")


def test_events_land_exactly_once_on_apache_kafka(real_kafka: KafkaBroker, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    s = Settings(home=tmp_path / "home", kafka_bootstrap=real_kafka.bootstrap, topic_prefix=f"k{tag}",
                 ingest_group=f"g{tag}", partitions=3, flush_interval_s=0.5)
    assert not s.uses_embedded_broker and not s.rereads_gaps
    produced = Produced(s)
    events = list(generate(load_corpus(), N_INFERENCES, seed=14, prefix="kafka"))
    for e in events:
        produced.event(e)
    produced.flush()
    env = {**_env(s), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap}
    cmd = [sys.executable, "-m", "flywheel.cli", "-v", "ingest"]

    # One worker SIGKILLed once it has landed something, then one that runs until the topics are drained.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _landed(s) == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed_at_kill = _landed(s)
    final = subprocess.run(cmd + ["--until-idle", "5"], env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]

    expect_inf = {e["inference_id"] for e in events if event_type_of(e).name == "inference"}
    expect_fb = {e["feedback_id"] for e in events if "feedback_id" in e}
    assert len(expect_inf) + len(expect_fb) >= 4_500
    q = connect(s).execute
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_inferences").fetchone() == (
        len(expect_inf), len(expect_inf))
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_feedback").fetchone() == (
        len(expect_fb), len(expect_fb))
    assert {r[0] for r in q("SELECT inference_id FROM inferences").fetchall()} == expect_inf
    assert {r[0] for r in q("SELECT feedback_id FROM feedback").fetchall()} == expect_fb
    print(f"landed {landed_at_kill} inferences before the SIGKILL, {len(expect_inf)} in all")

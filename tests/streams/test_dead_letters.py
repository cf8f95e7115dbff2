"""Dead letters that cannot be produced must not vanish: counted, retried, and the batch fails (offsets do not
advance) so a later worker produces them."""

from __future__ import annotations

import pytest

from flywheel.errors import FlywheelError
from flywheel.infra import broker
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.lake import Lake

from .conftest import Produced, read_topic


def test_a_dead_letter_that_cannot_be_produced_fails_its_batch(produced: Produced, sample_events) -> None:
    s = produced.settings
    for e in sample_events[:20]:
        produced.event(e)
    for i in range(3):
        produced.raw("inference", "junk", b"not json %d" % i)
    produced.flush()
    # The dead-letter producer points at a port where no broker listens: every delivery fails, for real.
    unreachable = {"bootstrap.servers": f"127.0.0.1:{broker.free_port()}", "message.timeout.ms": 1000}
    worker = IngestWorker(s, dead_letter_config=unreachable)
    with pytest.raises(FlywheelError, match="dead letters") as failed:
        worker.run(until_idle=3)
    assert failed.value.topic == s.inference_topic and failed.value.offset >= 0
    assert worker.stats.dead_letter_failures >= 3 * 3  # every attempt counted
    lake = Lake(s.lake)
    tps = [(s.inference_topic, p) for p in range(s.partitions)]
    assert set(lake.watermarks("quarantine", tps).values()) == {None}  # nothing committed, nothing skipped
    # A worker whose dead-letter topic accepts writes lands everything and produces every dead letter.
    st = IngestWorker(s).run(until_idle=3)
    assert st.quarantined == 3 and st.dead_letter_failures == 0
    assert len(read_topic(s, s.deadletter_topic, s.partitions)) == 3

"""An in-memory broker that restarts (or a topic deleted and created again) starts offsets from 0: the lake must
not take the old topic's watermarks for the new one, or it would skip the new events."""

from __future__ import annotations

from pathlib import Path

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.query import connect


def _send(s: Settings, ids: list[str]) -> None:
    with FlywheelClient(s) as fw:
        for iid in ids:
            fw.log_inference(inference_id=iid, app="a", model="m", input="q", output="o")


def test_events_after_a_broker_restart_land(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home", broker_port=broker.free_port(), partitions=1, ingest_group="restart",
                 kafka_session_timeout_ms=6000)
    broker.start(s)
    try:
        _send(s, [f"before-{i}" for i in range(50)])
        assert IngestWorker(s).run(until_idle=1).landed["inferences"] == 50
    finally:
        broker.stop(s)
    broker.start(s)  # same port, empty: the topics come back with new ids and offsets from 0
    try:
        _send(s, [f"after-{i}" for i in range(10)])
        assert IngestWorker(s).run(until_idle=1).landed["inferences"] == 10
    finally:
        broker.stop(s)
    con = connect(s)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id) FROM inferences").fetchone() == (60, 60)

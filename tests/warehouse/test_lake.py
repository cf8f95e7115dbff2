"""Watermarks: committed atomically with rows, rows below them dropped, keyed by topic id."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from flywheel.config import Settings
from flywheel.schemas.arrow import SCHEMAS
from flywheel.warehouse.lake import Lake

NOW = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _quarantine(offsets: list[int], topic: str = "t", partition: int = 0) -> pa.Table:
    return pa.Table.from_pylist([
        {"event_type": "inference", "reason": "r", "event_id": None, "payload": b"x", "payload_bytes": 1,
         "key": None, "kafka_timestamp": None, "quarantine_date": NOW.date(), "_topic": topic,
         "_partition": partition, "_offset": o, "_ingested_at": NOW} for o in offsets], schema=SCHEMAS["quarantine"])


def test_a_replayed_batch_lands_nothing_twice(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    assert lake.watermarks("quarantine", [("t", 0)]) == {("t", 0): None}
    assert lake.commit("quarantine", _quarantine([0, 1, 2]), {("t", 0): 3}).rows == 3
    assert lake.watermarks("quarantine", [("t", 0)]) == {("t", 0): 3}
    # A worker that crashed after the commit re-reads 1..4: only 3 and 4 are new.
    res = lake.commit("quarantine", _quarantine([1, 2, 3, 4]), {("t", 0): 5})
    assert res.rows == 2
    assert sorted(lake.table("quarantine").to_pyarrow_table()["_offset"].to_pylist()) == [0, 1, 2, 3, 4]
    # Nothing new and no watermark to move: no commit at all.
    version = lake.table("quarantine").version()
    assert lake.commit("quarantine", _quarantine([3, 4]), {("t", 0): 5}).version is None
    assert lake.table("quarantine").version() == version


def test_watermarks_are_per_topic_id(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    lake.commit("quarantine", _quarantine([0, 1]), {("t", 0): 2}, {"t": "id-A"})
    assert lake.watermarks("quarantine", [("t", 0)], {"t": "id-A"}) == {("t", 0): 2}
    # The topic was recreated (new id): its offsets start again and must not be taken as landed.
    assert lake.watermarks("quarantine", [("t", 0)], {"t": "id-B"}) == {("t", 0): None}
    assert lake.commit("quarantine", _quarantine([0]), {("t", 0): 1}, {"t": "id-B"}).rows == 1


def test_a_watermark_only_commit_moves_the_watermark(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    lake.commit("quarantine", SCHEMAS["quarantine"].empty_table(), {("t", 1): 40})
    assert lake.watermarks("quarantine", [("t", 1)]) == {("t", 1): 40}

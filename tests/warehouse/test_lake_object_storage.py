"""The lake on an S3-compatible store (moto's server on 127.0.0.1): the same watermarks, replays and stamps as on
local disk, and commits from several hosts (each its own `Lake`, no shared lock) that lose no row and land none
twice, because each Delta version is created by a conditional put and a commit that loses one starts again."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.schemas.arrow import SCHEMAS
from flywheel.warehouse.lake import STAMP_APP_ID, Lake
from flywheel.warehouse.query import connect

NOW = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _quarantine(offsets: list[int], partition: int = 0) -> pa.Table:
    return pa.Table.from_pylist([
        {"event_type": "inference", "reason": "r", "event_id": None, "payload": b"x", "payload_bytes": 1,
         "key": None, "kafka_timestamp": None, "quarantine_date": NOW.date(), "_topic": "t",
         "_partition": partition, "_offset": o, "_ingested_at": NOW} for o in offsets], schema=SCHEMAS["quarantine"])


def test_the_lake_lands_replays_and_reads_on_object_storage(s3_settings: Settings) -> None:
    where = s3_settings.lake_location
    assert where.remote
    lake = Lake(where)
    lake.ensure()
    lake.ensure()  # idempotent on the store too
    assert lake.watermarks("quarantine", [("t", 0)]) == {("t", 0): None}
    assert lake.commit("quarantine", _quarantine([0, 1, 2]), {("t", 0): 3}).rows == 3
    res = lake.commit("quarantine", _quarantine([1, 2, 3, 4]), {("t", 0): 5})
    assert (res.rows, res.replayed) == (2, {("t", 0): (2, 1, 2)})
    assert Lake(where).watermarks("quarantine", [("t", 0)]) == {("t", 0): 5}  # a fresh reader sees the same
    dt = DeltaTable(where.join("quarantine"), storage_options=where.storage_options)
    assert all(u.startswith(where.uri + "/quarantine/") for u in dt.file_uris())
    assert lake.write_problem() is None and lake.unwritable() is None
    # The views read the store through delta-rs (DuckDB has no httpfs here): the same SQL as on local disk.
    con = connect(s3_settings)
    assert con.execute("SELECT count(*), count(DISTINCT _offset) FROM lake_quarantine").fetchone() == (5, 5)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (5,)
    assert con.execute("SELECT count(*) FROM inferences").fetchone() == (0,)


@pytest.mark.reliability
def test_two_hosts_committing_the_same_partition_land_every_row_once(s3_settings: Settings) -> None:
    """Two writers, each with its own Lake (as on two hosts: no file lock between them), land the same stream of
    one partition (as two workers do while a rebalance moves it) in batches of different sizes, plus a partition
    each. Every offset lands once, the watermarks end exact, and `_ingested_at` increases with the version."""
    lake = Lake(s3_settings.lake_location)
    lake.ensure()
    n, errors, lost = 240, [], []

    def host(partition: int, step: int) -> None:
        mine = Lake(s3_settings.lake_location)
        lost.append(mine)
        try:
            for start in range(0, n, step):
                offsets = list(range(start, min(n, start + step)))
                rows = pa.concat_tables([_quarantine(offsets, 0), _quarantine(offsets, partition)])
                mine.commit("quarantine", rows, {("t", 0): offsets[-1] + 1, ("t", partition): offsets[-1] + 1})
        except Exception as exc:  # reported below, with the assertion that names it
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(1, 20)), threading.Thread(target=host, args=(2, 30))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    retried = sum(h.lost_attempts for h in lost)
    assert retried > 0, "the writers never collided: the test did not exercise a lost commit"
    dt = lake.table("quarantine")
    rows = dt.to_pyarrow_table()
    for partition in (0, 1, 2):
        got = pc.filter(rows["_offset"], pc.equal(rows["_partition"], partition)).to_pylist()
        assert sorted(got) == list(range(n)), f"partition {partition}: {len(got)} rows, {len(set(got))} distinct"
    assert lake.watermarks("quarantine", [("t", 0), ("t", 1), ("t", 2)]) == {("t", 0): n, ("t", 1): n, ("t", 2): n}
    # Stamps: one per commit, strictly increasing with the version, whichever host made it.
    stamps = []
    for version in range(dt.version() + 1):
        old = DeltaTable(lake.uri("quarantine"), version=version, storage_options=lake.location.storage_options)
        stamp = old.transaction_version(STAMP_APP_ID)
        if stamp is not None and (not stamps or stamps[-1] != stamp):
            stamps.append(stamp)
    assert stamps == sorted(set(stamps)) and len(stamps) >= n // 30
    by_stamp = pc.value_counts(rows["_ingested_at"]).to_pylist()
    assert len(by_stamp) == len(stamps)
    print(json.dumps({"commits": len(stamps), "lost_attempts": retried, "rows": rows.num_rows}))

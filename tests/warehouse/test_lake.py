"""Watermarks: committed atomically with rows, rows below them dropped, keyed by topic id."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import flywheel.warehouse.lake as lake_module
from flywheel.config import Settings
from flywheel.schemas.arrow import SCHEMAS
from flywheel.warehouse.lake import Lake, LakeError, stats_columns

NOW = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _quarantine(offsets: list[int], topic: str = "t", partition: int = 0) -> pa.Table:
    return pa.Table.from_pylist([
        {"event_type": "inference", "reason": "r", "event_id": None, "payload": b"x", "payload_bytes": 1,
         "key": None, "kafka_timestamp": None, "quarantine_date": NOW.date(), "_topic": topic,
         "_partition": partition, "_offset": o, "_ingested_at": NOW} for o in offsets], schema=SCHEMAS["quarantine"])


def _with_topic_id(rows: pa.Table, topic_id: str) -> pa.Table:
    i = rows.schema.get_field_index("_topic_id")
    return rows.set_column(i, rows.schema.field(i), pa.array([topic_id] * rows.num_rows, pa.string()))


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


def test_files_are_partitioned_and_the_log_has_stats_only_where_filters_can_use_them(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    rows = _quarantine([0, 1, 2])
    day = pa.array([NOW.date(), NOW.date(), date(2026, 11, 1)], pa.date32())
    late = datetime(2026, 11, 2, 0, 0, 0, 1500, tzinfo=timezone.utc)  # not a whole millisecond
    rows = rows.set_column(rows.schema.get_field_index("quarantine_date"), "quarantine_date", day)
    rows = rows.set_column(rows.schema.get_field_index("_ingested_at"), "_ingested_at",
                           pa.array([NOW, NOW, late], rows.schema.field("_ingested_at").type))
    lake.commit("quarantine", rows, {("t", 0): 3}, keep_ingested_at=True)
    dt = lake.table("quarantine")
    files = dt.file_uris()
    assert sorted(Path(f).parent.name for f in files) == ["quarantine_date=2026-11-01", "quarantine_date=2026-11-02"]
    assert "quarantine_date" not in pq.read_schema(files[0]).names  # the value lives in the path
    got = duckdb.sql(f"SELECT _offset, quarantine_date FROM read_parquet({files!r}, hive_partitioning = true) "
                     "ORDER BY _offset").fetchall()
    assert got == [(0, NOW.date()), (1, NOW.date()), (2, date(2026, 11, 1))]
    adds = {a["partition.quarantine_date"]: a for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist()}
    assert adds[NOW.date()]["num_records"] == 2
    assert (adds[NOW.date()]["min._offset"], adds[NOW.date()]["max._offset"]) == (0, 1)
    assert adds[date(2026, 11, 1)]["max._ingested_at"] == datetime(2026, 11, 2, 0, 0, 0, 2000, tzinfo=timezone.utc)
    assert "min.payload" not in adds[NOW.date()] and "min.reason" not in adds[NOW.date()]
    assert set(stats_columns("quarantine")) >= {"_partition", "_offset", "_ingested_at", "event_id"}


def test_free_texts_and_ids_are_written_without_dictionary_and_texts_without_statistics(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    lake.commit("quarantine", _quarantine([0, 1]), {("t", 0): 2})
    meta = pq.ParquetFile(lake.table("quarantine").file_uris()[0]).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert columns["payload"].statistics is None and not columns["payload"].has_dictionary_page
    assert columns["_offset"].statistics.has_min_max and columns["reason"].has_dictionary_page
    assert columns["event_id"].statistics is not None and not columns["event_id"].has_dictionary_page


def test_a_big_commit_is_written_as_files_in_parallel_and_committed_once(settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr(lake_module, "MIN_FILE_BYTES", 1)
    monkeypatch.setattr(lake_module, "WRITERS", 3)
    lake = Lake(settings.lake)
    lake.ensure()
    before = lake.table("quarantine").version()
    assert lake.commit("quarantine", _quarantine(list(range(10))), {("t", 0): 10}).rows == 10
    dt = lake.table("quarantine")
    assert (dt.version(), len(dt.file_uris())) == (before + 1, 3)
    assert sorted(dt.to_pyarrow_table()["_offset"].to_pylist()) == list(range(10))
    assert lake.watermarks("quarantine", [("t", 0)]) == {("t", 0): 10}


def test_rows_that_do_not_fit_the_table_commit_nothing(settings: Settings) -> None:
    lake = Lake(settings.lake)
    older = pa.schema([f for f in SCHEMAS["quarantine"] if f.name != "key"])  # a table this build cannot write
    DeltaTable.create(str(lake.path("quarantine")), schema=older, partition_by=["quarantine_date"])
    with pytest.raises(LakeError, match="columns"):
        lake.commit("quarantine", _quarantine([0]), {("t", 0): 1})
    stricter = pa.schema([f.with_nullable(False) if f.name == "event_id" else f for f in SCHEMAS["quarantine"]])
    other = Lake(settings.home / "other")
    DeltaTable.create(str(other.path("quarantine")), schema=stricter, partition_by=["quarantine_date"])
    with pytest.raises(LakeError, match="event_id"):  # the row has no event_id; the table says it must
        other.commit("quarantine", _quarantine([0]), {("t", 0): 1})
    for lk in (lake, other):
        assert lk.table("quarantine").version() == 0
        assert lk.watermarks("quarantine", [("t", 0)]) == {("t", 0): None}


def test_commits_stamp_ingested_at_strictly_increasing_unless_told_to_keep_it(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    before = datetime.now(timezone.utc)
    lake.commit("quarantine", _quarantine([0, 1]), {("t", 0): 2})  # rows prepared with _ingested_at = NOW
    lake.commit("quarantine", _quarantine([2]), {("t", 0): 3})
    ahead = datetime.now(timezone.utc) + timedelta(days=1)  # a backfill stamped ahead of the clock
    kept = _quarantine([3])
    kept = kept.set_column(kept.schema.get_field_index("_ingested_at"), "_ingested_at",
                           pa.array([ahead], kept.schema.field("_ingested_at").type))
    lake.commit("quarantine", kept, {("t", 0): 4}, keep_ingested_at=True)
    lake.commit("quarantine", _quarantine([4]), {("t", 0): 5})
    got = duckdb.sql(f"SELECT _offset, _ingested_at FROM read_parquet({lake.table('quarantine').file_uris()!r}) "
                     "ORDER BY _offset").fetchall()
    stamps = [t for _, t in got]
    assert stamps[0] == stamps[1] >= before  # one stamp per commit, taken at the commit, not the rows' own
    assert stamps[2] > stamps[1]
    assert stamps[3] == ahead  # kept
    assert stamps[4] == ahead + timedelta(microseconds=1)  # never below an earlier commit's stamp


def test_a_commit_reports_the_replayed_rows_it_dropped(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    lake.commit("quarantine", _quarantine([0, 1, 2]), {("t", 0): 3}, {"t": "id-1"})
    res = lake.commit("quarantine", _quarantine([1, 2, 3, 4]), {("t", 0): 5}, {"t": "id-1"})
    assert (res.rows, res.replayed_rows, dict(res.replayed)) == (2, 2, {("t", 0): (2, 1, 2)})
    # The same offsets read from a new incarnation of the topic are new rows, not replays.
    res = lake.commit("quarantine", _quarantine([0, 1, 2]), {("t", 0): 3}, {"t": "id-2"})
    assert (res.rows, res.replayed_rows) == (3, 0)


def test_the_quarantine_view_keeps_rejected_messages_at_offsets_a_new_topic_incarnation_reused(
        settings: Settings) -> None:
    from flywheel.warehouse.query import connect

    lake = Lake(settings.lake)
    lake.ensure()
    for tid in ("id-1", "id-2"):
        rows = _with_topic_id(_quarantine([0, 1]), tid)
        lake.commit("quarantine", rows, {("t", 0): 2}, {"t": tid})
    assert connect(settings).execute("SELECT count(*), count(DISTINCT _topic_id) FROM quarantine").fetchone() == (4, 2)


def test_a_lake_created_by_an_older_build_gains_the_new_nullable_columns(settings: Settings) -> None:
    from deltalake import write_deltalake

    from flywheel.warehouse.query import connect

    old = pa.schema([f for f in SCHEMAS["quarantine"] if f.name != "_topic_id"])
    path = Lake(settings.lake).path("quarantine")
    path.mkdir(parents=True)
    write_deltalake(str(path), _quarantine([0, 1]).select(old.names).cast(old), partition_by=["quarantine_date"])
    lake = Lake(settings.lake)
    lake.ensure()
    assert "_topic_id" in [f.name for f in lake.table("quarantine").schema().fields]
    lake.ensure()  # idempotent
    rows = _with_topic_id(_quarantine([0, 1, 2]), "id-9")
    assert lake.commit("quarantine", rows, {("t", 0): 3}, {"t": "id-9"}).rows == 3
    got = connect(settings).execute(
        "SELECT _topic_id, count(*) FROM lake_quarantine GROUP BY ALL ORDER BY ALL NULLS FIRST").fetchall()
    assert got == [(None, 2), ("id-9", 3)]


def test_a_lake_landed_before_tool_calls_widens_its_messages_and_keeps_working(settings: Settings) -> None:
    """Chat messages gained `name`, `tool_call_id` and `tool_calls`, and inferences `tools`: a lake an older build
    wrote (narrower message structs, no `tools`) is widened by `ensure`, reads as before, and takes tool events."""
    from deltalake import write_deltalake

    from flywheel.infra.testing.land import land, to_rows
    from flywheel.infra.testing.tool_calls import WEATHER_TOOLS, tool_inferences
    from flywheel.warehouse.query import connect

    narrow = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    old = pa.schema([f.with_type(narrow) if f.name == "input_messages" else f
                     for f in SCHEMAS["inferences"] if f.name != "tools"])
    chat = {"inference_id": "old-1", "timestamp": "2026-11-01T12:00:00Z", "app": "a", "model": "m", "output": "o",
            "input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    rows = to_rows([chat])["inferences"]
    rows = rows.drop_columns(["tools"]).set_column(rows.schema.get_field_index("input_messages"), "input_messages",
                                                   pa.array([chat["input"]], narrow))
    path = Lake(settings.lake).path("inferences")
    path.mkdir(parents=True)
    write_deltalake(str(path), rows.select(old.names).cast(old), partition_by=["event_date"])

    lake = Lake(settings.lake)
    lake.ensure()
    widened = pa.schema(lake.table("inferences").schema().to_arrow())
    assert widened.field("input_messages").type == SCHEMAS["inferences"].field("input_messages").type
    assert "tools" in widened.names
    version = lake.table("inferences").version()
    lake.ensure()  # idempotent: nothing more to widen
    assert lake.table("inferences").version() == version
    # Only old files so far: the messages still read in this build's type, the new fields null.
    con = connect(settings)
    assert con.execute("SELECT input_messages[2].tool_calls, input_messages[2].content, tools FROM inferences"
                       ).fetchall() == [(None, "hi", None)]
    con.close()

    land(lake, tool_inferences(2), start_offset=10)
    con = connect(settings)
    got = con.execute("SELECT inference_id, len(input_messages), input_messages[3].tool_calls[1].function.name, "
                      "tools IS NOT NULL FROM inferences ORDER BY inference_id").fetchall()
    assert got == [("old-1", 2, None, False), ("t-0", 4, "get_current_weather", True),
                   ("t-1", 5, "get_current_weather", True)]
    assert json.loads(con.execute("SELECT tools FROM inferences WHERE inference_id = 't-0'").fetchall()[0][0]
                      ) == WEATHER_TOOLS
    con.close()

"""Lake maintenance on real Delta tables: compaction keeps every row and every watermark, readers keep working,
retention drops old partitions, vacuum deletes only what no recent version needs; and compaction while the real
ingest worker lands events from the embedded broker loses nothing, duplicates nothing and breaks no query."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timezone

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.maintenance import MaintenanceSettings
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.maintenance import (MaintenanceBusy, MaintenanceError, _maintenance_lock, apply_retention,
                                            compact, lake_tables, stats, vacuum)
from flywheel.warehouse.query import connect

LANDED = datetime(2026, 11, 20, tzinfo=timezone.utc)
CHECK = ("SELECT count(*), count(DISTINCT inference_id), sum(input_tokens), bit_xor(hash(inference_id, output)) "
         "FROM inferences")


def _land_in_small_commits(settings: Settings, n_commits: int = 30, per_commit: int = 100) -> Lake:
    """`n_commits` appends to `inferences`, each advancing the watermark of synthetic.inference[0]."""
    lake = Lake(settings.lake)
    lake.ensure()
    rows = to_rows(generate(load_corpus(), n_commits * per_commit, seed=3, feedback_rate=0), ingested_at=LANDED)
    inf = rows["inferences"]
    for k in range(n_commits):
        next_offset = {("synthetic.inference", 0): (k + 1) * per_commit}
        lake.commit("inferences", inf.slice(k * per_commit, per_commit), next_offset)
    return lake


def _watermark(settings: Settings) -> int | None:
    return DeltaTable(str(Lake(settings.lake).path("inferences"))).transaction_version("synthetic.inference[0]")


def _codecs(settings: Settings) -> set[str]:
    """The codecs of every column chunk of the current files of `inferences`."""
    out = set()
    for uri in DeltaTable(str(Lake(settings.lake).path("inferences"))).file_uris():
        meta = pq.ParquetFile(uri).metadata
        out |= {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                for c in range(meta.num_columns)}
    return out


def test_compaction_merges_files_and_keeps_rows_watermarks_and_open_readers(settings: Settings) -> None:
    _land_in_small_commits(settings)
    before = stats(settings, "inferences", MaintenanceSettings())
    assert (before.files, before.rows, before.partitions) == (30, 3000, 1) and before.small_files == 30
    assert _codecs(settings) == {"UNCOMPRESSED"}  # landed fast ...
    reader = connect(settings)  # lists the 30 small files now
    expected = reader.sql(CHECK).fetchall()

    result = compact(settings, "inferences", MaintenanceSettings())

    after = stats(settings, "inferences", MaintenanceSettings())
    assert (result.files_removed, result.files_added) == (30, 1)
    assert (after.files, after.rows, after.version) == (1, 3000, before.version + 1)
    assert _watermark(settings) == 3000
    files = DeltaTable(str(Lake(settings.lake).path("inferences"))).file_uris()
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).num_rows == 3000  # one row group, not 30 tiny ones
    assert _codecs(settings) == {"ZSTD"}  # ... and compacted small
    # The reader that listed the old files still reads them (they are not deleted until vacuum) ...
    assert reader.sql(CHECK).fetchall() == expected
    # ... and a new reader sees the same data through the compacted file.
    assert connect(settings).sql(CHECK).fetchall() == expected
    # A second compaction finds nothing to do.
    assert compact(settings, "inferences", MaintenanceSettings()).files_removed == 0


def test_vacuum_keeps_recent_files_and_deletes_old_ones_and_watermarks_survive(settings: Settings) -> None:
    _land_in_small_commits(settings, n_commits=5)
    compact(settings, "inferences", MaintenanceSettings())
    kept = vacuum(settings, "inferences", MaintenanceSettings(vacuum_retention_hours=1))
    assert kept.files_deleted == 0  # removed seconds ago: a reader may still be listing them
    gone = vacuum(settings, "inferences", MaintenanceSettings(vacuum_retention_hours=0))
    assert gone.files_deleted == 5
    assert _watermark(settings) == 500
    assert connect(settings).sql("SELECT count(*) FROM inferences").fetchall() == [(500,)]


def test_retention_drops_partitions_older_than_the_table_keeps(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    old = [{"inference_id": f"old-{i}", "timestamp": "2026-06-01T10:00:00Z", "app": "a", "model": "m",
            "input": "q", "output": "a"} for i in range(5)]
    new = [{**e, "inference_id": f"new-{i}", "timestamp": "2026-11-19T10:00:00Z"} for i, e in enumerate(old)]
    lake.commit("inferences", to_rows(old + new, start_offset=0)["inferences"], {("synthetic.inference", 0): 10})
    msettings = MaintenanceSettings.from_env({"FLYWHEEL_LAKE_RETENTION": "inferences=90, quarantine=30"})
    assert msettings.retention_days() == {"inferences": 90.0, "quarantine": 30.0}
    result = apply_retention(settings, "inferences", msettings.retention_days()["inferences"], msettings,
                             today=date(2026, 11, 20))
    assert result.cutoff == date(2026, 8, 22) and result.rows_deleted == 5
    ids = connect(settings).sql("SELECT inference_id FROM inferences ORDER BY 1").fetchall()
    assert [i for (i,) in ids] == [f"new-{i}" for i in range(5)]
    assert _watermark(settings) == 10
    with pytest.raises(MaintenanceError, match="no date column known"):
        apply_retention(settings, "unknown_table", 1, MaintenanceSettings())


def test_bad_settings_and_busy_tables_give_clear_errors(settings: Settings) -> None:
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="FLYWHEEL_LAKE_RETENTION"):
        MaintenanceSettings.from_env({"FLYWHEEL_LAKE_RETENTION": "inferences=forever"})
    _land_in_small_commits(settings, n_commits=2)
    assert lake_tables(settings) == ["feedback", "inferences", "quarantine"]
    with _maintenance_lock(settings, "inferences"):
        with pytest.raises(MaintenanceBusy, match="another maintenance run"):
            compact(settings, "inferences", MaintenanceSettings())
    with pytest.raises(MaintenanceError, match="no lake table 'nope'"):
        stats(settings, "nope", MaintenanceSettings())


@pytest.mark.slow
@pytest.mark.broker
def test_compaction_while_ingest_lands_and_queries_run(kafka_settings: Settings) -> None:
    s = kafka_settings.replace(flush_max_events=250, flush_interval_s=0.2)
    ensure_topics(s)
    events = list(generate(load_corpus(), 4000, seed=5))
    n_inf = sum(1 for e in events if "feedback_id" not in e)
    n_fb = len(events) - n_inf
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True})
    worker = IngestWorker(s)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen_files: list[int] = []
    removed: list[int] = []
    queries = compactions = 0

    def ingest() -> None:
        try:
            worker.run(until_idle=4)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def query_loop() -> None:
        nonlocal queries
        while not stop.is_set():
            try:
                con = connect(s)
                con.sql(CHECK).fetchall()
                con.sql("SELECT count(*) FROM interactions WHERE feedback_count > 0").fetchall()
                con.close()
                queries += 1
            except BaseException as exc:
                errors.append(exc)
                return

    def compact_loop() -> None:
        nonlocal compactions
        while not stop.is_set():
            try:
                if Lake(s.lake).path("inferences").joinpath("_delta_log").is_dir():
                    seen_files.append(stats(s, "inferences", MaintenanceSettings()).files)
                    for table in ("inferences", "feedback"):
                        removed.append(compact(s, table, MaintenanceSettings(min_files=2)).files_removed)
                    compactions += 1
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0.3)

    threads = [threading.Thread(target=f, daemon=True) for f in (ingest, query_loop, compact_loop)]
    for t in threads:
        t.start()
    def send(batch: list[dict]) -> None:
        for ev in batch:
            topic = s.feedback_topic if "feedback_id" in ev else s.inference_topic
            producer.produce(topic, json.dumps(ev).encode(), key=ev["inference_id"].encode())
        producer.flush()

    send(events[:100])
    deadline = time.monotonic() + 60  # the worker joins its group first (seconds on this broker)
    while not Lake(s.lake).path("inferences").joinpath("_delta_log").is_dir() \
            or not stats(s, "inferences", MaintenanceSettings()).files:
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.1)
    for k in range(100, len(events), 100):  # in bursts, so the worker lands many small files meanwhile
        send(events[k:k + 100])
        time.sleep(0.1)
    producer.flush()
    threads[0].join(120)
    stop.set()
    for t in threads[1:]:
        t.join(60)
    print(f"compactions {compactions}, queries {queries}, files seen {seen_files}, removed {sum(removed)}")
    assert errors == []
    assert compactions >= 3 and queries >= 3 and sum(removed) >= 10  # it did rewrite files under the worker
    before = stats(s, "inferences", MaintenanceSettings())
    compact(s, "inferences", MaintenanceSettings())
    after = stats(s, "inferences", MaintenanceSettings())
    con = connect(s)
    assert con.sql("SELECT count(*), count(DISTINCT inference_id) FROM lake_inferences").fetchall() == [(n_inf, n_inf)]
    assert con.sql("SELECT count(*), count(DISTINCT feedback_id) FROM lake_feedback").fetchall() == [(n_fb, n_fb)]
    assert after.files < max(seen_files + [before.files]) and after.files <= after.partitions
    # Every partition's watermark is where the topic ends: nothing will be re-read, nothing was skipped.
    lake = Lake(s.lake)
    marks = lake.watermarks("inferences", [(s.inference_topic, p) for p in range(s.partitions)],
                            {s.inference_topic: worker._topic_ids[s.inference_topic]})
    assert sum(v or 0 for v in marks.values()) == n_inf

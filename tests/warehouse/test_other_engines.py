"""The lake and the curated datasets are open formats: another engine reads them in place (issue 14, item 10).

Polars reads the landed Delta tables (its own Parquet reader over the table's current files, through the Delta log)
and a curated version's splits, and sees what flywheel's DuckDB views see: the same rows, ids and values, after
several commits, a compaction and a re-run.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.infra.testing.land import land
from flywheel.warehouse import maintenance
from flywheel.warehouse.datasets import DatasetSettings, load
from flywheel.warehouse.datasets.curation import curate
from flywheel.warehouse.datasets.recipes import parse_recipe
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect

RECIPE = {"name": "engines-sft", "kind": "sft", "source": {"app": ["support-bot", "writing-assistant"]},
          "steps": {"pii": True, "exact_dedupe": True}, "splits": {"by": "session_id",
                                                                     "fractions": {"train": 0.8, "test": 0.2}},
          "exports": ["parquet"]}


def test_polars_reads_the_landed_tables_and_a_curated_version_in_place(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    lake = Lake(settings.lake)
    lake.ensure()
    events = list(generate(load_corpus(), 400, seed=21))
    for i in range(3):  # several commits, so the log has several versions and files
        land(lake, events[i::3], start_offset=i * 10_000)
    maintenance.compact(settings, "inferences", maintenance.MaintenanceSettings(min_files=2))

    con = connect(settings)
    for table, key in (("inferences", "inference_id"), ("feedback", "feedback_id")):
        ours = con.sql(f"SELECT {key} FROM {table} ORDER BY {key}").fetchall()
        theirs = pl.read_delta(str(lake.path(table))).select(key).sort(key)
        assert [r[0] for r in ours] == theirs[key].to_list()
        assert len(ours) > 0
    # Values too, not just ids: a text, a number and a timestamp of every inference.
    ours = con.sql("SELECT inference_id, output, latency_ms, epoch_us(timestamp) FROM inferences "
                   "ORDER BY inference_id").fetchall()
    theirs = (pl.read_delta(str(lake.path("inferences")))
              .select("inference_id", "output", "latency_ms", pl.col("timestamp").dt.epoch("us"))
              .sort("inference_id").rows())
    assert [tuple(r) for r in ours] == theirs

    ds = DatasetSettings()
    result = curate(settings, ds, parse_recipe(RECIPE))
    assert result.created and dict(result.splits)["train"] > 0
    for split in ("train", "test"):
        ours_split = load(f"engines-sft@{result.version}", split=split, settings=settings, ds=ds)
        theirs_split = pl.read_parquet(result.path / "data" / f"{split}.parquet")
        assert theirs_split.height == ours_split.num_rows
        assert theirs_split["id"].to_list() == ours_split["id"].to_pylist()
        assert theirs_split["inference_ids"].to_list() == ours_split["inference_ids"].to_pylist()
        assert theirs_split["completion"].to_list() == ours_split["completion"].to_pylist()

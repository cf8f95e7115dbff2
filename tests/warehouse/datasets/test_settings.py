"""Curation's DuckDB memory limit: the one given, or a share of the machine's memory within the peak budget."""

from __future__ import annotations

import duckdb

from flywheel.warehouse.datasets.settings import (
    MAX_DEFAULT_MEMORY_MB,
    DatasetSettings,
    default_memory_limit_mb,
    machine_memory_bytes,
)


def test_the_default_memory_limit_is_a_quarter_of_the_machine_at_most_3gb_and_a_given_one_wins() -> None:
    gib = 2**30
    assert default_memory_limit_mb(4 * gib) == 1024
    assert default_memory_limit_mb(64 * gib) == MAX_DEFAULT_MEMORY_MB == 3072
    assert default_memory_limit_mb(512 * 2**20) == 256
    assert 0 < machine_memory_bytes()
    here = DatasetSettings().duckdb_memory_limit()
    assert here == f"{default_memory_limit_mb(machine_memory_bytes())}MB"
    assert DatasetSettings(memory_limit="2GB").duckdb_memory_limit() == "2GB"
    assert DatasetSettings.from_env({"FLYWHEEL_DATASETS_MEMORY_LIMIT": "900MB"}).duckdb_memory_limit() == "900MB"
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{here}'")  # DuckDB takes it as written
    assert con.execute("SELECT current_setting('memory_limit')").fetchone() is not None

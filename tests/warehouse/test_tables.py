"""Side tables: one append and one read path for every stage's Delta tables in the lake."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from flywheel.warehouse import tables

SCHEMA = pa.schema([("run_id", pa.string()), ("day", pa.string()), ("score", pa.float64())])


def test_append_creates_then_appends_and_query_reads_every_commit(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    assert not tables.exists(lake, "runs") and tables.files(lake, "runs") == []
    assert tables.query(lake, "runs", "SELECT count(*) AS n FROM t", empty=SCHEMA)["n"].to_pylist() == [0]
    tables.append(lake, "runs", pa.table({"run_id": ["a", "b"], "day": ["d1", "d2"], "score": [1.0, 2.0]},
                                         schema=SCHEMA), partition_by=["day"])
    tables.append(lake, "runs", pa.table({"run_id": ["c"], "day": ["d1"], "score": [3.0]}, schema=SCHEMA),
                  partition_by=["day"])
    tables.append(lake, "runs", SCHEMA.empty_table())  # nothing to commit: no new version
    got = tables.query(lake, "runs", "SELECT run_id, day, score FROM t WHERE score > $s ORDER BY run_id", {"s": 1.5})
    assert got.to_pylist() == [{"run_id": "b", "day": "d2", "score": 2.0}, {"run_id": "c", "day": "d1", "score": 3.0}]
    assert len(tables.files(lake, "runs")) == 3


def test_errors_name_the_table(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    tables.append(lake, "runs", pa.table({"run_id": ["a"], "day": ["d1"], "score": [1.0]}, schema=SCHEMA))
    with pytest.raises(tables.TableError, match="lake table 'runs'") as err:
        tables.append(lake, "runs", pa.table({"other": [1]}))
    assert err.value.table == "runs" and err.value.path == lake / "runs"
    with pytest.raises(tables.TableError, match="reading lake table 'runs'"):
        tables.query(lake, "runs", "SELECT nope FROM t")

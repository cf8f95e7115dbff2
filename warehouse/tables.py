"""Side tables: the Delta tables that stages keep in the lake beside the landed events (`quality_runs`, `drift_runs`,
`descriptors`, and next `datasets`, `eval_runs`, `jobs`, `releases`), written and read one way.

- `append` adds rows in one Delta commit (creating the table with the given schema and partitioning on first use).
  Appends never conflict with each other in Delta, so concurrent runs need no lock; a reader sees a commit whole or
  not at all.
- `files` lists the Parquet files of the table's current version (none when the table does not exist yet), which
  is what DuckDB reads (`read_parquet`, no extension to install); `query` runs SQL over them as `t`.

The landed tables (`inferences`, `feedback`, `quarantine`) are not side tables: their commits carry Kafka offsets
and go through `flywheel.warehouse.lake.Lake.commit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from flywheel.errors import FlywheelError

FIRST_LANDED = "_ingested_at, _topic, _partition, _offset"
"""The order in which the rows of one event id landed: views keep the first (`ORDER BY` of their dedup)."""

CHECKPOINT_INTERVAL = "50"


class TableError(FlywheelError):
    """Writing or reading a side table failed; the message names it (also `table`, `path`)."""

    def __init__(self, message: str, *, table: str, path: Path) -> None:
        super().__init__(message, table=table, path=str(path))
        self.table, self.path = table, path


def path(lake: str | Path, name: str) -> Path:
    return Path(lake) / name


def exists(lake: str | Path, name: str) -> bool:
    return DeltaTable.is_deltatable(str(path(lake, name)))


def append(lake: str | Path, name: str, rows: pa.Table, partition_by: Sequence[str] | None = None) -> None:
    """Append `rows` to the side table `name` under `lake` in one commit (nothing for no rows)."""
    if rows.num_rows == 0:
        return
    where = path(lake, name)
    where.parent.mkdir(parents=True, exist_ok=True)
    new = not exists(lake, name)
    try:
        write_deltalake(str(where), rows, mode="append", partition_by=list(partition_by) if partition_by else None,
                        configuration={"delta.checkpointInterval": CHECKPOINT_INTERVAL} if new else None)
    except Exception as exc:  # delta-rs raises several unrelated types; all mean the same to the caller
        raise TableError(f"appending {rows.num_rows} rows to lake table {name!r} at {where} failed: {exc}",
                         table=name, path=where) from exc


def files(lake: str | Path, name: str) -> list[str]:
    """The Parquet files of the table's current version; [] when it does not exist or has none."""
    if not exists(lake, name):
        return []
    return list(DeltaTable(str(path(lake, name))).file_uris())


def query(lake: str | Path, name: str, sql: str, params: dict[str, Any] | None = None,
          empty: pa.Schema | None = None) -> pa.Table:
    """`sql` over the table as `t` (partition columns included), as Arrow. With no files yet, `sql` runs over an
    empty table of `empty`'s schema when given, else the result is an empty table without columns."""
    found = files(lake, name)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if found:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in found)
            con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
                        "union_by_name = true)")
        elif empty is not None:
            con.register("t", empty.empty_table())
        else:
            return pa.table({})
        return con.sql(sql, params=params or {}).to_arrow_table()
    except duckdb.Error as exc:
        raise TableError(f"reading lake table {name!r} failed: {exc}", table=name, path=path(lake, name)) from exc
    finally:
        con.close()

"""Side tables: the Delta tables that stages keep in the lake beside the landed events (`quality_runs`, `drift_runs`,
`descriptors`, and next `datasets`, `eval_runs`, `jobs`, `releases`), written and read one way.

- `append` adds rows in one Delta commit (creating the table with the given schema and partitioning on first use).
  Appends never conflict with each other in Delta, so concurrent runs need no lock; a reader sees a commit whole or
  not at all.
- `files` lists the Parquet files of the table's current version (none when the table does not exist yet), which
  is what DuckDB reads (`read_parquet`, no extension to install); `query` runs SQL over them as `t`.
- `scan` is that read as a table expression on a DuckDB connection, for every reader of the lake (the views too).
  A lake on object storage is read through delta-rs instead (its current version as a pyarrow dataset registered
  on the connection), since DuckDB's httpfs cannot be installed offline; the SQL over it is the same.

`lake` is a local path or a `LakeLocation` (`Settings.lake_location`); an `s3://` lake must be the latter, which
carries the storage options to open it.

The landed tables (`inferences`, `feedback`, `quarantine`) are not side tables: their commits carry Kafka offsets
and go through `flywheel.warehouse.lake.Lake.commit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from flywheel.errors import FlywheelError
from flywheel.storage import LakeLocation

FIRST_LANDED = "_ingested_at, _topic, _partition, _offset"
"""The order in which the rows of one event id landed: views keep the first (`ORDER BY` of their dedup)."""

CHECKPOINT_INTERVAL = "50"

Where = Union[str, Path, LakeLocation]
"""A lake root: a local path, or where `Settings.lake_location` says (local or on object storage)."""


class TableError(FlywheelError):
    """Writing or reading a side table failed; the message names it (also `table`, `path`)."""

    def __init__(self, message: str, *, table: str, path: Path) -> None:
        super().__init__(message, table=table, path=str(path))
        self.table, self.path = table, path


def location(lake: Where) -> LakeLocation:
    """`lake` as a `LakeLocation`; a URL passed as a plain string is refused (it lacks its storage options, and
    `Path` would take `s3://b/lake` for the local directory `s3:/b/lake`)."""
    if isinstance(lake, LakeLocation):
        return lake
    if "://" in str(lake):
        raise TableError(f"the lake {str(lake)!r} is on object storage: open it with its storage options "
                         "(pass Settings.lake_location, not Settings.lake)", table="", path=Path(str(lake)))
    return LakeLocation(str(lake))


def uri(lake: Where, name: str) -> str:
    """Where the side table `name` is, as delta-rs opens it: a local path or an `s3://` URI."""
    return location(lake).join(name)


def path(lake: Where, name: str) -> Path:
    """The local directory of the side table `name` (a lake on object storage has none: TableError)."""
    where = location(lake)
    if where.remote:
        raise TableError(f"lake table {name!r} is on object storage at {where.join(name)}: it has no local path",
                         table=name, path=Path(name))
    return Path(where.uri) / name


def exists(lake: Where, name: str) -> bool:
    where = location(lake)
    return DeltaTable.is_deltatable(where.join(name), where.storage_options)


def append(lake: Where, name: str, rows: pa.Table, partition_by: Sequence[str] | None = None) -> None:
    """Append `rows` to the side table `name` under `lake` in one commit (nothing for no rows)."""
    if rows.num_rows == 0:
        return
    where = location(lake)
    if not where.remote:
        path(where, name).parent.mkdir(parents=True, exist_ok=True)
    new = not exists(where, name)
    try:
        write_deltalake(where.join(name), rows, mode="append",
                        partition_by=list(partition_by) if partition_by else None,
                        configuration={"delta.checkpointInterval": CHECKPOINT_INTERVAL} if new else None,
                        storage_options=where.storage_options)
    except Exception as exc:  # delta-rs raises several unrelated types; all mean the same to the caller
        raise TableError(f"appending {rows.num_rows} rows to lake table {name!r} at {where.join(name)} failed: "
                         f"{exc}", table=name, path=Path(where.join(name))) from exc


def files(lake: Where, name: str) -> list[str]:
    """The Parquet files of the table's current version; [] when it does not exist or has none."""
    where = location(lake)
    if not exists(where, name):
        return []
    return list(DeltaTable(where.join(name), storage_options=where.storage_options).file_uris())


def scan(con: duckdb.DuckDBPyConnection, lake: Where, name: str, columns: Sequence[str] | None = None
         ) -> str | None:
    """A SQL table expression on `con` over the files of the table's current version (None if it has none).
    Delta keeps partition values in paths, not in the files: hive_partitioning reads them back locally, and
    delta-rs's dataset carries them on object storage."""
    where = location(lake)
    if not exists(where, name):
        return None
    dt = DeltaTable(where.join(name), storage_options=where.storage_options)
    found = dt.file_uris()
    if not found:
        return None
    cols = ", ".join(f'"{n}"' for n in columns) if columns else "*"
    if where.remote:
        relation = f"_delta_{name}"
        con.register(relation, dt.to_pyarrow_dataset())
        return f'(SELECT {cols} FROM "{relation}")'
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in found)
    return f"(SELECT {cols} FROM read_parquet([{listed}], hive_partitioning = true, union_by_name = true))"


def query(lake: Where, name: str, sql: str, params: dict[str, Any] | None = None,
          empty: pa.Schema | None = None) -> pa.Table:
    """`sql` over the table as `t` (partition columns included), as Arrow. With no files yet, `sql` runs over an
    empty table of `empty`'s schema when given, else the result is an empty table without columns."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        found = scan(con, lake, name)
        if found:
            con.execute(f"CREATE VIEW t AS SELECT * FROM {found}")
        elif empty is not None:
            con.register("t", empty.empty_table())
        else:
            return pa.table({})
        return con.sql(sql, params=params or {}).to_arrow_table()
    except duckdb.Error as exc:
        raise TableError(f"reading lake table {name!r} failed: {exc}", table=name,
                         path=Path(uri(lake, name))) from exc
    finally:
        con.close()

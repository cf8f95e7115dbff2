"""Lake maintenance: compaction of small files, retention by age, vacuum of unreferenced files, and stats.

Guarantees, and why they hold:
- **Ingest is never blocked.** Maintenance does not take the per-table commit lock of `flywheel.warehouse.lake`
  (ingest's). Delta's optimistic concurrency lets an `optimize` or `delete` commit race an ingest append: appends
  are blind (they read nothing), so they never conflict with a rewrite of other files; when our commit loses the
  race, delta-rs raises `CommitFailedError` and we retry on the new snapshot (`MaintenanceSettings.commit_retries`).
- **Readers never break.** Compaction and retention only *remove files from the table's current version*; the files
  stay on disk until `vacuum`, which deletes only files removed longer ago than `vacuum_retention_hours`. A DuckDB
  connection (or a query) that listed a file keeps reading it as long as it lives less than that.
- **Offsets survive.** The landing watermarks are Delta application transactions; compaction, deletes, vacuum and
  checkpoints carry them over (tests/warehouse/test_maintenance.py checks `transaction_version` before == after).
- Two maintenance runs on one table do not overlap: each holds `_locks/<table>.maintenance.lock` (non-blocking;
  the second one skips the table and says so).
"""

from __future__ import annotations

import fcntl
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError

from flywheel.config import Settings, env_settings
from flywheel.errors import ConfigError
from flywheel.errors import FlywheelError
from flywheel.schemas.arrow import PARTITION_COLUMN

log = logging.getLogger("flywheel.maintenance")
T = TypeVar("T")

DATE_COLUMN = {**PARTITION_COLUMN, "quality_runs": "window_end"}
"""The column retention compares with its cutoff, per table; partition columns make a delete drop whole files."""


DEFAULT_RETENTION = "quarantine=90"


@dataclass(frozen=True)
class MaintenanceSettings:
    """How lake maintenance compacts, expires and vacuums the lake's Delta tables."""

    target_file_mb: int = 256
    """FLYWHEEL_LAKE_TARGET_FILE_MB: compaction writes files of about this size (64-512 recommended)."""

    row_group_rows: int = 1_000_000
    """FLYWHEEL_LAKE_ROW_GROUP_ROWS: rows per Parquet row group in compacted files (100k or more scans fast)."""

    min_files: int = 2
    """FLYWHEEL_LAKE_MIN_FILES: a partition is compacted only when it holds at least this many files."""

    retention: str = DEFAULT_RETENTION
    """FLYWHEEL_LAKE_RETENTION: days to keep per table, `table=days[,table=days]` by partition date; a table not
    named is kept forever."""

    vacuum_retention_hours: float = 168.0
    """FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS: vacuum deletes only files removed from the table longer ago than this,
    so readers that listed them (queries, `connect()` snapshots) keep working."""

    commit_retries: int = 10
    """FLYWHEEL_LAKE_COMMIT_RETRIES: attempts of a maintenance commit that conflicts with a concurrent one."""

    def __post_init__(self) -> None:
        for name in ("target_file_mb", "row_group_rows", "min_files", "commit_retries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FLYWHEEL_LAKE_{name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.vacuum_retention_hours < 0:
            raise ConfigError(f"FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS must not be negative, got "
                              f"{self.vacuum_retention_hours!r}")
        self.retention_days()  # fail at start-up, not at the first vacuum

    def retention_days(self) -> dict[str, float]:
        """FLYWHEEL_LAKE_RETENTION parsed: days to keep per table."""
        out: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in self.retention.split(","))):
            table, sep, days = item.partition("=")
            try:
                value = float(days)
            except ValueError:
                value = -1.0
            if not sep or not table.strip() or value <= 0:
                raise ConfigError(f"FLYWHEEL_LAKE_RETENTION={self.retention!r}: expected `table=days` with days > 0, "
                                  f"got {item!r}")
            out[table.strip()] = value
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "MaintenanceSettings":
        return env_settings(cls, "FLYWHEEL_LAKE_", environ)


class MaintenanceError(FlywheelError):
    """A maintenance operation failed; the message names the table and operation (also `table`)."""

    def __init__(self, message: str, *, table: str | None = None) -> None:
        super().__init__(message, table=table)
        self.table = table


class MaintenanceBusy(MaintenanceError):
    """Another maintenance run holds the table. Retryable: it will be free when that run ends."""

    retryable = True


@dataclass(frozen=True)
class TableStats:
    table: str
    version: int
    files: int
    rows: int
    bytes: int
    partitions: int
    small_files: int
    """Files below a quarter of the compaction target: what `compact` would rewrite."""

    @property
    def avg_file_bytes(self) -> int:
        return self.bytes // self.files if self.files else 0


@dataclass(frozen=True)
class CompactResult:
    table: str
    files_removed: int
    files_added: int
    version: int
    attempts: int


@dataclass(frozen=True)
class RetentionResult:
    table: str
    cutoff: date
    rows_deleted: int
    files_removed: int


@dataclass(frozen=True)
class VacuumResult:
    table: str
    files_deleted: int
    retention_hours: float


def lake_tables(settings: Settings) -> list[str]:
    """Every Delta table directly under the lake root (the event tables and other stages' tables)."""
    where = settings.lake_location
    return [name for name in where.children()
            if not name.startswith("_") and DeltaTable.is_deltatable(where.join(name), where.storage_options)]


def _table(settings: Settings, name: str) -> DeltaTable:
    where = settings.lake_location
    if not DeltaTable.is_deltatable(where.join(name), where.storage_options):
        known = ", ".join(lake_tables(settings)) or "none yet"
        raise MaintenanceError(f"no lake table {name!r} at {where.join(name)} (tables: {known})", table=name)
    return DeltaTable(where.join(name), storage_options=where.storage_options)


def stats(settings: Settings, name: str, msettings: MaintenanceSettings) -> TableStats:
    dt = _table(settings, name)
    add = _add_actions(dt)
    sizes = add.column("size_bytes")
    part_cols = [c for c in add.column_names if c.startswith("partition.")]
    partitions = len({tuple(add.column(c)[i].as_py() for c in part_cols) for i in range(add.num_rows)}) \
        if part_cols else (1 if add.num_rows else 0)
    small = msettings.target_file_mb * 1024 * 1024 // 4
    return TableStats(
        table=name, version=dt.version(), files=add.num_rows,
        rows=int(pc.sum(add.column("num_records")).as_py() or 0) if add.num_rows else 0,
        bytes=int(pc.sum(sizes).as_py() or 0) if add.num_rows else 0, partitions=partitions,
        small_files=int(pc.sum(pc.less(sizes, small)).as_py() or 0) if add.num_rows else 0)


def compact(settings: Settings, name: str, msettings: MaintenanceSettings) -> CompactResult:
    """Merge small files into files of about `target_file_mb` with row groups of `row_group_rows`.

    Partitions with fewer than `min_files` files are left alone. Safe while ingest appends and readers read.
    """
    props = WriterProperties(compression="ZSTD", max_row_group_size=msettings.row_group_rows)
    with _maintenance_lock(settings, name):

        def attempt() -> dict[str, Any]:
            dt = _table(settings, name)
            partitions = _partitions_to_compact(dt, msettings.min_files)
            removed = added = 0
            for filters in partitions:
                m = dt.optimize.compact(partition_filters=filters or None,
                                        target_size=msettings.target_file_mb * 1024 * 1024,
                                        writer_properties=props, max_concurrent_tasks=2)
                removed += int(m.get("numFilesRemoved", 0))
                added += int(m.get("numFilesAdded", 0))
            return {"removed": removed, "added": added, "version": dt.version()}

        out, attempts = _retrying(attempt, f"compaction of {name}", msettings.commit_retries, name)
    log.info("compacted %s: %d files -> %d (version %d)", name, out["removed"], out["added"], out["version"])
    return CompactResult(name, out["removed"], out["added"], out["version"], attempts)


def apply_retention(settings: Settings, name: str, days: float, msettings: MaintenanceSettings,
                    today: date | None = None) -> RetentionResult:
    """Delete the rows of `name` whose date is older than `days` days (whole partitions: a metadata commit)."""
    column = DATE_COLUMN.get(name)
    if column is None:
        raise MaintenanceError(f"retention of {name!r}: no date column known for it; retention applies to "
                               f"{', '.join(DATE_COLUMN)}", table=name)
    cutoff = (today or datetime.now(timezone.utc).date()) - timedelta(days=days)
    with _maintenance_lock(settings, name):

        def attempt() -> dict[str, Any]:
            return _table(settings, name).delete(predicate=f"{column} < '{cutoff.isoformat()}'")

        m, _ = _retrying(attempt, f"retention of {name}", msettings.commit_retries, name)
    return RetentionResult(name, cutoff, int(m.get("num_deleted_rows", 0) or 0),
                           int(m.get("num_removed_files", 0) or 0))


def vacuum(settings: Settings, name: str, msettings: MaintenanceSettings,
           dry_run: bool = False) -> VacuumResult:
    """Delete files no version newer than `vacuum_retention_hours` references; checkpoint the log first so the
    table (and its watermarks) loads fast without the old log entries."""
    with _maintenance_lock(settings, name):
        dt = _table(settings, name)
        try:
            # delta-rs takes whole hours: round up, never down (0.5 h must not become 0 and delete what readers use)
            deleted = dt.vacuum(retention_hours=math.ceil(msettings.vacuum_retention_hours), dry_run=dry_run,
                                enforce_retention_duration=False)
            if not dry_run:
                dt.create_checkpoint()
        except Exception as exc:
            raise MaintenanceError(f"vacuum of {name} failed: {exc}", table=name) from exc
    return VacuumResult(name, len(deleted), msettings.vacuum_retention_hours)


def _partitions_to_compact(dt: DeltaTable, min_files: int) -> list[list[tuple[str, str, str]]]:
    add = _add_actions(dt)
    part_cols = [c for c in add.column_names if c.startswith("partition.")]
    if not part_cols:
        return [[]] if add.num_rows >= min_files else []
    counts: dict[tuple[Any, ...], int] = {}
    for row in zip(*(add.column(c).to_pylist() for c in part_cols)):
        counts[row] = counts.get(row, 0) + 1
    names = [c.removeprefix("partition.") for c in part_cols]
    return [[(n, "=", _literal(v)) for n, v in zip(names, key)] for key, n_files in sorted(counts.items(), key=str)
            if n_files >= min_files]


def _add_actions(dt: DeltaTable) -> pa.Table:
    """The current files with their partition values and stats (delta-rs returns arro3; we use pyarrow)."""
    return pa.table(dt.get_add_actions(flatten=True))


def _literal(v: Any) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _retrying(fn: Callable[[], T], what: str, retries: int, table: str) -> tuple[T, int]:
    for attempt in range(1, retries + 1):
        try:
            return fn(), attempt
        except CommitFailedError as exc:  # a concurrent commit won the race: redo on the new snapshot
            if attempt == retries:
                raise MaintenanceError(f"{what} lost {retries} commit races in a row ({exc}); "
                                       "try again when ingest is quieter", table=table) from exc
            log.info("%s conflicted with a concurrent commit (attempt %d): %s", what, attempt, exc)
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
        except FlywheelError:
            raise
        except Exception as exc:
            raise MaintenanceError(f"{what} failed: {exc}", table=table) from exc
    raise AssertionError("unreachable")


@contextmanager
def _maintenance_lock(settings: Settings, name: str) -> Iterator[None]:
    if settings.lake_location.remote:  # no lock spans hosts: Delta's conflict checks stop a second compaction
        yield
        return
    lock_dir = Path(settings.lake) / "_locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.maintenance.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MaintenanceBusy(f"another maintenance run is working on {name}; try again later",
                                  table=name) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

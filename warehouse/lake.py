"""The lake: one Delta table per kind of row (`inferences`, `feedback`, `quarantine`) under `Settings.lake`.

Exactly-once landing rests on one fact of Delta: a commit can carry application transactions. Every commit that
lands rows read from Kafka also records, per topic-partition it read, the next offset to read
(`Transaction(app_id="<topic>[<partition>]", version=next_offset)`), atomically with the data. That recorded
offset is the table's *watermark* for the partition. A restarted worker resumes each partition from the lowest
watermark of the tables it feeds, and drops every row below a table's own watermark before committing to it, so a
replay after a crash lands nothing twice, and a crash before a commit loses nothing (Kafka still has the rows).

Commits to one table are serialized across processes on this host by a file lock, and the watermark is re-read
under it, so two workers that briefly own the same partition during a rebalance cannot both land its rows.

On object storage (`s3://`, see `flywheel.storage`) no lock spans hosts: there each commit is an attempt that
reads the latest version, drops the rows below its watermarks, stamps `_ingested_at` and writes its files, and
Delta's conditional put of the log entry lets exactly one writer create each version. An attempt that loses starts
again from the new version (re-reading the watermarks, dropping again, stamping again), so what holds on one host
under the lock holds across hosts: no row lands twice, and stamps increase with the version.

Why not files named after topic, partition and offsets (STYLE rule 3, as Kafka Connect's S3 sink does): that makes
a replay *overwrite* its file, which needs batch boundaries that repeat exactly after a crash (they do not: a batch
is cut by size and time, and one file holds many partitions), and it leaves readers to list a directory that
changes under them. Here the offsets are committed *with* the rows, atomically, in the table's log: a replay is
recognised by the watermark, whatever its batching, and readers see a commit whole or not at all. Do not "fix" the
file names back.

The Parquet files are written here with pyarrow and then committed, with the app transactions, by
`DeltaTable.create_write_transaction`, rather than by `write_deltalake`: a landing commit is almost all compression
of ~1 KB texts, which `write_deltalake` does on one core after copying the batch to split it by partition, while
here a big commit is split into a few files compressed in parallel, and the Delta log stats are computed only for
the columns a filter can skip files on. What `write_deltalake` checked before writing (the table's columns, no
nulls where the table has none) is checked here too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.storage import LakeLocation
from flywheel.schemas.arrow import LINEAGE, PARTITION_COLUMN, SCHEMAS
from flywheel.schemas.contract import EVENT_TYPES

TABLES = tuple(SCHEMAS)
TopicPartition = tuple[str, int]

WRITERS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
"""Files one commit may write in parallel (one core each)."""
MIN_FILE_BYTES = 16 << 20
"""A commit is split across writers only into files of at least this much Arrow data (roughly half that as
Parquet): each split adds a small file for compaction to merge, and below this the threads cost more than they save."""

# pyarrow's LZ4 is the LZ4_RAW codec; the framed LZ4 that delta-rs wrote for "LZ4" is deprecated by Parquet.
_PYARROW_CODEC = {"UNCOMPRESSED": "NONE", "LZ4_RAW": "LZ4", "LZ4": "LZ4", "SNAPPY": "SNAPPY", "GZIP": "GZIP",
                  "BROTLI": "BROTLI", "ZSTD": "ZSTD"}
LOW_SPACE_BYTES = 64 << 20
"""Below this much free space `Lake.write_problem` (and `flywheel status`) warn: a few large commits' worth."""
COMMIT_ATTEMPTS = 50
"""On object storage, how many times a commit that lost its version to another writer starts again before it gives
up (each loss means another writer committed: contention, not a fault, so the bound is generous)."""
_IDS = {f.name for et in EVENT_TYPES.values() for f in et.fields if f.kind == "id"} | {"event_id"}


class LakeError(FlywheelError):
    """Reading or writing a lake table failed; the message names the table and path."""


class LakeUnwritable(LakeError):
    """The lake's filesystem refused a write: it is full (`reason` "no space left"), read-only ("read-only") or
    not ours to write ("permission denied"). A Delta commit is its log entry, written last: when that failed,
    nothing of the commit is visible and no watermark moved (Parquet files it wrote are orphans `flywheel lake
    vacuum` removes); when only a checkpoint after it failed, the commit stands. Either way the watermarks say what
    landed, so retrying from them lands nothing twice. Retryable once the filesystem accepts writes again."""

    retryable = True

    def __init__(self, table: str, path: Path | str, reason: str, error: BaseException) -> None:
        self.table, self.path, self.reason = table, str(path), reason
        super().__init__(f"cannot write the lake table {table!r} at {path}: {reason} ({error}); "
                         f"{_FIXES[reason]}", table=table, path=str(path), reason=reason)


# errno -> the reason a person reads; delta-rs reports OS errors in its messages only ("... (os error 28)").
_UNWRITABLE = {errno.ENOSPC: "no space left", errno.EDQUOT: "no space left", errno.EROFS: "read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
_UNWRITABLE_TEXT = {"no space left": "no space left", "quota exceeded": "no space left",
                    "read-only file system": "read-only", "permission denied": "permission denied",
                    **{f"os error {code})": reason for code, reason in _UNWRITABLE.items()}}
_FIXES = {"no space left": "free space on that filesystem (or move FLYWHEEL_LAKE to a larger one; `flywheel lake "
                           "vacuum` removes files no version needs)",
          "read-only": "remount that filesystem read-write (`mount -o remount,rw`), or point FLYWHEEL_LAKE at a "
                       "writable one",
          "permission denied": "give the worker's user write access to that directory"}


def unwritable_reason(exc: BaseException) -> str | None:
    """Why `exc` (or an exception it was raised from) says the filesystem refused a write; None if it does not."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _UNWRITABLE:
            return _UNWRITABLE[seen.errno]
        text = str(seen).lower()
        for marker, reason in _UNWRITABLE_TEXT.items():
            if marker in text:
                return reason
        seen = seen.__cause__ or seen.__context__
    return None


def app_id(topic: str, partition: int, topic_id: str | None = None) -> str:
    """The Delta application id a partition's watermark is stored under.

    It includes the topic's id (KIP-516) when the broker has one: a topic that is deleted and created again (or an
    in-memory broker that restarted) starts at offset 0 again, and must not inherit the old topic's watermarks.
    """
    return f"{topic}/{topic_id}[{partition}]" if topic_id else f"{topic}[{partition}]"


@dataclass(frozen=True)
class CommitResult:
    table: str
    rows: int
    version: int | None
    replayed: Mapping[TopicPartition, tuple[int, int, int]] = field(default_factory=dict)
    """Rows dropped because the table already held them (offsets below its watermark for the same topic id), per
    topic-partition: (rows, lowest offset, highest offset)."""

    @property
    def replayed_rows(self) -> int:
        return sum(n for n, _, _ in self.replayed.values())


class Lake:
    def __init__(self, root: str | os.PathLike[str] | LakeLocation, codec: str = Settings.lake_codec) -> None:
        self.location = root if isinstance(root, LakeLocation) else LakeLocation(str(root))
        self.remote = self.location.remote
        self._root = None if self.remote else Path(self.location.uri)
        self._options = self.location.storage_options
        self.codec = codec.upper()
        self._tables: dict[str, DeltaTable] = {}
        self.lost_attempts = 0
        """Commit attempts that lost their version to another writer and started again (object storage only)."""

    @property
    def root(self) -> Path:
        """The lake's local directory; a lake on object storage has none (use `location`)."""
        if self._root is None:
            raise LakeError(f"the lake at {self.location.uri} is on object storage: it has no local directory")
        return self._root

    def path(self, table: str) -> Path:
        if table not in SCHEMAS:
            raise LakeError(f"unknown lake table {table!r}; the tables are {', '.join(TABLES)}")
        return self.root / table

    def uri(self, table: str) -> str:
        """Where the table is, as delta-rs opens it: a local path or an `s3://` URI."""
        if table not in SCHEMAS:
            raise LakeError(f"unknown lake table {table!r}; the tables are {', '.join(TABLES)}")
        return self.location.join(table) if self.remote else str(self.root / table)

    def ensure(self) -> None:
        """Create the tables that do not exist yet, and add to existing ones the nullable columns this build has
        and they lack (a lake created by an older build keeps working; its old rows read those columns as null).
        Nested columns whose structs gained nullable fields (chat messages gained `name`, `tool_call_id` and
        `tool_calls`) are widened in the table's schema; old files keep their narrower structs, which readers fill
        with nulls. Idempotent; safe with concurrent callers. A column that differs otherwise is left for `commit`
        to refuse."""
        for name in TABLES:
            uri = self.uri(name)
            if DeltaTable.is_deltatable(uri, self._options):
                if self._missing_columns(name) or self._narrower_columns(name):
                    with self._lock(name):
                        self._add_missing_columns(name)
                        self._widen_columns(name)
                continue
            if not self.remote:
                self.path(name).mkdir(parents=True, exist_ok=True)
            with self._lock(name):
                if not DeltaTable.is_deltatable(uri, self._options):
                    DeltaTable.create(uri, schema=SCHEMAS[name], partition_by=[PARTITION_COLUMN[name]],
                                      mode="ignore", name=name, storage_options=self._options,
                                      configuration={"delta.checkpointInterval": "50",
                                                     "delta.dataSkippingStatsColumns": ",".join(stats_columns(name))})

    def _missing_columns(self, name: str) -> list[pa.Field]:
        have = {f.name for f in self.table(name).schema().fields}
        return [f for f in SCHEMAS[name] if f.name not in have]

    def _add_missing_columns(self, name: str) -> None:
        """Under the table's lock: add this build's missing columns (re-read: another process may have)."""
        missing = self._missing_columns(name)
        required = [f.name for f in missing if not f.nullable]
        if required:
            raise LakeError(f"lake table {name!r} at {self.uri(name)} lacks the non-nullable columns {required}: "
                            "rows already landed cannot have them; land into a new lake (FLYWHEEL_HOME)")
        if missing:
            fields = DeltaSchema.from_arrow(pa.schema(missing)).fields
            self.table(name).alter.add_columns(fields)
            self._tables.pop(name, None)

    def _narrower_columns(self, name: str) -> list[str]:
        """Columns whose type in the table is this build's but for struct fields this build added."""
        have = {f.name: f.type for f in pa.schema(self.table(name).schema().to_arrow())}
        return [f.name for f in SCHEMAS[name] if f.name in have and have[f.name] != f.type
                and _widens(have[f.name], f.type)]

    def _widen_columns(self, name: str) -> None:
        """Under the table's lock: give narrower columns this build's type, by an empty append that merges the
        schema (delta-rs adds nested fields only that way; `alter.add_columns` adds top-level ones)."""
        if self._narrower_columns(name):
            write_deltalake(self.uri(name), SCHEMAS[name].empty_table(), mode="append", schema_mode="merge",
                            partition_by=[PARTITION_COLUMN[name]], storage_options=self._options)
            self._tables.pop(name, None)

    def table(self, name: str) -> DeltaTable:
        try:
            return DeltaTable(self.uri(name), storage_options=self._options)
        except TableNotFoundError:
            raise LakeError(f"lake table {name!r} does not exist at {self.uri(name)}; run `flywheel ingest` "
                            "(or Lake.ensure()) to create it") from None

    def write_problem(self, low_space_bytes: int = LOW_SPACE_BYTES) -> str | None:
        """Without writing anything: why a commit would fail now (a read-only filesystem, no write permission,
        less than `low_space_bytes` free), with the fix; None when nothing shows (a commit can still fail).
        On object storage nothing shows before a write: a refused one fails the commit, and offsets hold."""
        if self.remote:
            return None
        root = self.root
        while not root.exists() and root != root.parent:
            root = root.parent
        st = os.statvfs(root)
        if st.f_flag & os.ST_RDONLY:
            return f"the lake at {self.root} is on a read-only filesystem: {_FIXES['read-only']}"
        if not os.access(root, os.W_OK):
            return f"this user cannot write the lake at {self.root}: {_FIXES['permission denied']}"
        free = st.f_bavail * st.f_frsize
        if free < low_space_bytes:
            return f"only {free / 1e6:.1f} MB free for the lake at {self.root}: {_FIXES['no space left']}"
        return None

    def unwritable(self, probe_bytes: int = 256 * 1024) -> LakeUnwritable | None:
        """Whether a commit could write every table now: writes `probe_bytes` (about what a small commit needs)
        next to each table's log, syncs, and removes it. None when all took it; else why not. A cheap check before
        a worker re-reads and lands again after `LakeUnwritable`. On object storage: None (the next commit is the
        probe)."""
        if self.remote:
            return None
        for name in TABLES:
            probe = self.path(name) / "_delta_log" / f".flywheel-probe-{uuid.uuid4().hex}"
            try:
                with open(probe, "wb") as fh:
                    fh.write(b"\0" * probe_bytes)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                reason = unwritable_reason(exc)
                if reason is None:
                    raise
                return LakeUnwritable(name, self.path(name), reason, exc)
            finally:
                try:
                    probe.unlink()
                except OSError:  # the open failed: nothing to remove
                    pass
        return None

    def watermarks(self, name: str, partitions: list[TopicPartition],
                   topic_ids: Mapping[str, str] | None = None) -> dict[TopicPartition, int | None]:
        """Next offset to read per topic-partition, as committed with the table's data (None: never landed)."""
        if not DeltaTable.is_deltatable(self.uri(name), self._options):
            return {tp: None for tp in partitions}
        dt = self._latest(name)
        ids = topic_ids or {}
        return {tp: dt.transaction_version(app_id(tp[0], tp[1], ids.get(tp[0]))) for tp in partitions}

    def commit(self, name: str, rows: pa.Table, next_offsets: Mapping[TopicPartition, int],
               topic_ids: Mapping[str, str] | None = None, *, keep_ingested_at: bool = False) -> CommitResult:
        """Append `rows` and advance the watermarks to `next_offsets`, in one Delta commit.

        Rows below the table's current watermark for their partition (under the same topic id) were landed
        before (a replay) and are dropped, and counted in `CommitResult.replayed`; a row is never dropped for a
        watermark of another topic id. A batch that brings nothing new and moves no watermark commits nothing.

        The rows' `_ingested_at` is stamped here, under the table's lock (see `_stamp`): commits in lock order,
        which is version order, have strictly increasing stamps, so a reader that saw versions up to N knows
        every later commit is stamped after everything it saw. `keep_ingested_at` keeps the rows' own stamps
        instead, for backfills of known-good data and tests that place rows at chosen landing times: such rows
        can fall into quality windows that have already ended (and were checked without them).
        """
        try:
            return self._commit(name, rows, next_offsets, topic_ids or {}, keep_ingested_at)
        except (OSError, LakeError) as exc:
            reason = unwritable_reason(exc)
            if reason is None:
                raise
            raise LakeUnwritable(name, self.uri(name), reason, exc) from exc

    def _commit(self, name: str, rows: pa.Table, next_offsets: Mapping[TopicPartition, int],
                ids: Mapping[str, str], keep_ingested_at: bool) -> CommitResult:
        with self._lock(name):
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                try:
                    return self._attempt(name, rows, next_offsets, ids, keep_ingested_at)
                except _Lost:  # another host committed this version first: start again from its version
                    self.lost_attempts += 1
                    time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** attempt)))
            raise LakeError(f"commit to lake table {name!r} at {self.uri(name)} lost its version to other writers "
                            f"{COMMIT_ATTEMPTS} times in a row; nothing of it landed and no watermark moved, so "
                            "retrying lands nothing twice")

    def _attempt(self, name: str, rows: pa.Table, next_offsets: Mapping[TopicPartition, int],
                 ids: Mapping[str, str], keep_ingested_at: bool) -> CommitResult:
        """One try at the commit on the table's latest version. Locally it runs under the table's lock and delta-rs
        may retry a conflict with a non-landing writer (compaction) itself; on object storage a lost version
        raises `_Lost`, for `_commit` to re-read, re-drop and re-stamp."""
        dt = self._latest(name)
        current = {tp: dt.transaction_version(app_id(tp[0], tp[1], ids.get(tp[0]))) for tp in next_offsets}
        rows, replayed = _drop_landed(rows, current)
        advance = {tp: off for tp, off in next_offsets.items() if (cur := current[tp]) is None or off > cur}
        if rows.num_rows == 0 and not advance:
            return CommitResult(name, 0, None, replayed)
        txns = [Transaction(app_id(tp[0], tp[1], ids.get(tp[0])), off) for tp, off in sorted(advance.items())]
        adds: list[AddAction] = []
        try:
            rows = _conform(dt, name, rows)
            rows, clock = _stamp(dt, rows, keep_ingested_at)
            txns += clock
            adds = self._write_files(name, rows)
            dt.create_write_transaction(list[AddAction | RemoveAction](adds), "append", dt.schema(),
                                        partition_by=[PARTITION_COLUMN[name]],
                                        commit_properties=CommitProperties(
                                            app_transactions=txns, max_commit_retries=0 if self.remote else None))
            dt.update_incremental()  # the commit does not move this object to the version it made
        except CommitFailedError as exc:
            self._tables.pop(name, None)  # reload from the log next time rather than trust this state
            if not self.remote:
                raise LakeError(f"commit of {rows.num_rows} rows to lake table {name!r} at {self.uri(name)} "
                                f"failed: {exc}") from exc
            self._discard(name, adds)
            raise _Lost() from exc
        except Exception as exc:  # delta-rs raises several unrelated types; all mean the same to the caller
            self._tables.pop(name, None)  # reload from the log next time rather than trust this state
            raise LakeError(f"commit of {rows.num_rows} rows to lake table {name!r} at {self.uri(name)} "
                            f"failed: {exc}") from exc
        return CommitResult(name, rows.num_rows, dt.version(), replayed)

    def _discard(self, name: str, adds: list[AddAction]) -> None:
        """Remove the files of an attempt that lost its version (no log entry names them); what a failure leaves
        behind is removed later by `flywheel lake vacuum`."""
        fs, base = self.location.filesystem()
        for add in adds:
            try:
                fs.delete_file(f"{base}/{name}/{add.path}")
            except OSError:
                pass

    def _write_files(self, name: str, rows: pa.Table) -> list[AddAction]:
        """Write `rows` under the table, a file (or, for a big batch, up to `WRITERS` files written in parallel) per
        partition value; the add actions that commit them."""
        part = PARTITION_COLUMN[name]
        values = pc.unique(rows[part]).to_pylist()
        pieces = []
        for value in values:
            same = rows if len(values) == 1 else rows.filter(pc.equal(rows[part], value))
            same = same.drop_columns([part])  # Delta keeps partition values in paths, not in the files
            step = -(-same.num_rows // max(1, min(WRITERS, same.nbytes // MIN_FILE_BYTES)))
            pieces += [(value, same.slice(start, step)) for start in range(0, same.num_rows, step)]
        if len(pieces) <= 1:
            return [self._write_file(name, *p) for p in pieces]
        with ThreadPoolExecutor(min(WRITERS, len(pieces))) as pool:  # pyarrow releases the GIL while it writes
            return list(pool.map(lambda p: self._write_file(name, *p), pieces))

    def _write_file(self, name: str, value: date, rows: pa.Table) -> AddAction:
        part = PARTITION_COLUMN[name]  # a date column in every table
        codec = "" if self.codec == "UNCOMPRESSED" else f".{self.codec.lower().replace('_', '')}"  # as Spark names them
        rel = f"{part}={value.isoformat()}/part-{uuid.uuid4()}-c000{codec}.parquet"
        short = _short_columns(name)
        if self.remote:
            fs, base = self.location.filesystem()
            where = f"{base}/{name}/{rel}"
            pq.write_table(rows, where, filesystem=fs, compression=_PYARROW_CODEC[self.codec],
                           write_statistics=short, use_dictionary=[c for c in short if c not in _IDS])
            size = fs.get_file_info(where).size
        else:
            path = self.path(name) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows, str(path), compression=_PYARROW_CODEC[self.codec], write_statistics=short,
                           use_dictionary=[c for c in short if c not in _IDS])  # ids are distinct too
            size = path.stat().st_size
        return AddAction(rel, size, {part: value.isoformat()}, int(time.time() * 1000), True,
                         _file_stats(rows, stats_columns(name)))

    def _latest(self, name: str) -> DeltaTable:
        """The table at its latest version: loaded once, then brought up to date from the log's new entries."""
        dt = self._tables.get(name)
        if dt is None:
            dt = self._tables[name] = self.table(name)
        else:
            dt.update_incremental()
        return dt

    def _lock(self, name: str) -> AbstractContextManager[None]:
        """Serialize this host's commits to the table (on object storage, a no-op: see the module's docstring)."""
        return nullcontext() if self.remote else self._file_lock(name)

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        lock_dir = self.root / "_locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class _Lost(Exception):
    """An attempt's commit lost its version to another writer (object storage): nothing of it is visible."""


@cache
def stats_columns(name: str) -> tuple[str, ...]:
    """The columns whose min, max and null count each file's add action carries (the table's
    `delta.dataSkippingStatsColumns`): ids, integers, timestamps and the lineage columns, which filters can skip
    files on. Bounds of the ~1 KB texts would be long, slow to compute and no use for skipping."""
    lineage = {f.name for f in LINEAGE}
    return tuple(f.name for f in SCHEMAS[name] if f.name != PARTITION_COLUMN[name] and (
        f.name in _IDS or f.name in lineage or pa.types.is_integer(f.type)
        or pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)))


@cache
def _short_columns(name: str) -> list[str]:
    """The columns a landed file keeps min/max statistics for, and but for the ids dictionary-encodes: all but the
    free texts (outputs, prompts, corrections, JSON, payloads). Those are mostly distinct, so a dictionary is built
    only to be dropped, and bounds of ~1 KB texts filter nothing; writing both cost ~20% of the Parquet writer's
    time."""
    free = {f.name for et in EVENT_TYPES.values() for f in et.fields if f.kind in ("text", "input", "object")}
    free |= {"input_messages", "extra", "payload"}
    return [f.name for f in SCHEMAS[name] if f.name not in free and f.name != PARTITION_COLUMN[name]]


@cache
def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    """`new` is `old` with fields added to its structs (at any depth), each after the fields `old` has."""
    if old == new:
        return True
    if pa.types.is_list(old) and pa.types.is_list(new):
        return _widens(old.value_type, new.value_type)
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        return old.num_fields <= new.num_fields and all(
            old.field(i).name == new.field(i).name and _widens(old.field(i).type, new.field(i).type)
            for i in range(old.num_fields))
    return False


def _delta_columns(name: str) -> dict[str, Any]:
    return {f.name: f.type for f in DeltaSchema.from_arrow(SCHEMAS[name]).fields}


def _conform(dt: DeltaTable, name: str, rows: pa.Table) -> pa.Table:
    """`rows` in the table's schema, or LakeError if they do not fit it (what `write_deltalake` refused)."""
    rows = rows.cast(SCHEMAS[name])
    fields = dt.schema().fields
    if {f.name: f.type for f in fields} != _delta_columns(name):
        raise LakeError(f"lake table {name!r} has the columns {[f.name for f in fields]}, this build writes "
                        f"{SCHEMAS[name].names} (or their types differ)")
    nulls = [f.name for f in fields if not f.nullable and rows[f.name].null_count]
    if nulls:
        raise LakeError(f"nulls in the non-nullable columns {nulls} of lake table {name!r}")
    return rows


def _file_stats(rows: pa.Table, columns: tuple[str, ...]) -> str:
    minimum, maximum, nulls = {}, {}, {}
    for c in columns:
        col = rows[c]
        nulls[c] = col.null_count
        if col.null_count < len(col):
            bounds = pc.min_max(col)
            minimum[c], maximum[c] = _stat(bounds["min"].as_py()), _stat(bounds["max"].as_py(), up=True)
    return json.dumps({"numRecords": rows.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls})


def _stat(v: Any, up: bool = False) -> Any:
    """A bound as the Delta log writes it. Timestamps there have milliseconds: a maximum is rounded up, never
    down, so a reader skipping files on it cannot skip a row it should have read."""
    if isinstance(v, datetime):
        v = v.astimezone(timezone.utc)
        if up and v.microsecond % 1000:
            v += timedelta(microseconds=1000 - v.microsecond % 1000)
        return v.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(v, date):
        return v.isoformat()
    return v


STAMP_APP_ID = "flywheel/_ingested_at"
"""The app transaction whose version is the table's last `_ingested_at` stamp, in microseconds since the epoch."""


def _stamp(dt: DeltaTable, rows: pa.Table, keep: bool) -> tuple[pa.Table, list[Transaction]]:
    """`rows` stamped with this commit's `_ingested_at`, and the app transaction that records the stamp.

    The stamp is now, but never at or below the previous commit's (read from the table under its lock), so it
    increases strictly from commit to commit even if the clock steps back. With `keep` the rows keep their stamps,
    and the recorded stamp only moves up to the largest of them (later stamped commits still land above it).
    """
    if rows.num_rows == 0:
        return rows, []
    last = dt.transaction_version(STAMP_APP_ID)
    i = rows.schema.get_field_index("_ingested_at")
    if keep:
        top = pc.max(rows.column(i)).cast(pa.int64()).as_py()  # the column's unit is microseconds
        return rows, [] if last is not None and top <= last else [Transaction(STAMP_APP_ID, top)]
    stamp = time.time_ns() // 1000
    if last is not None and stamp <= last:
        stamp = last + 1
    column = pa.repeat(pa.scalar(stamp, pa.int64()).cast(rows.schema.field(i).type), rows.num_rows)
    return rows.set_column(i, rows.schema.field(i), column), [Transaction(STAMP_APP_ID, stamp)]


def _drop_landed(rows: pa.Table, current: Mapping[TopicPartition, int | None]
                 ) -> tuple[pa.Table, dict[TopicPartition, tuple[int, int, int]]]:
    """`rows` without those below `current` (the watermarks of the topic id the batch was read under), and what
    was dropped per topic-partition: (rows, lowest offset, highest offset)."""
    replayed: dict[TopicPartition, tuple[int, int, int]] = {}
    if rows.num_rows == 0:
        return rows, replayed
    keep = None
    for (topic, partition), wm in current.items():
        if wm is None:
            continue
        stale = pc.and_(pc.and_(pc.equal(rows["_topic"], topic), pc.equal(rows["_partition"], partition)),
                        pc.less(rows["_offset"], wm))
        n = pc.sum(stale).as_py() or 0
        if n:
            bounds = pc.min_max(pc.filter(rows["_offset"], stale))
            replayed[(topic, partition)] = (n, bounds["min"].as_py(), bounds["max"].as_py())
        keep = pc.invert(stale) if keep is None else pc.and_(keep, pc.invert(stale))
    # Filtering copies every column, ~1 KB a row; a replay is rare, so look before copying.
    return (rows if not replayed else rows.filter(keep)), replayed

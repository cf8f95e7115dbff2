"""The lake: one Delta table per kind of row (`inferences`, `feedback`, `quarantine`) under `Settings.lake`.

Exactly-once landing rests on one fact of Delta: a commit can carry application transactions. Every commit that
lands rows read from Kafka also records, per topic-partition it read, the next offset to read
(`Transaction(app_id="<topic>[<partition>]", version=next_offset)`), atomically with the data. That recorded
offset is the table's *watermark* for the partition. A restarted worker resumes each partition from the lowest
watermark of the tables it feeds, and drops every row below a table's own watermark before committing to it, so a
replay after a crash lands nothing twice, and a crash before a commit loses nothing (Kafka still has the rows).

Commits to one table are serialized across processes on this host by a file lock, and the watermark is re-read
under it, so two workers that briefly own the same partition during a rebalance cannot both land its rows.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError

from flywheel.errors import FlywheelError
from flywheel.schemas.arrow import PARTITION_COLUMN, SCHEMAS

TABLES = tuple(SCHEMAS)
TopicPartition = tuple[str, int]


class LakeError(FlywheelError):
    """Reading or writing a lake table failed; the message names the table and path."""


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


class Lake:
    def __init__(self, root: str | os.PathLike[str], codec: str = "LZ4_RAW") -> None:
        self.root = Path(root)
        self.codec = codec.upper()
        self._tables: dict[str, DeltaTable] = {}

    def path(self, table: str) -> Path:
        if table not in SCHEMAS:
            raise LakeError(f"unknown lake table {table!r}; the tables are {', '.join(TABLES)}")
        return self.root / table

    def ensure(self) -> None:
        """Create the tables that do not exist yet (idempotent; safe with concurrent callers)."""
        for name in TABLES:
            path = self.path(name)
            if DeltaTable.is_deltatable(str(path)):
                continue
            path.mkdir(parents=True, exist_ok=True)
            with self._lock(name):
                if not DeltaTable.is_deltatable(str(path)):
                    DeltaTable.create(str(path), schema=SCHEMAS[name], partition_by=[PARTITION_COLUMN[name]],
                                      mode="ignore", name=name,
                                      configuration={"delta.checkpointInterval": "50"})

    def table(self, name: str) -> DeltaTable:
        try:
            return DeltaTable(str(self.path(name)))
        except TableNotFoundError:
            raise LakeError(f"lake table {name!r} does not exist at {self.path(name)}; run `flywheel ingest` "
                            "(or Lake.ensure()) to create it") from None

    def watermarks(self, name: str, partitions: list[TopicPartition],
                   topic_ids: Mapping[str, str] | None = None) -> dict[TopicPartition, int | None]:
        """Next offset to read per topic-partition, as committed with the table's data (None: never landed)."""
        if not DeltaTable.is_deltatable(str(self.path(name))):
            return {tp: None for tp in partitions}
        dt = self._latest(name)
        ids = topic_ids or {}
        return {tp: dt.transaction_version(app_id(tp[0], tp[1], ids.get(tp[0]))) for tp in partitions}

    def commit(self, name: str, rows: pa.Table, next_offsets: Mapping[TopicPartition, int],
               topic_ids: Mapping[str, str] | None = None) -> CommitResult:
        """Append `rows` and advance the watermarks to `next_offsets`, in one Delta commit.

        Rows below the table's current watermark for their partition were landed before (a replay) and are
        dropped; a batch that brings nothing new and moves no watermark commits nothing.
        """
        with self._lock(name):
            dt = self._latest(name)
            ids = topic_ids or {}
            current = {tp: dt.transaction_version(app_id(tp[0], tp[1], ids.get(tp[0]))) for tp in next_offsets}
            rows = _drop_landed(rows, current)
            advance = {tp: off for tp, off in next_offsets.items() if current[tp] is None or off > current[tp]}
            if rows.num_rows == 0 and not advance:
                return CommitResult(name, 0, None)
            txns = [Transaction(app_id(tp[0], tp[1], ids.get(tp[0])), off) for tp, off in sorted(advance.items())]
            try:
                write_deltalake(
                    dt, rows.cast(SCHEMAS[name]), mode="append", partition_by=[PARTITION_COLUMN[name]],
                    writer_properties=WriterProperties(compression=self.codec),
                    commit_properties=CommitProperties(app_transactions=txns),
                )
            except Exception as exc:  # delta-rs raises several unrelated types; all mean the same to the caller
                self._tables.pop(name, None)  # reload from the log next time rather than trust this state
                raise LakeError(f"commit of {rows.num_rows} rows to lake table {name!r} at {self.path(name)} "
                                f"failed: {exc}") from exc
            return CommitResult(name, rows.num_rows, dt.version())

    def _latest(self, name: str) -> DeltaTable:
        """The table at its latest version: loaded once, then brought up to date from the log's new entries."""
        dt = self._tables.get(name)
        if dt is None:
            dt = self._tables[name] = self.table(name)
        else:
            dt.update_incremental()
        return dt

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        lock_dir = self.root / "_locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _drop_landed(rows: pa.Table, current: Mapping[TopicPartition, int | None]) -> pa.Table:
    if rows.num_rows == 0:
        return rows
    keep = None
    for (topic, partition), wm in current.items():
        if wm is None:
            continue
        stale = pc.and_(pc.and_(pc.equal(rows["_topic"], topic), pc.equal(rows["_partition"], partition)),
                        pc.less(rows["_offset"], wm))
        keep = pc.invert(stale) if keep is None else pc.and_(keep, pc.invert(stale))
    return rows if keep is None else rows.filter(keep)

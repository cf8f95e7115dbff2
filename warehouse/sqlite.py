"""Durable transactions on a small SQLite state file (the alert outbox, the jobs table): the stores whose rows are
small state machines updated by several processes, which SQLite does atomically under its file lock (WAL) and Delta
only by rewriting files.

`transaction` commits with `synchronous=FULL` (a committed row survives a power cut), rolls back on any exception,
and turns SQLite's errors into the caller's error type, naming `what` (the store and its path).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flywheel.errors import FlywheelError


@contextmanager
def transaction(path: Path, what: str, error: Callable[[str], FlywheelError],
                immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection inside one transaction (`BEGIN IMMEDIATE` takes the write lock at once, so a read-then-write
    cannot interleave with another process's); `error(message)` is what a failure raises."""
    try:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise error(f"cannot open {what}: {exc}") from exc
    try:
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        raise error(f"{what}: {exc}") from exc
    finally:
        con.close()

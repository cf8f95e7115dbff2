"""The jobs table: one row per job a trigger started (an evaluation, a Prefect deployment run, a webhook call, a
shell command, a fine-tune), with its state, attempts, timestamps and the tail of its output.

Guarantees (the alert outbox's, for jobs):
- The same (policy, subject) never starts twice: a job is *claimed* first, in one transaction, under the unique
  key (policy, subject) — the subject is what fired it, e.g. `dataset:support-sft@4` or an alert's dedup key —
  and only the claimer runs it. A crash between claiming and recording leaves the row `running` with an expired
  lease: `recover()` marks it `failed` ("interrupted"), for `retry` to start it again on purpose, so nothing
  starts twice by itself.
- A failing target is recorded as failed with its error and output; `retry` queues it again (attempts counted).
- A cancelled job stays cancelled: its runner's late result does not overwrite it (`finish` only records over
  `running`). A running target that can be stopped records its handle when it starts (a shell command's
  process group on this host, a Prefect flow run), which `flywheel jobs cancel` stops.
- SQLite (WAL, `BEGIN IMMEDIATE`), for the same reason as the outbox: small transactional row updates by several
  processes. It lives at `$FLYWHEEL_HOME/jobs/jobs.sqlite`.
"""

from __future__ import annotations

import sqlite3
import time
from typing import ContextManager
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import FlywheelError
from flywheel.warehouse.sqlite import transaction

STATES = ("claimed", "running", "succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY,
  policy TEXT NOT NULL,
  subject TEXT NOT NULL,
  trigger TEXT NOT NULL,
  target TEXT NOT NULL,
  params TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL,
  started_at REAL,
  finished_at REAL,
  lease_until REAL,
  result TEXT,
  error TEXT,
  output_tail TEXT,
  handle TEXT,
  UNIQUE (policy, subject)
);
"""


class JobError(FlywheelError):
    """The jobs table could not be read or written, or a job cannot do what was asked (also `job_id`)."""

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message, job_id=job_id)
        self.job_id = job_id


@dataclass(frozen=True)
class Job:
    id: int
    policy: str
    subject: str
    trigger: str
    target: str
    params: str
    """JSON: what the target was given (dataset, version, manifest path, counts), never a secret."""
    status: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_until: float | None
    result: str | None
    error: str | None
    output_tail: str | None
    handle: str | None = None
    """What stops the running target: `pgid:<n>@<host>` (a shell command's process group), `prefect:<flow run>`."""


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.now = time.time
        try:
            con = sqlite3.connect(self.path, timeout=30)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                if "handle" not in {r[1] for r in con.execute("PRAGMA table_info(jobs)")}:
                    con.execute("ALTER TABLE jobs ADD COLUMN handle TEXT")  # a table made before handles
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise JobError(f"cannot create the jobs table {self.path}: {exc}") from exc

    def _tx(self) -> ContextManager[sqlite3.Connection]:
        return transaction(self.path, f"the jobs table {self.path}", JobError)

    def claim(self, policy: str, subject: str, trigger: str, target: str, params: str,
              lease_s: float = 3600.0) -> Job | None:
        """Claim the job (policy, subject) to run it now; None when it was claimed before (by anyone, ever)."""
        now = self.now()
        with self._tx() as con:
            cur = con.execute(
                "INSERT INTO jobs (policy, subject, trigger, target, params, status, attempts, created_at, started_at, "
                "lease_until) VALUES (?, ?, ?, ?, ?, 'running', 1, ?, ?, ?) ON CONFLICT (policy, subject) DO NOTHING",
                (policy, subject, trigger, target, params, now, now, now + lease_s))
            if cur.rowcount == 0:
                return None
            rid = int(cur.lastrowid or 0)
        return self.get(rid)

    def started(self, job_id: int, handle: str) -> None:
        """Record what stops the running target (see `Job.handle`)."""
        with self._tx() as con:
            con.execute("UPDATE jobs SET handle = ? WHERE id = ? AND status = 'running'", (handle, job_id))

    def finish(self, job_id: int, ok: bool, result: str = "", error: str = "", output: str = "") -> bool:
        """Record a running job's outcome; False (nothing written) when it is no longer running (cancelled)."""
        with self._tx() as con:
            cur = con.execute("UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, output_tail = ?, "
                              "lease_until = NULL WHERE id = ? AND status = 'running'",
                              ("succeeded" if ok else "failed", self.now(), result or None, error[:2000] or None,
                               output[-4000:] or None, job_id))
            return cur.rowcount == 1

    def recover(self) -> int:
        """Mark jobs whose runner vanished (lease expired while running) failed; returns how many."""
        with self._tx() as con:
            cur = con.execute("UPDATE jobs SET status = 'failed', error = 'interrupted: the process running it "
                              "stopped before recording a result; `flywheel jobs retry` starts it again', "
                              "finished_at = ? WHERE status = 'running' AND lease_until < ?",
                              (self.now(), self.now()))
            return cur.rowcount

    def retry(self, job_id: int, lease_s: float = 3600.0) -> Job:
        """Start a failed or cancelled job again (the caller then runs it); refused for other states."""
        job = self.get(job_id)
        if job.status not in ("failed", "cancelled"):
            raise JobError(f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried",
                           job_id=job_id)
        now = self.now()
        with self._tx() as con:
            cur = con.execute("UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                              "finished_at = NULL, lease_until = ?, error = NULL, handle = NULL WHERE id = ? "
                              "AND status IN "
                              "('failed', 'cancelled')", (now, now + lease_s, job_id))
            if cur.rowcount == 0:
                raise JobError(f"job {job_id} changed state meanwhile; look again (`flywheel jobs show {job_id}`)",
                               job_id=job_id)
        return self.get(job_id)

    def cancel(self, job_id: int) -> Job:
        """Mark a running or failed job cancelled (the caller stops its target by its handle)."""
        with self._tx() as con:
            cur = con.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_until = NULL "
                              "WHERE id = ? AND status NOT IN ('succeeded', 'cancelled')", (self.now(), job_id))
            cancelled = cur.rowcount == 1
        job = self.get(job_id)
        if not cancelled:
            raise JobError(f"job {job_id} is {job.status}: nothing to cancel", job_id=job_id)
        return job

    def get(self, job_id: int) -> Job:
        found = self.list(where="id = ?", args=(job_id,))
        if not found:
            raise JobError(f"no job {job_id} (`flywheel jobs list`)", job_id=job_id)
        return found[0]

    def list(self, status: str | None = None, limit: int = 100, where: str = "", args: tuple[object, ...] = ()
             ) -> list[Job]:
        clauses = [c for c in (where, "status = ?" if status else "") if c]
        params = (*args, *((status,) if status else ()))
        sql = ("SELECT id, policy, subject, trigger, target, params, status, attempts, created_at, started_at, "
               "finished_at, lease_until, result, error, output_tail, handle FROM jobs"
               + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id DESC LIMIT ?")
        with self._tx() as con:
            rows = con.execute(sql, (*params, limit)).fetchall()
        return [Job(*r) for r in rows]

"""Settings of triggers and jobs, typed and frozen, read from `FLYWHEEL_JOBS_*` variables at an edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import env_settings


@dataclass(frozen=True)
class JobSettings:
    policies_file: str = ""
    """FLYWHEEL_JOBS_POLICIES_FILE: the YAML file of trigger policies. Default: `$FLYWHEEL_HOME/policies.yaml`
    (no file: no policy, nothing is triggered)."""

    db: str = ""
    """FLYWHEEL_JOBS_DB: the jobs table (SQLite). Default: `$FLYWHEEL_HOME/jobs/jobs.sqlite`."""

    def policies_path(self, home: Path) -> Path:
        return Path(self.policies_file) if self.policies_file else Path(home) / "policies.yaml"

    def db_path(self, home: Path) -> Path:
        return Path(self.db) if self.db else Path(home) / "jobs" / "jobs.sqlite"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobSettings:
        return env_settings(cls, "FLYWHEEL_JOBS_", environ)

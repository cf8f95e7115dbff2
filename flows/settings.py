"""When `flywheel serve` runs each deployment: one cron variable per deployment (FLYWHEEL_SCHEDULE_QUALITY, ...)
and FLYWHEEL_SERVE_LIMIT.

Kept apart from `flywheel.flows.deployments` so reading the settings (every CLI command does, through
`flywheel.environment`) never imports Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from flywheel.config import env_settings
from flywheel.errors import ConfigError

UNSCHEDULED = ("off", "none")
"""What a schedule variable says for "registered but not scheduled" (empty means the default)."""


@dataclass(frozen=True)
class ServeSettings:
    """One cron per deployment (`off`: registered but not scheduled, still run on demand or by an automation;
    an unset or empty variable keeps the default), and how many flow runs `flywheel serve` executes at once."""

    ENV_NAMES: ClassVar[dict[str, str]] = {
        "schedule_lake_maintenance": "FLYWHEEL_SCHEDULE_LAKE_MAINTENANCE",
        "schedule_quality": "FLYWHEEL_SCHEDULE_QUALITY",
        "schedule_drift": "FLYWHEEL_SCHEDULE_DRIFT",
        "schedule_curate": "FLYWHEEL_SCHEDULE_CURATE",
        "schedule_dispatch": "FLYWHEEL_SCHEDULE_DISPATCH",
    }

    schedule_lake_maintenance: str = "30 2 * * *"
    """FLYWHEEL_SCHEDULE_LAKE_MAINTENANCE: cron (UTC) of `lake-maintenance` (compaction, retention, vacuum): nightly,
    when the lake is quiet."""

    schedule_quality: str = "5 * * * *"
    """FLYWHEEL_SCHEDULE_QUALITY: cron (UTC) of `quality` (the gates over what landed since the previous run)."""

    schedule_drift: str = "15 0 * * *"
    """FLYWHEEL_SCHEDULE_DRIFT: cron (UTC) of `drift` (the last complete FLYWHEEL_DRIFT_WINDOW); each alert it
    raises also starts `curate` through an automation."""

    schedule_curate: str = "45 0 * * *"
    """FLYWHEEL_SCHEDULE_CURATE: cron (UTC) of `curate` (dataset curation), besides the runs drift alerts start."""

    schedule_dispatch: str = "55 * * * *"
    """FLYWHEEL_SCHEDULE_DISPATCH: cron (UTC) of `dispatch` (the trigger policies over the latest version of each
    watched dataset: catches versions no command dispatched; drift alerts are handed over by `drift` itself)."""

    limit: int = 4
    """FLYWHEEL_SERVE_LIMIT: most flow runs `flywheel serve` executes at once; later ones wait their turn."""

    drift_triggers: bool = True
    """FLYWHEEL_SERVE_DRIFT_TRIGGERS: give `curate` its automation, one run per drift alert. Turn off when a
    `drift_alert` policy of `flywheel jobs` starts it instead (both would run it); the next registration removes it."""

    reports: str = ""
    """FLYWHEEL_SERVE_REPORTS: `HOST:PORT` on which `flywheel serve` also serves the drift reports directory
    (read-only files, no listing), e.g. `0.0.0.0:8765`; set FLYWHEEL_DRIFT_REPORT_BASE_URL to the URL people
    reach it at, so alerts link reports there. Empty: reports are not served."""

    def __post_init__(self) -> None:
        from croniter import croniter  # type: ignore[import-untyped]  # Prefect's own cron parser: a schedule it accepts is one Prefect runs

        for name, var in self.ENV_NAMES.items():
            cron = getattr(self, name).strip()
            cron = "" if cron.lower() in UNSCHEDULED else cron
            object.__setattr__(self, name, cron)
            if cron and not croniter.is_valid(cron):
                raise ConfigError(f"{var}={cron!r} is not a cron expression (five fields, e.g. '5 * * * *'; "
                                  "`off`: not scheduled)", variable=var)
        if self.reports:
            self.reports_address()  # fails early, at startup, on a malformed address
        if self.limit <= 0:
            raise ConfigError(f"FLYWHEEL_SERVE_LIMIT must be positive, got {self.limit!r}",
                              variable="FLYWHEEL_SERVE_LIMIT")

    def reports_address(self) -> tuple[str, int]:
        """(host, port) of FLYWHEEL_SERVE_REPORTS."""
        host, _, port = self.reports.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"FLYWHEEL_SERVE_REPORTS={self.reports!r} is not HOST:PORT (e.g. 0.0.0.0:8765)",
                              variable="FLYWHEEL_SERVE_REPORTS")
        return host.strip("[]"), int(port)

    def schedule(self, field: str) -> str:
        """The cron held by `field` (one of `ENV_NAMES`), '' when not scheduled (set to `off`)."""
        if field not in self.ENV_NAMES:
            raise ConfigError(f"no schedule setting {field!r}: add it to ServeSettings (flows/settings.py)")
        value: str = getattr(self, field)
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        return env_settings(cls, "FLYWHEEL_SERVE_", environ)

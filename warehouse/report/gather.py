"""What each stage has recorded, read into typed records: the sections of the overview, and the last runs that
`flywheel status` checks.

Guarantees: every function only reads; a stage that has not run yet gives an empty list (never an error), so the
overview of a fresh home is a page of empty sections saying what to run. Times are UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from flywheel.config import Settings
from flywheel.warehouse import tables
from flywheel.warehouse.datasets.registry import Registry, VersionInfo
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.storage import RUNS_SCHEMA as DRIFT_SCHEMA
from flywheel.warehouse.drift.storage import RUNS_TABLE as DRIFT_TABLE
from flywheel.warehouse.evaluation.compare import Comparison, compare
from flywheel.warehouse.evaluation.runs import runs as eval_run_table
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.jobs.settings import JobSettings
from flywheel.warehouse.jobs.store import Job, JobStore
from flywheel.warehouse.quality.gates import RUNS_SCHEMA as QUALITY_SCHEMA
from flywheel.warehouse.quality.gates import RUNS_TABLE as QUALITY_TABLE
from flywheel.warehouse.quality.gates import reports_dir
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.query import connect
from flywheel.warehouse.releases import SCHEMA as RELEASES_SCHEMA
from flywheel.warehouse.releases import TABLE as RELEASES_TABLE
from flywheel.warehouse.releases import Release


@dataclass(frozen=True)
class TrafficPoint:
    """Inferences of one app and model version landed in one time bucket, and the feedback they got."""

    app: str
    model_version: str
    """`model model_version` (the model alone when the app sends no version)."""
    bucket: datetime
    inferences: int
    with_feedback: int
    """Inferences with at least one feedback event (any kind)."""
    thumbs_up: int
    thumbs_down: int

    @property
    def feedback_rate(self) -> float:
        return self.with_feedback / self.inferences if self.inferences else 0.0

    @property
    def thumbs_down_rate(self) -> float | None:
        """Share of thumbs that were down; None without any thumbs in the bucket."""
        n = self.thumbs_up + self.thumbs_down
        return self.thumbs_down / n if n else None


@dataclass(frozen=True)
class Traffic:
    grain: str
    """`hour` or `day`: hours when the traffic spans at most two days, else days."""
    points: tuple[TrafficPoint, ...]


@dataclass(frozen=True)
class DriftWindow:
    """One segment's checks of one drift window (its latest run when the window was checked again)."""

    run_id: str
    run_at: datetime
    window_start: datetime
    window_end: datetime
    level: str
    segment: str
    checks: int
    drifted: int
    alerts: int
    worst_feature: str
    worst_ratio: float
    """max(score / threshold) over the window's checks: 1.0 is the threshold."""
    report_path: str | None
    """The Evidently report of the segment in that run, when one was written."""


@dataclass(frozen=True)
class DriftRun:
    run_id: str
    run_at: datetime
    checks: int
    alerts: int


@dataclass(frozen=True)
class QualitySuiteRun:
    """One suite's verdict in one quality run."""

    run_id: str
    run_at: datetime
    suite: str
    table: str
    rows: int
    window_start: datetime
    window_end: datetime
    expectations: int
    failed_critical: int
    failed_warning: int
    gate_success: bool
    report: Path | None
    """The run's HTML page under the quality reports directory, when it is there."""


@dataclass(frozen=True)
class EvalRun:
    run_id: str
    eval_set: str
    model: str
    target: str
    examples: int
    started_at: datetime
    finished: bool
    pass_rate: float | None
    similarity_mean: float | None
    error_rate: float | None
    refusal_rate: float | None
    latency_p95_ms: float | None
    version: str = ""
    """What was evaluated, in words: the model, with its model and prompt version when the target names them."""


@dataclass(frozen=True)
class Overview:
    """Everything the page shows, read at `generated_at`."""

    generated_at: datetime
    home: Path
    traffic: Traffic
    drift: tuple[DriftWindow, ...]
    quality: tuple[QualitySuiteRun, ...]
    datasets: tuple[VersionInfo, ...]
    evals: tuple[EvalRun, ...]
    comparisons: tuple[Comparison, ...]
    jobs: tuple[Job, ...]
    releases: tuple[Release, ...]
    drift_overview: Path | None
    """`flywheel drift report`'s page, when it has been written."""
    quality_latest: Path | None
    """The latest quality run's page (`latest.html`), when there is one."""


def traffic(settings: Settings) -> Traffic:
    con = connect(settings)
    try:
        span = con.execute("SELECT epoch(max(timestamp)) - epoch(min(timestamp)) FROM inferences").fetchone()
        grain = "hour" if span is None or span[0] is None or span[0] <= 2 * 86400 else "day"
        rows = con.execute(f"""
            SELECT app, trim(model || ' ' || coalesce(model_version, '')) AS version,
              date_trunc('{grain}', timestamp) AS bucket, count(*) AS n,
              count(*) FILTER (WHERE feedback_count > 0) AS with_fb,
              sum(thumbs_up)::BIGINT AS up, sum(thumbs_down)::BIGINT AS down
            FROM interactions GROUP BY ALL ORDER BY app, version, bucket""").fetchall()
    finally:
        con.close()
    return Traffic(grain, tuple(TrafficPoint(a, v, b.astimezone(timezone.utc), int(n), int(f), int(u or 0),
                                             int(d or 0)) for a, v, b, n, f, u, d in rows))


def drift_windows(settings: Settings) -> list[DriftWindow]:
    """Per segment and window, oldest window first."""
    t = tables.query(settings.lake_location, DRIFT_TABLE, """
        WITH latest AS (
          SELECT * FROM t QUALIFY run_at = max(run_at) OVER (PARTITION BY level, segment, window_start))
        SELECT any_value(run_id), max(run_at), window_start, any_value(window_end), level, segment, count(*),
          count(*) FILTER (WHERE drifted), count(*) FILTER (WHERE alert),
          arg_max(feature, score / nullif(threshold, 0)), coalesce(max(score / nullif(threshold, 0)), 0),
          max(report_path)
        FROM latest GROUP BY window_start, level, segment ORDER BY window_start, level, segment""",
                     empty=DRIFT_SCHEMA)
    cols = [c.to_pylist() for c in t.columns]
    return [DriftWindow(*r) for r in zip(*cols)] if t.num_rows else []


def drift_runs(settings: Settings) -> list[DriftRun]:
    """One per drift run, oldest first."""
    t = tables.query(settings.lake_location, DRIFT_TABLE, "SELECT run_id, max(run_at), count(*), count(*) FILTER "
                     "(WHERE alert) FROM t GROUP BY run_id ORDER BY max(run_at)", empty=DRIFT_SCHEMA)
    return [DriftRun(*r) for r in zip(*(c.to_pylist() for c in t.columns))] if t.num_rows else []


def quality_runs(settings: Settings, quality: QualitySettings) -> list[QualitySuiteRun]:
    """One per suite per quality run, oldest run first."""
    t = tables.query(settings.lake_location, QUALITY_TABLE, """
        SELECT run_id, max(run_at), suite, any_value(table_name), max(rows), min(window_start), max(window_end),
          count(*), count(*) FILTER (WHERE NOT success AND severity = 'critical'),
          count(*) FILTER (WHERE NOT success AND severity <> 'critical'), bool_and(gate_success)
        FROM t GROUP BY run_id, suite ORDER BY max(run_at), suite""", empty=QUALITY_SCHEMA)
    if not t.num_rows:
        return []
    where = reports_dir(settings, quality)
    out = []
    for run_id, at, suite, table, rows, start, end, n, crit, warn, ok in zip(*(c.to_pylist() for c in t.columns)):
        page = where / f"{run_id}.html"
        out.append(QualitySuiteRun(run_id, at, suite, table, rows, start, end, n, crit, warn, ok,
                                   page if page.is_file() else None))
    return out


def eval_runs(settings: Settings) -> list[EvalRun]:
    """One per evaluation run, oldest first; metrics are None until the run has finished."""
    out = []
    for r in eval_run_table(settings.lake_location).to_pylist():
        s = json.loads(r["summary"]) if r["summary"] else {}
        version = " ".join(filter(None, (r["model"], r.get("model_version"),
                                         f"prompt {r['prompt_version']}" if r.get("prompt_version") else "")))
        out.append(EvalRun(r["run_id"], r["eval_set"], r["model"], r["target"], int(r["examples"]),
                           r["started_at"], bool(r["summary"]), s.get("pass_rate"), s.get("similarity_mean"),
                           s.get("error_rate"), s.get("refusal_rate"), s.get("latency_p95_ms"), version))
    return out


def comparisons(settings: Settings, evaluation: EvalSettings, runs: list[EvalRun], last: int = 3) -> list[Comparison]:
    """Per eval set, its latest finished run against the latest finished run of each other model (or model or
    prompt version of it) on that set (up to `last`, most recent first): the comparison a release gate makes
    between a candidate and the champion."""
    out = []
    for eval_set in dict.fromkeys(r.eval_set for r in runs):
        latest: dict[str, EvalRun] = {}
        for r in runs:
            if r.finished and r.eval_set == eval_set:
                latest.pop(r.version or r.model, None)
                latest[r.version or r.model] = r  # re-inserted: the dict ends with the most recently run one
        ordered = list(latest.values())
        if len(ordered) < 2:
            continue
        candidate = ordered[-1]
        for base in reversed(ordered[:-1][-last:]):
            out.append(compare(settings.lake_location, base.run_id, candidate.run_id, evaluation))
    return out


def jobs(settings: Settings, job_settings: JobSettings, limit: int = 200) -> list[Job]:
    """The latest `limit` jobs, oldest first."""
    path = job_settings.db_path(settings.home)
    return list(reversed(JobStore(path).list(limit=limit))) if path.exists() else []


def releases(settings: Settings) -> list[Release]:
    """Every app's release history, by app then sequence."""
    t = tables.query(settings.lake_location, RELEASES_TABLE, "SELECT * FROM t ORDER BY app, sequence",
                     empty=RELEASES_SCHEMA)
    return [Release(**r) for r in t.to_pylist()]


def champions(settings: Settings) -> dict[str, Release]:
    """Each app's current champion (its latest release)."""
    return {r.app: r for r in releases(settings)}


def gather(settings: Settings, quality: QualitySettings, drift: DriftSettings, datasets: DatasetSettings,
           evaluation: EvalSettings, job_settings: JobSettings) -> Overview:
    evals = eval_runs(settings)
    overview = drift.reports_path(settings.home) / "index.html"
    latest = reports_dir(settings, quality) / "latest.html"
    return Overview(
        generated_at=datetime.now(timezone.utc), home=Path(settings.home), traffic=traffic(settings),
        drift=tuple(drift_windows(settings)), quality=tuple(quality_runs(settings, quality)),
        datasets=tuple(Registry(settings, datasets).versions()), evals=tuple(evals),
        comparisons=tuple(comparisons(settings, evaluation, evals)), jobs=tuple(jobs(settings, job_settings)),
        releases=tuple(releases(settings)), drift_overview=overview if overview.is_file() else None,
        quality_latest=latest if latest.is_file() else None)

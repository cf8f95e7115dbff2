"""`flywheel quality ...`: run the quality gates over a window, list suspect windows, show the suites."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from flywheel.commands.options import pass_env
from flywheel.environment import Environment
from flywheel.durations import is_duration, parse_duration
from flywheel.errors import ConfigError
from flywheel.config import describe
from flywheel.warehouse.quality.settings import QualitySettings




def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise), `now`, or a duration ago in the project's one grammar
    (`flywheel.durations`: `90m`, `24h`, `7d`, `2w`)."""
    if value is None:
        return None
    now = datetime.now(timezone.utc)
    if value == "now":
        return now
    if is_duration(value):
        return now - parse_duration(value)
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected an ISO 8601 time (2026-11-28T09:00:00Z), `now`, "
                          "or a duration ago such as 90m, 24h, 7d, 2w") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def _settings_help() -> str:
    return "\n".join(f"  {var:44s} {doc}" for var, _default, doc in describe(QualitySettings, "FLYWHEEL_QUALITY_"))


@click.group()
def quality() -> None:
    """Data quality gates (Great Expectations) over what landed in the lake.

    Suites live in schemas/expectations/*.yaml (plus FLYWHEEL_QUALITY_SUITES_DIR). Results go to the
    `quality_runs` lake table (`flywheel sql "SELECT * FROM quality_runs"`).

    \b
    Example:
      flywheel quality run --since 24h
      flywheel quality suspects
    """


@quality.command("run", epilog="\b\nSettings:\n" + _settings_help())
@click.option("--since", help="Start of the window (landing time): ISO 8601, or a duration ago like 24h. "
                              "Default: where the table's previous run ended (or its first row).")
@click.option("--until", help="End of the window (exclusive): ISO 8601 or a duration ago. Default (or `now`): just "
                              "past the latest row landed when the run reads the table, where the next run starts.")
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable). Default: every suite's table.")
@click.option("--all", "show_all", is_flag=True, help="List every expectation, not only the failed ones.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@click.option("--gx-logs", is_flag=True, help="Let Great Expectations log and show its progress bars (stderr).")
@pass_env
def run_cmd(env: Environment, since: str | None, until: str | None, tables: tuple[str, ...], show_all: bool,
            fmt: str, no_report: bool, gx_logs: bool) -> None:
    """Validate the events that landed in a window; exit 1 when a critical expectation fails.

    A failed gate marks the window suspect (`flywheel curate` leaves its rows out) and is stored, with every
    result, in the `quality_runs` table. The HTML report is written under FLYWHEEL_QUALITY_REPORTS_DIR
    ($FLYWHEEL_HOME/quality by default; latest.html is the newest).

    \b
    Example:
      flywheel quality run                       # from where the last run ended to what has landed
      flywheel quality run --since 2026-11-27T00:00:00Z --until 2026-11-28T00:00:00Z --table feedback
      flywheel quality run --since 1h --all --format json
    """
    from flywheel.warehouse.quality import gates as q
    from flywheel.warehouse.quality.report import summary

    settings = env.core
    q.set_gx_verbose(gx_logs)
    run = q.run_quality(settings, env.quality, since=parse_time(since, "--since"),
                        until=None if until == "now" else parse_time(until, "--until"),
                        tables=list(tables) or None, report=not no_report)
    if fmt == "json":
        click.echo(json.dumps(_as_json(run, show_all), default=str, ensure_ascii=False, indent=2))
    else:
        click.echo(summary(run, verbose=show_all))
    if not run.success:
        raise q.QualityGateFailed(run)


@quality.command("suspects")
@click.option("--table", default=None, help="Only this table.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_env
def suspects_cmd(env: Environment, table: str | None, fmt: str) -> None:
    """List the windows whose latest quality run failed (`flywheel curate` leaves their rows out).

    \b
    Example:
      flywheel quality suspects --table feedback --format json
    """
    from flywheel.warehouse.quality.gates import suspect_windows

    settings = env.core
    windows = suspect_windows(settings, table)
    if fmt == "json":
        for w in windows:
            click.echo(json.dumps({"table": w.table, "window_start": w.window_start.isoformat(),
                                   "window_end": w.window_end.isoformat(), "run_id": w.run_id,
                                   "failed": list(w.failed)}))
        return
    if not windows:
        click.echo("no suspect windows")
    for w in windows:
        click.echo(f"{w.table:12s} {w.window_start.isoformat()} .. {w.window_end.isoformat()}  run {w.run_id}  "
                   f"failed: {', '.join(w.failed)}")


@quality.command("suites")
@pass_env
def suites_cmd(env: Environment) -> None:
    """Print the expectation suites in force (built-in files merged with FLYWHEEL_QUALITY_SUITES_DIR).

    \b
    Example:
      FLYWHEEL_QUALITY_SUITES_DIR=./team-suites flywheel quality suites
    """
    from flywheel.warehouse.quality.suites import load_suites

    qs = env.quality
    for table, suite in load_suites(qs.params(), qs.suites_dir or None).items():
        click.echo(f"{table} ({', '.join(suite.files)})")
        for name, expr in suite.derive.items():
            click.echo(f"  derive {name} = {' '.join(expr.split())}")
        for e in suite.expectations:
            args = {k: v for k, v in e.kwargs.items() if k != "column"}
            click.echo(f"  {e.severity:8s} {e.type}({e.column}) {json.dumps(args, default=str) if args else ''}")


def _as_json(run: object, show_all: bool) -> dict[str, object]:
    from flywheel.warehouse.quality.gates import QualityRun
    from flywheel.warehouse.quality.report import observed

    assert isinstance(run, QualityRun)
    return {"run_id": run.run_id, "success": run.success, "report": str(run.report) if run.report else None,
            "suites": [{"table": s.table, "window_start": s.window_start.isoformat(),
                        "window_end": s.window_end.isoformat(), "rows": s.rows, "gate_success": s.gate_success,
                        "results": [{"expectation": r.spec.type, "column": r.spec.column, "severity": r.spec.severity,
                                     "success": r.success, "observed": observed(r),
                                     "unexpected_count": r.unexpected_count, "sample": r.sample}
                                    for r in s.results if show_all or not r.success]}
                       for s in run.suites]}


COMMANDS = [quality]

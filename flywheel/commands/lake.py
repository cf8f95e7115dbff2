"""`flywheel lake ...`: stats, compaction, retention and vacuum of the lake's Delta tables."""

from __future__ import annotations

import json

import click

from flywheel.commands.options import pass_env
from flywheel.config import Settings
from flywheel.environment import Environment
from flywheel.config import describe
from flywheel.warehouse.maintenance import MaintenanceSettings



def _tables(settings: Settings, names: tuple[str, ...]) -> list[str]:
    from flywheel.warehouse.maintenance import lake_tables

    return list(names) or lake_tables(settings)


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MB"


_SETTINGS_HELP = "\n".join(f"  {var:38s} {doc}"
                           for var, _default, doc in describe(MaintenanceSettings, "FLYWHEEL_LAKE_"))


@click.group(epilog="\b\nSettings:\n" + _SETTINGS_HELP)
def lake() -> None:
    """Maintain the lake: stats, compaction, retention and vacuum. Safe while ingest runs and queries read.

    \b
    Example:
      flywheel lake stats
      flywheel lake compact && flywheel lake vacuum
    """


@lake.command("stats")
@click.argument("tables", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_env
def stats_cmd(env: Environment, tables: tuple[str, ...], fmt: str) -> None:
    """Show files, rows, bytes, partitions and the version of each table (default: every lake table).

    \b
    Example:
      flywheel lake stats inferences feedback --format json
    """
    from flywheel.warehouse.maintenance import stats

    s = env.core
    ms = env.maintenance
    rows = [stats(s, t, ms) for t in _tables(s, tables)]
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps({**r.__dict__, "avg_file_bytes": r.avg_file_bytes}))
        return
    click.echo(f"{'table':16s} {'files':>7s} {'small':>7s} {'rows':>12s} {'bytes':>12s} {'avg file':>11s} "
               f"{'partitions':>10s} {'version':>8s}")
    for r in rows:
        click.echo(f"{r.table:16s} {r.files:7,d} {r.small_files:7,d} {r.rows:12,d} {_mb(r.bytes):>12s} "
                   f"{_mb(r.avg_file_bytes):>11s} {r.partitions:10,d} {r.version:8d}")


@lake.command("compact")
@click.argument("tables", nargs=-1)
@pass_env
def compact_cmd(env: Environment, tables: tuple[str, ...]) -> None:
    """Merge small files into large ones (FLYWHEEL_LAKE_TARGET_FILE_MB, FLYWHEEL_LAKE_ROW_GROUP_ROWS).

    Does not block the ingest worker; old files stay readable until `flywheel lake vacuum`.

    \b
    Example:
      flywheel lake compact inferences
    """
    from flywheel.warehouse.maintenance import compact

    s = env.core
    ms = env.maintenance
    for t in _tables(s, tables):
        r = compact(s, t, ms)
        click.echo(f"{t}: {r.files_removed} files rewritten into {r.files_added} (version {r.version})")


@lake.command("vacuum")
@click.argument("tables", nargs=-1)
@click.option("--no-retention", is_flag=True, help="Do not delete rows older than FLYWHEEL_LAKE_RETENTION first.")
@click.option("--dry-run", is_flag=True, help="Say which files would be deleted; change nothing.")
@pass_env
def vacuum_cmd(env: Environment, tables: tuple[str, ...], no_retention: bool, dry_run: bool) -> None:
    """Apply retention by age (FLYWHEEL_LAKE_RETENTION), then delete files no recent version uses.

    Files removed (by compaction or retention) less than FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS ago are kept, so
    running queries keep working.

    \b
    Example:
      FLYWHEEL_LAKE_RETENTION="quarantine=30,feedback=400" flywheel lake vacuum
    """
    from flywheel.warehouse.maintenance import apply_retention, vacuum

    s = env.core
    ms = env.maintenance
    days = ms.retention_days()
    for t in _tables(s, tables):
        if t in days and not no_retention and not dry_run:
            r = apply_retention(s, t, days[t], ms)
            click.echo(f"{t}: deleted {r.rows_deleted:,} rows dated before {r.cutoff.isoformat()} "
                       f"(retention {days[t]:g} days)")
        v = vacuum(s, t, ms, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{t}: {verb} {v.files_deleted} unreferenced files (kept those removed < "
                   f"{v.retention_hours:g} h ago)")


COMMANDS = [lake]

"""`flywheel quality ...` and `flywheel lake ...` as a user runs them: real processes, exit codes, quiet output."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import pyarrow as pa
import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.commands import lake as lake_cmds
from flywheel.commands import quality as quality_cmds
from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.warehouse.lake import Lake

FLYWHEEL = Path(sys.executable).with_name("flywheel")
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def _land(settings: Settings, landed: datetime, offset: int, bad_latency: bool = False) -> None:
    events = [{"inference_id": f"i{offset}-{n}", "timestamp": (landed - timedelta(minutes=1)).isoformat(),
               "app": "a", "model": "m", "input": "q", "output": f"answer {n}", "latency_ms": 100.0,
               "input_tokens": 1, "output_tokens": 2, "cost_usd": 0.001} for n in range(20)]
    inf = to_rows(events, ingested_at=landed, start_offset=offset)["inferences"]
    if bad_latency:
        i = inf.column_names.index("latency_ms")
        inf = inf.set_column(i, inf.schema.field(i), pa.array([-3.0] + [100.0] * 19, pa.float64()))
    lake = Lake(settings.lake)
    lake.ensure()
    for k in range(0, 20, 5):  # several small files
        lake.commit("inferences", inf.slice(k, 5), {}, keep_ingested_at=True)


def _flywheel(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYWHEEL_HOME": str(settings.home), "DO_NOT_TRACK": "1"}
    return subprocess.run([str(FLYWHEEL), *args], capture_output=True, text=True, env=env, timeout=120)


def test_quality_run_exits_nonzero_on_a_failed_gate_and_keeps_gx_quiet(settings: Settings) -> None:
    _land(settings, T0, 0)
    _land(settings, T0 + timedelta(hours=1), 100, bad_latency=True)
    window = ["--since", (T0 - timedelta(minutes=30)).isoformat(), "--until", (T0 + timedelta(minutes=30)).isoformat()]
    ok = _flywheel(settings, "quality", "run", *window, "--table", "inferences")
    assert ok.returncode == 0, ok.stderr
    assert "inferences: 20 rows landed" in ok.stdout and "passed" in ok.stdout
    assert ok.stderr == ""  # no GX progress bars, logs or warnings

    bad = _flywheel(settings, "quality", "run", "--until", (T0 + timedelta(hours=2)).isoformat())
    assert bad.returncode == 1
    assert "FAIL critical expect_column_values_to_be_between(latency_ms): 1 of 20 unexpected" in bad.stdout
    assert bad.stderr.startswith("Error: quality gate failed for inferences (column_values_to_be_between(latency_ms))")
    assert "Calculating Metrics" not in bad.stderr and "INFO" not in bad.stderr

    suspects = _flywheel(settings, "quality", "suspects")
    assert suspects.returncode == 0
    lines = suspects.stdout.splitlines()
    # The second run started where the first ended (T0+30m): one suspect inferences window.
    assert len(lines) == 1 and lines[0].startswith("inferences   2026-11-20T12:30:00+00:00 .. 2026-11-20T14:00:00")
    runs = _flywheel(settings, "sql", "SELECT count(DISTINCT run_id) FROM quality_runs", "--format", "csv")
    assert runs.stdout.splitlines()[-1] == "2"


def test_lake_commands_report_stats_compact_and_vacuum(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _land(settings, T0, 0)
    monkeypatch.setenv("FLYWHEEL_HOME", str(settings.home))
    monkeypatch.setenv("FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS", "0")
    runner = CliRunner()
    stats = runner.invoke(main, ["lake", "stats", "inferences", "--format", "json"])
    assert stats.exit_code == 0 and '"files": 4' in stats.output and '"rows": 20' in stats.output
    compacted = runner.invoke(main, ["lake", "compact", "inferences"])
    assert compacted.exit_code == 0 and "inferences: 4 files rewritten into 1" in compacted.output
    vacuumed = runner.invoke(main, ["lake", "vacuum", "inferences"])
    assert vacuumed.exit_code == 0 and "inferences: deleted 4 unreferenced files" in vacuumed.output
    table = runner.invoke(main, ["lake", "stats"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split()[:3] == ["table", "files", "small"]
    missing = runner.invoke(main, ["lake", "stats", "nope"])
    assert missing.exit_code == 1 and "Error: no lake table 'nope'" in missing.output


def test_bad_time_options_are_clear_errors(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(settings.home))
    res = CliRunner().invoke(main, ["quality", "run", "--since", "yesterday"])
    assert res.exit_code == 1 and "Error: --since 'yesterday': expected an ISO 8601 time" in res.output
    assert quality_cmds.parse_time("2026-11-20T12:00:00", "--since") == T0  # naive means UTC


@pytest.mark.parametrize("group", [quality_cmds.quality, lake_cmds.lake])
def test_every_command_has_help_with_an_example(group: click.Group) -> None:
    for cmd in [group, *group.commands.values()]:
        assert cmd.help and "Example:" in cmd.help, cmd.name


def test_quality_windows_take_the_one_duration_grammar() -> None:
    """`1w` and `90min` work for the quality gates as for drift windows (flywheel.durations)."""
    from datetime import datetime, timedelta, timezone

    from flywheel.commands.quality import parse_time

    now = datetime.now(timezone.utc)
    for text, ago in (("1w", timedelta(weeks=1)), ("90min", timedelta(minutes=90)), ("24h", timedelta(hours=24))):
        got = parse_time(text, "--since")
        assert got is not None and abs((now - got) - ago) < timedelta(seconds=5)

"""The Prefect flows run for real (ephemeral Prefect, offline, in a private PREFECT_HOME): a failed gate fails the
`quality` flow run; `lake-maintenance` compacts and vacuums every table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.quality.gates import QualityGateFailed, suspect_windows

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def _land(settings: Settings, landed: datetime, offset: int, bad: bool) -> None:
    events = [{"inference_id": f"f{offset}-{n}", "timestamp": (landed - timedelta(minutes=1)).isoformat(),
               "app": "a", "model": "m", "input": "q", "output": f"answer {n}", "latency_ms": 10.0,
               "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.0} for n in range(10)]
    inf = to_rows(events, ingested_at=landed, start_offset=offset)["inferences"]
    if bad:
        i = inf.column_names.index("latency_ms")
        inf = inf.set_column(i, inf.schema.field(i), pa.array([-1.0] * 10, pa.float64()))
    lake = Lake(settings.lake)
    lake.ensure()
    for k in range(0, 10, 2):
        lake.commit("inferences", inf.slice(k, 2), {}, keep_ingested_at=True)


@pytest.mark.slow
def test_quality_flow_passes_then_fails_on_a_bad_window_and_maintenance_compacts(
        prefect_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.flows.maintenance import maintenance_flow
    from flywheel.flows.quality import quality_flow

    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv("FLYWHEEL_HOME", str(settings.home))
    monkeypatch.setenv("FLYWHEEL_LAKE_VACUUM_RETENTION_HOURS", "0")
    _land(settings, T0, 0, bad=False)
    ok = quality_flow(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1), tables=["inferences"])
    assert ok["success"] and ok["rows"] == {"inferences": 10} and Path(ok["report"]).is_file()

    _land(settings, T0 + timedelta(hours=2), 100, bad=True)
    state = quality_flow(until=T0 + timedelta(hours=3), tables=["inferences"], return_state=True)
    assert state.is_failed()
    with pytest.raises(QualityGateFailed, match=r"inferences \(column_values_to_be_between\(latency_ms\)\)"):
        state.result()
    assert [(w.table, w.window_start) for w in suspect_windows(settings)] == [("inferences", T0 + timedelta(hours=1))]

    results = {r["table"]: r for r in maintenance_flow()}
    assert set(results) == {"inferences", "feedback", "quarantine", "quality_runs"}
    inf = results["inferences"]
    assert (inf["files_before"], inf["files_after"], inf["rows"], inf["files_vacuumed"]) == (10, 1, 20, 10)

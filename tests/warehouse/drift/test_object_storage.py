"""Quality and drift with the lake on an S3-compatible store (moto's server on 127.0.0.1): both read the landed
tables through the same views, store their runs as lake tables there, and drift's report goes beside the lake."""

from __future__ import annotations

from datetime import timedelta

import pyarrow.fs as pafs
import pytest

from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.windows import Window
from flywheel.warehouse.quality.gates import run_quality
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.query import connect

H = timedelta(hours=1)


@pytest.mark.reliability
def test_quality_and_drift_run_on_a_lake_on_object_storage(s3_settings: Settings) -> None:
    S.land(s3_settings, S.model_change(windows_each=2))
    quality = run_quality(s3_settings, QualitySettings())
    assert quality.suites and sum(s.rows for s in quality.suites) > 0
    run = run_drift(s3_settings, DriftSettings(reports="drifted", max_reports=1),
                    current=Window(S.T0 + 2 * H, S.T0 + 3 * H), reference=Window(S.T0, S.T0 + 2 * H))
    assert run.drifted and len(run.reports) == 1
    uri = next(iter(run.reports.values()))
    where = s3_settings.lake_location
    assert uri.startswith(where.join("drift_reports", run.run_id) + "/")
    fs, _ = where.filesystem()
    assert fs.get_file_info(uri.removeprefix("s3://")).type == pafs.FileType.File
    con = connect(s3_settings)  # the runs are lake tables on the store, with views like any other
    assert con.execute("SELECT count(*) FROM drift_runs WHERE drifted").fetchone()[0] == len(run.drifted)
    assert con.execute("SELECT count(DISTINCT run_id) FROM quality_runs").fetchone() == (1,)

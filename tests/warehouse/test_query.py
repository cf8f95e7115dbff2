"""Views over the lake: no duplicates, interactions aggregate feedback, `flywheel sql` formats."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.schemas.arrow import SCHEMAS
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect, first_landed, query

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


def _rows(table: str, rows: list[dict[str, Any]], topic: str, start: int = 0) -> pa.Table:
    schema = SCHEMAS[table]
    full = []
    for i, r in enumerate(rows):
        base = {n: None for n in schema.names}
        base.update(scale_min=1.0, scale_max=5.0, source="user", schema_version=1) if table == "feedback" else \
            base.update(schema_version=1)
        base.update(r)
        base.update(event_date=r["timestamp"].date(), _topic=topic, _partition=0, _offset=start + i,
                    _ingested_at=NOW)
        full.append(base)
    return pa.Table.from_pylist(full, schema=schema)


def _inference(iid: str, **kw: Any) -> dict[str, Any]:
    return {"inference_id": iid, "timestamp": NOW, "app": "a", "model": "m", "input": "q", "output": "o", **kw}


def _feedback(fid: str, iid: str, kind: str, **kw: Any) -> dict[str, Any]:
    return {"feedback_id": fid, "inference_id": iid, "timestamp": NOW, "kind": kind, **kw}


def _land(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    lake.commit("inferences", _rows("inferences", [_inference("i1"), _inference("i2"), _inference("i1")], "inf"),
                {})
    lake.commit("feedback", _rows("feedback", [
        _feedback("f1", "i1", "thumbs", value=1.0), _feedback("f2", "i1", "thumbs", value=-1.0),
        _feedback("f3", "i1", "thumbs", value=1.0), _feedback("f4", "i1", "rating", value=4.0),
        _feedback("f5", "i1", "rating", value=9.0, scale_min=0.0, scale_max=10.0),
        _feedback("f6", "i1", "correction", correction="old", timestamp=NOW.replace(hour=10)),
        _feedback("f7", "i1", "correction", correction="new"),
        _feedback("f8", "i1", "flag", reason="unsafe"), _feedback("f8", "i1", "flag", reason="unsafe"),
        _feedback("f9", "i2", "implicit", signal="copy")], "fb"), {})


def test_views_never_show_a_duplicate(settings: Settings) -> None:
    _land(settings)
    con = connect(settings)
    assert con.execute("SELECT count(*) FROM lake_inferences").fetchone() == (3,)
    assert con.execute("SELECT count(*), count(DISTINCT inference_id) FROM inferences").fetchone() == (2, 2)
    assert con.execute("SELECT count(*), count(DISTINCT feedback_id) FROM feedback").fetchone() == (9, 9)


def test_first_landed_reads_the_rows_the_view_shows(settings: Settings) -> None:
    # Re-sent copies that differ (another payload, landed later or at a lower offset): the fast read keeps the copy
    # the view keeps, for every column, and the ids landed once pass unchanged.
    _land(settings)
    lake = Lake(settings.lake)
    later = NOW.replace(hour=13)
    resent = _rows("inferences", [_inference("i2", app="b", output="late"), _inference("i3")], "inf", start=10)
    lake.commit("inferences", resent.set_column(resent.schema.get_field_index("_ingested_at"), "_ingested_at",
                                                pa.array([later, later], pa.timestamp("us", tz="UTC"))), {})
    lake.commit("feedback", _rows("feedback", [_feedback("f9", "i2", "implicit", signal="paste")], "fb2"), {})
    con = connect(settings)
    for table, cols in (("inferences", "inference_id, app, output, _topic, _offset"),
                        ("feedback", "feedback_id, inference_id, signal, reason, _topic")):
        fast = con.execute(f"SELECT {cols} FROM {first_landed(table, cols)} ORDER BY ALL").fetchall()
        assert fast == con.execute(f"SELECT {cols} FROM {table} ORDER BY ALL").fetchall()
        assert len(fast) == len({r[0] for r in fast})
    assert con.execute("SELECT app, output FROM inferences WHERE inference_id = 'i2'").fetchall() == [("a", "o")]
    assert con.execute("SELECT signal FROM feedback WHERE feedback_id = 'f9'").fetchall() == [("copy",)]


def test_interactions_aggregate_feedback(settings: Settings) -> None:
    _land(settings)
    row = query("SELECT thumbs_up, thumbs_down, ratings, rating_mean, latest_correction, corrections, flags, "
                "flag_reasons, feedback_count FROM interactions WHERE inference_id = 'i1'", settings).to_pylist()[0]
    assert row == {"thumbs_up": 2, "thumbs_down": 1, "ratings": 2, "rating_mean": (0.75 + 0.9) / 2,
                   "latest_correction": "new", "corrections": 2, "flags": 1, "flag_reasons": ["unsafe"],
                   "feedback_count": 8}
    row = query("SELECT implicit_signals, thumbs_up, rating_mean FROM interactions WHERE inference_id = 'i2'",
                settings).to_pylist()[0]
    assert row == {"implicit_signals": ["copy"], "thumbs_up": 0, "rating_mean": None}


def test_views_exist_on_an_empty_lake(settings: Settings) -> None:
    con = connect(settings)
    for view in ("inferences", "feedback", "interactions", "quarantine"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)


def test_sql_command_formats(settings: Settings) -> None:
    _land(settings)
    env = {"FLYWHEEL_HOME": str(settings.home)}
    runner = CliRunner()
    res = runner.invoke(main, ["sql", "SELECT inference_id, thumbs_up FROM interactions ORDER BY 1",
                               "--format", "json"], env=env)
    assert res.exit_code == 0, res.output
    assert [json.loads(line) for line in res.output.splitlines()] == [
        {"inference_id": "i1", "thumbs_up": 2}, {"inference_id": "i2", "thumbs_up": 0}]
    res = runner.invoke(main, ["sql", "SELECT inference_id FROM inferences ORDER BY 1", "--format", "csv"], env=env)
    assert res.output.splitlines() == ["inference_id", "i1", "i2"]
    res = runner.invoke(main, ["sql", "SELECT nope FROM inferences"], env=env)
    assert res.exit_code == 1 and res.output.startswith("Error: query failed:")

"""`flywheel status` on a real broker and lake: healthy with no lag once the worker landed everything; the lag
shows events not landed yet, per partition; each dataset's latest version after a real curation, and a warning
(exit code still 0) when none was curated or the newest is older than the bound; unhealthy (exit 1) without a
broker."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.broker import free_port
from flywheel.infra.testing.land import land
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.datasets import DatasetSettings, Registry, curate, load_recipe
from flywheel.warehouse.lake import Lake

ROOT = Path(__file__).resolve().parents[2]


def _env(s: Settings) -> dict[str, str]:
    return {"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_KAFKA_BOOTSTRAP": "",
            "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_INGEST_GROUP": s.ingest_group}


def _status(s: Settings, **more: str) -> tuple[int, dict[str, object]]:
    res = CliRunner().invoke(main, ["status", "--format", "json"], env={**_env(s), **more})
    return res.exit_code, json.loads(res.output)


def _check(out: dict[str, object], name: str) -> dict[str, object]:
    return next(c for c in out["checks"] if c["name"] == name)  # type: ignore[attr-defined,no-any-return]


def test_status_reports_lag_then_health(kafka_settings: Settings) -> None:
    s = kafka_settings
    ensure_topics(s)  # as `flywheel broker start` does
    with FlywheelClient(s) as fw:
        for i in range(20):
            fw.log_inference(inference_id=f"st-{i}", app="a", model="m", input="q", output="o")
    code, out = _status(s)
    checks = {c["name"]: c for c in out["checks"]}  # type: ignore[union-attr]
    assert "lag" in checks["broker"]["details"], checks["broker"]
    assert sum(checks["broker"]["details"]["lag"].values()) == 20
    IngestWorker(s).run(until_idle=1)
    code, out = _status(s)
    checks = {c["name"]: c for c in out["checks"]}  # type: ignore[union-attr]
    assert code == 0 and out["healthy"] is True
    assert sum(checks["broker"]["details"]["lag"].values()) == 0
    assert "inferences: 20 rows" in checks["lake"]["summary"]


def test_status_text_names_the_partitions_behind(kafka_settings: Settings) -> None:
    s = kafka_settings.replace(partitions=6)
    ensure_topics(s)
    with FlywheelClient(s) as fw:  # keyed by inference_id: spread over the six partitions
        for i in range(60):
            fw.log_inference(inference_id=f"pl-{i}", app="a", model="m", input="q", output="o")
    _code, out = _status(s)
    lag = next(c for c in out["checks"] if c["name"] == "broker")["details"]["lag"]  # type: ignore[union-attr]
    behind = sorted(((n, tp) for tp, n in lag.items() if n > 0), key=lambda x: (-x[0], x[1]))
    assert len(behind) > 3 and sum(lag.values()) == 60, lag
    res = CliRunner().invoke(main, ["status"], env=_env(s))
    line = next(x for x in res.output.splitlines() if " broker " in x)
    top = ", ".join(f"{tp} {n}" for n, tp in behind[:3])
    assert line.endswith(f"60 events not landed yet across 12 partitions ({top}, +{len(behind) - 3} more)"), line
    IngestWorker(s).run(until_idle=1)
    res = CliRunner().invoke(main, ["status"], env=_env(s))
    line = next(x for x in res.output.splitlines() if " broker " in x)
    assert line.endswith("0 events not landed yet across 12 partitions"), line  # nothing behind: no list


def test_status_shows_each_datasets_latest_version_and_warns_when_stale(kafka_settings: Settings) -> None:
    s = kafka_settings
    ensure_topics(s)
    code, out = _status(s)
    names = [c["name"] for c in out["checks"]]  # type: ignore[attr-defined]
    assert names.index("curation") == names.index("drift") + 1, names
    none = _check(out, "curation")
    assert code == 0 and none["warning"] is True and "no dataset curated yet" in str(none["summary"])
    assert "`flywheel curate --all`" in str(none["summary"])

    land(Lake(s.lake), [json.loads(line) for line in (ROOT / "infra/demo/events.jsonl").read_text().splitlines()])
    ds = DatasetSettings()
    for name in ("regression-eval", "support-sft"):
        curate(s, ds, load_recipe(ROOT / "infra/recipes" / f"{name}.yaml"))
    made = {v.name: v for v in Registry(s, ds).versions()}
    code, out = _status(s)
    fresh = _check(out, "curation")
    assert code == 0 and out["healthy"] is True and fresh["warning"] is False, fresh
    assert fresh["details"]["datasets"] == {  # type: ignore[index]
        n: {"version": 1, "created_at": v.created_at.isoformat()} for n, v in made.items()}
    assert "2 datasets: regression-eval@1 " in str(fresh["summary"]) and "support-sft@1 " in str(fresh["summary"])
    res = CliRunner().invoke(main, ["status"], env=_env(s))
    assert any(x.startswith("ok   curation    2 datasets: regression-eval@1") for x in res.output.splitlines())

    # older than the bound: a warning naming the command, and still exit 0
    code, out = _status(s, FLYWHEEL_DATASETS_STALE_AFTER="0s")
    stale = _check(out, "curation")
    assert code == 0 and stale["warning"] is True and stale["healthy"] is True
    assert stale["details"]["stale"] == ["regression-eval", "support-sft"]  # type: ignore[index]
    assert "no new version of regression-eval, support-sft in over 0s (`flywheel curate --all`" in str(
        stale["summary"])
    res = CliRunner().invoke(main, ["status"], env={**_env(s), "FLYWHEEL_DATASETS_STALE_AFTER": "0s"})
    assert res.exit_code == 0 and any(x.startswith("WARN curation ") for x in res.output.splitlines()), res.output
    bad = CliRunner().invoke(main, ["status"], env={**_env(s), "FLYWHEEL_DATASETS_STALE_AFTER": "soon"})
    assert bad.exit_code == 1 and "FLYWHEEL_DATASETS_STALE_AFTER" in bad.output, bad.output


def test_status_is_unhealthy_without_a_broker(settings: Settings) -> None:
    s = settings.replace(broker_port=free_port())
    code, out = _status(s)
    assert code == 1 and out["healthy"] is False
    assert "no broker answers" in next(c["summary"] for c in out["checks"] if c["name"] == "broker")  # type: ignore

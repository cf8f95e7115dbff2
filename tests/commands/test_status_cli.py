"""`flywheel status` on a real broker and lake: healthy with no lag once the worker landed everything; the lag
shows events not landed yet; unhealthy (exit 1) without a broker."""

from __future__ import annotations

import json

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.broker import free_port
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics


def _env(s: Settings) -> dict[str, str]:
    return {"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_KAFKA_BOOTSTRAP": "",
            "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_INGEST_GROUP": s.ingest_group}


def _status(s: Settings) -> tuple[int, dict[str, object]]:
    res = CliRunner().invoke(main, ["status", "--format", "json"], env=_env(s))
    return res.exit_code, json.loads(res.output)


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


def test_status_is_unhealthy_without_a_broker(settings: Settings) -> None:
    s = settings.replace(broker_port=free_port())
    code, out = _status(s)
    assert code == 1 and out["healthy"] is False
    assert "no broker answers" in next(c["summary"] for c in out["checks"] if c["name"] == "broker")  # type: ignore

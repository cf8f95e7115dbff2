"""Release changes go to the releases topic of the real embedded broker, and an application reads its champion
from there, following a rollback within the cache's time; end to end, from the app's traffic landed in the lake and
real evaluation runs through `flywheel release promote|rollback` to what the SDK and a plain consumer read."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.releases import ChampionFeed, champion_of, publish, topic
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from flywheel.warehouse.releases import Release, history
from tests.streams.conftest import read_topic


def _release(seq: int, model: str, action: str = "promote") -> Release:
    return Release("support-bot", action, model, f"v{seq}", None, f"run-{seq}", datetime.now(timezone.utc), False,
                   "", "", seq)


def test_promote_then_rollback_is_what_the_feed_reads(kafka_settings: Settings) -> None:
    s = kafka_settings
    feed = ChampionFeed(s, ttl_s=0)
    assert feed.champion("support-bot") is None  # no topic yet: no champion, no error
    publish(s, champion_of(_release(1, "gpt-4o")))
    publish(s, champion_of(_release(2, "gpt-4o-mini")))
    assert feed.champion("support-bot").model == "gpt-4o-mini"
    publish(s, champion_of(_release(3, "gpt-4o", "rollback")))
    now = feed.champion("support-bot")
    assert (now.model, now.action, now.sequence) == ("gpt-4o", "rollback", 3)
    cached = ChampionFeed(s, ttl_s=60)
    assert cached.champion("support-bot").sequence == 3
    publish(s, champion_of(_release(4, "gpt-4.1")))
    assert cached.champion("support-bot").sequence == 3  # cached for a minute ...
    assert ChampionFeed(s, ttl_s=0).champion("support-bot").sequence == 4  # ... a fresh read sees the change
    assert feed.champion("another-app") is None


def test_the_sdk_follows_a_rollback_without_a_redeploy(kafka_settings: Settings) -> None:
    s = kafka_settings
    publish(s, champion_of(_release(1, "gpt-4o")))
    with FlywheelClient(s, champion_ttl_s=0) as fw:
        assert fw.champion("support-bot").model == "gpt-4o"
        publish(s, champion_of(_release(2, "gpt-4o-mini")))
        assert fw.champion("support-bot").model == "gpt-4o-mini"
        publish(s, champion_of(_release(3, "gpt-4o", "rollback")))
        assert (fw.champion("support-bot").model, fw.champion("support-bot").action) == ("gpt-4o", "rollback")


@pytest.mark.slow
@pytest.mark.broker
def test_promote_and_rollback_through_the_cli_reach_the_sdk_and_the_topic(kafka_settings: Settings) -> None:
    s = kafka_settings
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    # The app's traffic, through the SDK and the broker, landed in the lake by the worker: both versions served it.
    with FlywheelClient(s) as fw:
        for i, r in enumerate(edits):
            fw.log_inference(app="writer", model="writer-v1", model_version="1", input=r["prompt"], output=r["output"],
                             inference_id=f"w1-{i}", latency_ms=300)
            fw.log_inference(app="writer", model="writer-v2", model_version="2", input=r["prompt"],
                             output=r["correction"], inference_id=f"w2-{i}", latency_ms=300)
    assert IngestWorker(s).run(until_idle=2).landed["inferences"] == 2 * len(edits)

    # Real evaluation runs of each version against the provider double: v2 answers with the corrections.
    examples = [Example(f"e{i}", (("user", r["prompt"]),), reference=r["correction"]) for i, r in enumerate(edits)]
    records = ([{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
               + [{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]} for r in edits])
    settings = EvalSettings(concurrency=8, save_every=10, bootstrap=300)
    with RecordedProvider.from_records(records) as p:
        v1 = run_eval(s.lake, "edits@1", examples, Target("v1", p.url, "writer-v1", model_version="1"), Secret(""),
                      settings).run_id
        v2 = run_eval(s.lake, "edits@1", examples, Target("v2", p.url, "writer-v2", model_version="2"), Secret(""),
                      settings).run_id

    env = {"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_KAFKA_BOOTSTRAP": "",
           "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix, "FLYWHEEL_EVAL_BOOTSTRAP": "300",
           # both runs are the same local double: their latencies differ only by the machine's load
           "FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO": "1000"}
    runner = CliRunner()

    def cli(*args: str) -> str:
        res = runner.invoke(main, list(args), env=env)
        assert res.exit_code == 0, res.output
        return res.output

    cli("release", "promote", "writer", "--model", "writer-v1", "--model-version", "1", "--eval", v1)
    # Evidence about v2 does not promote v1 (and nothing goes to the topic)
    wrong = runner.invoke(main, ["release", "promote", "writer", "--model", "writer-v1", "--model-version", "1",
                                 "--eval", v2], env=env)
    assert wrong.exit_code == 1 and f"evaluation run {v2} evaluated model 'writer-v2'" in wrong.output
    out = cli("release", "promote", "writer", "--model", "writer-v2", "--model-version", "2", "--eval", v2)
    assert "champion is now writer-v2 2 (release 2)" in out and f"published to {topic(s)}" in out

    ttl = 1.0
    with FlywheelClient(s, champion_ttl_s=ttl) as fw, FlywheelClient(s, champion_ttl_s=600) as cached:
        # Taken before the read: the cache's clock starts inside champion(), after this and before it returns (a
        # stamp taken after the call, or after the second client's read, could be later than the cache's own).
        read_at = time.monotonic()
        now = fw.champion("writer")
        assert now is not None and (now.model, now.model_version, now.action, now.sequence) == \
            ("writer-v2", "2", "promote", 2)
        assert cached.champion("writer") == now
        out = cli("release", "rollback", "writer", "--reason", "thumbs down doubled")
        assert "rolled back to writer-v1 1 (release 3)" in out
        # The application follows without a redeploy once its cache expired, and not before.
        deadline = time.monotonic() + ttl + 15
        while True:
            got, at = fw.champion("writer"), time.monotonic()
            assert got is not None
            if got.sequence == 3:
                assert at - read_at >= ttl, "the cached champion was refreshed before its time"
                break
            assert got == now and at < deadline, "the SDK did not follow the rollback"
            time.sleep(0.1)
        assert (got.model, got.model_version, got.action) == ("writer-v1", "1", "rollback")
        assert cached.champion("writer") == now  # another client still within its cache time

    # One event per change on the topic, keyed by app, carrying what the releases table recorded.
    events = read_topic(s, topic(s), 1)
    assert [m.key() for m in events] == [b"writer"] * 3
    recorded = history(s.lake, "writer")
    assert [json.loads(m.value()) for m in events] == [
        {"app": "writer", "model": r.model, "model_version": r.model_version, "prompt_version": None,
         "sequence": r.sequence, "action": r.action, "since": r.since.isoformat()} for r in recorded]
    assert [(r.action, r.model, r.eval_run) for r in recorded] == [
        ("promote", "writer-v1", v1), ("promote", "writer-v2", v2), ("rollback", "writer-v1", v1)]

"""Online evidence next to the offline scores: events sent through the embedded broker and landed by the worker,
then `eval compare` shows, for each run's model, model version and prompt version, what users said (thumbs-up
rate, mean rating, correction and flag rates with their sample sizes), checked against a computation over the
events as they were sent."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.streams.ingest import IngestWorker
from flywheel.warehouse.evaluation.online import evidence
from flywheel.warehouse.evaluation.runs import Example, run_eval, run_target
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from tests.streams.conftest import Produced

SETTINGS = EvalSettings(concurrency=8, save_every=20, bootstrap=200)


def _expected(events: list[dict[str, Any]], model: str, version: str, prompt_version: str) -> dict[str, Any]:
    """Per inference, as the drift stage's feedback features count them: each inference weighs once."""
    infs = {e["inference_id"] for e in events if "feedback_id" not in e and e["model"] == model
            and e.get("model_version") == version and e.get("prompt_version") == prompt_version}
    fb: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if "feedback_id" in e and e["inference_id"] in infs:
            fb[e["inference_id"]].append(e)
    thumbs = [[f["value"] for f in fs if f["kind"] == "thumbs"] for fs in fb.values()]
    thumbs = [t for t in thumbs if t]
    ratings = [[(f["value"] - 1) / 4 for f in fs if f["kind"] == "rating"] for fs in fb.values()]
    ratings = [r for r in ratings if r]
    kinds = {i: Counter(f["kind"] for f in fb.get(i, [])) for i in infs}
    return {"inferences": len(infs),
            "thumbs_up_rate": sum(t.count(1) / len(t) for t in thumbs) / len(thumbs), "thumbs_n": len(thumbs),
            "rating_mean": sum(sum(r) / len(r) for r in ratings) / len(ratings), "rating_n": len(ratings),
            "correction_rate": sum(k["correction"] > 0 for k in kinds.values()) / len(infs),
            "flag_rate": sum(k["flag"] > 0 for k in kinds.values()) / len(infs)}


@pytest.mark.slow
@pytest.mark.broker
def test_compare_shows_what_users_said_about_each_runs_model_and_prompt_version(
        produced: Produced, kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings
    events = list(generate(load_corpus(), 700, seed=3))
    # The same model under a second prompt version: its feedback must not be counted for prompt version v3.
    for e in events:
        if "feedback_id" not in e and e["model"] == "oasst-sft-7-llama-30b" and int(e["inference_id"][4:]) % 3 == 0:
            e["prompt_version"] = "v4"
    # Writers corrected some of its answers (real LAMP edits as the corrections).
    edits = load_corpus().edits
    sft7 = [e for e in events if "feedback_id" not in e and e["model"] == "oasst-sft-7-llama-30b"]
    events += [{"feedback_id": f"fix-{n}", "inference_id": e["inference_id"], "timestamp": e["timestamp"],
                "kind": "correction", "correction": edits[n % len(edits)]["correction"], "source": "expert"}
               for n, e in enumerate(sft7) if n % 4 == 1]
    for e in events:
        produced.event(e)
    for e in [e for e in events if "feedback_id" in e][:30]:
        produced.event(e)  # re-sent by a retrying producer: counted once
    produced.flush()
    stats = IngestWorker(s).run(until_idle=2)
    assert stats.landed["inferences"] == sum("feedback_id" not in e for e in events)
    assert stats.landed["feedback"] == sum("feedback_id" in e for e in events) + 30

    answers = [a for a in load_corpus().answers if a["model"] in ("oasst-sft-7-llama-30b", "oasst-sft-6-llama-30b")]
    prompts = sorted({a["prompt"] for a in answers if a["model"] == "oasst-sft-7-llama-30b"}
                     & {a["prompt"] for a in answers if a["model"] == "oasst-sft-6-llama-30b"})
    examples = [Example(f"q{i}", (("user", p),)) for i, p in enumerate(prompts)]
    with RecordedProvider.from_records(answers) as provider:
        base = run_eval(s.lake, "oasst@1", examples, Target("sft6", provider.url, "oasst-sft-6-llama-30b",
                                                            model_version="2023-04-15", prompt_version="v3"),
                        Secret(""), SETTINGS)
        cand = run_eval(s.lake, "oasst@1", examples, Target("sft7", provider.url, "oasst-sft-7-llama-30b",
                                                            model_version="2023-04-16", prompt_version="v3"),
                        Secret(""), SETTINGS)

    got = evidence(s, run_target(s.lake, cand.run_id))
    want = _expected(events, "oasst-sft-7-llama-30b", "2023-04-16", "v3")
    assert want["inferences"] > 25 and want["thumbs_n"] > 8 and want["rating_n"] > 3
    assert got.inferences == want["inferences"] and got.thumbs_n == want["thumbs_n"]
    assert got.rating_n == want["rating_n"]
    for k in ("thumbs_up_rate", "rating_mean", "correction_rate", "flag_rate"):
        assert getattr(got, k) == pytest.approx(want[k]), k
    assert got.flag_rate > 0 and got.correction_rate > 0  # real counts, not defaults

    from flywheel.cli import main

    env = {"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_BROKER_PORT": str(s.broker_port),
           "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix}
    out = CliRunner().invoke(main, ["eval", "compare", base.run_id, cand.run_id, "--format", "json"], env=env)
    assert out.exit_code == 0, out.output
    online = json.loads(out.output)["online"]
    assert [o["run_id"] for o in online] == [base.run_id, cand.run_id]
    assert online[1]["thumbs_up_rate"] == pytest.approx(want["thumbs_up_rate"])
    assert online[1]["thumbs_n"] == want["thumbs_n"] and online[1]["prompt_version"] == "v3"
    assert online[0]["inferences"] == _expected(events, "oasst-sft-6-llama-30b", "2023-04-15", "v3")["inferences"]
    for fmt in ("text", "markdown"):
        out = CliRunner().invoke(main, ["eval", "compare", base.run_id, cand.run_id, "--format", fmt], env=env)
        assert out.exit_code == 0, out.output
        assert "Online evidence" in out.output and f"(n={want['thumbs_n']})" in out.output

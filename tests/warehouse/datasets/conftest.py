"""A lake of events derived from real data (the bundled corpus: LAMP corrections, PandaLM pairwise preferences with
ties, LLaMA-Factory KTO thumbs, OpenAssistant answers), each planted case named so tests can check exact rows.

`Scenario.events` are sent through the embedded broker and landed by the worker once per module (`landed`);
tests that change the lake land more events directly (`land`)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import Settings
from flywheel.infra import broker as embedded
from flywheel.infra.testing.corpus import Corpus, _load_bundled
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.datasets import DatasetSettings

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
PII = {"email": "jane.doe@example.com", "phone": "+1 415-555-0132", "card": "4111 1111 1111 1111",
       "ip": "10.20.30.40", "secret": "sk-proj-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0"}
"""Planted in an input and an output: no byte of any export may hold one of these."""


@dataclass
class Scenario:
    events: list[dict[str, Any]] = field(default_factory=list)
    sft: set[str] = field(default_factory=set)
    """inference ids of the SFT rows expected (one row each)"""
    sft_completion: dict[str, str] = field(default_factory=dict)
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(chosen inference, rejected inference or same for a correction) -> origin"""
    kto: dict[tuple[str, bool], str] = field(default_factory=dict)
    """(inference id, label) -> origin"""
    eval_ids: set[str] = field(default_factory=set)
    failures: set[str] = field(default_factory=set)
    texts: dict[str, dict[str, Any]] = field(default_factory=dict)
    _n: int = 0

    def inference(self, iid: str, prompt: Any, output: str, app: str = "support-bot", session: str | None = None,
                  **extra: Any) -> str:
        self._n += 1
        ev = {"inference_id": iid, "timestamp": (T0 + timedelta(seconds=self._n)).isoformat(), "app": app,
              "model": extra.pop("model", "gpt-4o"), "input": prompt, "output": output,
              "session_id": session or f"s-{iid}", "user_id": f"u-{self._n % 7}", "prompt_template": "default",
              **extra}
        self.events.append(ev)
        self.texts[iid] = ev
        return iid

    def feedback(self, iid: str, kind: str, delay_s: float = 60, **fields: Any) -> str:
        fid = f"fb-{iid}-{len(self.events)}"
        ts = datetime.fromisoformat(self.texts[iid]["timestamp"]) + timedelta(seconds=delay_s)
        self.events.append({"feedback_id": fid, "inference_id": iid, "timestamp": ts.isoformat(), "kind": kind,
                            **fields})
        return fid


def build_scenario(corpus: Corpus) -> Scenario:
    sc = Scenario()
    # LAMP: a professional's edit is the answer to learn (SFT), the chosen side of a pair, a desirable completion.
    for i, e in enumerate(corpus.edits[:6]):
        iid = sc.inference(f"c-{i}", e["prompt"], e["output"], app="writing-assistant")
        sc.feedback(iid, "correction", correction=e["correction"], source="expert", annotator_id="writer-1")
        sc.sft.add(iid)
        sc.sft_completion[iid] = e["correction"]
        sc.pairs[(iid, iid)] = "correction"
        sc.kto[(iid, True)] = "correction"
        sc.kto[(iid, False)] = "correction"
    # LLaMA-Factory KTO labels as user thumbs on chat inputs.
    for i, rec in enumerate(corpus.labels[:8]):
        iid = sc.inference(f"k-{i}", rec["messages"], rec["output"], model="mistral-7b")
        sc.feedback(iid, "thumbs", value=1 if rec["label"] else -1)
        sc.kto[(iid, rec["label"])] = "feedback"
        if rec["label"]:
            sc.sft.add(iid)
            sc.sft_completion[iid] = rec["output"]
    # PandaLM: two answers to one prompt and the majority of three annotators; ties are dropped.
    wins = [p for p in corpus.pairs if p["preference"] != 0][:5]
    ties = [p for p in corpus.pairs if p["preference"] == 0][:2]
    for i, p in enumerate(wins + ties):
        a = sc.inference(f"pa-{i}", p["prompt"], p["a"], app="search-answers", model="llama-7b", session=f"sp-{i}")
        b = sc.inference(f"pb-{i}", p["prompt"], p["b"], app="search-answers", model="llama-7b", session=f"sp-{i}")
        sc.feedback(a, "preference", other_inference_id=b, value=p["preference"], source="expert")
        if p["preference"]:
            win, lose = (a, b) if p["preference"] == 1 else (b, a)
            sc.pairs[(win, lose)] = "preference"
            sc.kto[(win, True)] = "preference"
            sc.kto[(lose, False)] = "preference"
    # An explicit preference between answers to different prompts: never a pair, still KTO signal.
    ans = corpus.answers
    xa = sc.inference("x-a", ans[0]["prompt"], ans[0]["output"], app="search-answers")
    other = next(a for a in ans if a["prompt"] != ans[0]["prompt"])
    xb = sc.inference("x-b", other["prompt"], other["output"], app="search-answers")
    sc.feedback(xa, "preference", other_inference_id=xb, value=1, source="user")
    sc.kto[(xa, True)] = "preference"
    sc.kto[(xb, False)] = "preference"
    # OpenAssistant: two outputs for one prompt with opposite thumbs make a pair.
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for a in ans:
        if a["output"] not in by_prompt[a["prompt"]]:
            by_prompt[a["prompt"]].append(a["output"])
    prompt, outs = next((p, o) for p, o in by_prompt.items() if len(o) >= 2 and p not in (ans[0]["prompt"],
                                                                                          other["prompt"]))
    good = sc.inference("o-good", prompt, outs[0])
    bad = sc.inference("o-bad", prompt, outs[1])
    sc.feedback(good, "thumbs", value=1)
    sc.feedback(bad, "thumbs", value=-1)
    sc.pairs[(good, bad)] = "opposite feedback"
    sc.sft.add(good)
    sc.sft_completion[good] = outs[0]
    sc.kto[(good, True)] = "feedback"
    sc.kto[(bad, False)] = "feedback"
    # Disagreement: an expert's thumbs down beats a later user thumbs up; between users the latest wins.
    used = {prompt, ans[0]["prompt"], other["prompt"]}
    long_answers = []
    for a in ans:  # one answer per prompt, so no two planted cases share a prompt by accident
        if 60 < len(set(a["output"].split())) < 300 and a["prompt"] not in used:
            used.add(a["prompt"])
            long_answers.append(a)
    d1, d2 = long_answers[0], long_answers[1]
    sc.inference("d-expert", d1["prompt"], d1["output"])
    sc.feedback("d-expert", "thumbs", value=-1, source="expert", delay_s=10)
    sc.feedback("d-expert", "thumbs", value=1, source="user", delay_s=20)
    sc.kto[("d-expert", False)] = "feedback"
    sc.inference("d-latest", d2["prompt"], d2["output"])
    sc.feedback("d-latest", "thumbs", value=-1, delay_s=10)
    sc.feedback("d-latest", "rating", value=5, delay_s=20)
    sc.sft.add("d-latest")
    sc.sft_completion["d-latest"] = d2["output"]
    sc.kto[("d-latest", True)] = "feedback"
    # Exact and near duplicates of d-latest (later, so d-latest is the one kept).
    sc.inference("dup-exact", "  " + d2["prompt"].upper() + " ", d2["output"])
    sc.feedback("dup-exact", "thumbs", value=1)
    words = d2["output"].split()
    words[len(words) // 2] = "notably"
    sc.inference("dup-near", d2["prompt"], " ".join(words))
    sc.feedback("dup-near", "thumbs", value=1)
    # A liked answer that was also flagged: the flags step removes it.
    f = long_answers[2]
    sc.inference("f-flagged", f["prompt"], f["output"])
    sc.feedback("f-flagged", "flag", reason="unsafe", delay_s=5)
    sc.feedback("f-flagged", "thumbs", value=1, delay_s=30)
    # PII in the input and the output.
    sc.inference("p-pii", f"My e-mail is {PII['email']} and my phone {PII['phone']}; why was I charged twice?",
                 f"Sorry! The card {PII['card']} was charged from {PII['ip']}. Never share keys like "
                 f"{PII['secret']}. Reach us at help@example.org.")
    sc.feedback("p-pii", "implicit", signal="accept")
    sc.sft.add("p-pii")
    sc.kto[("p-pii", True)] = "feedback"
    # Eval (app `ops-eval`): a failing prompt that a support-bot SFT candidate repeats exactly, and one that
    # another candidate paraphrases by one word: decontamination must remove both candidates.
    e1, e2 = long_answers[3], long_answers[4]
    sc.inference("e-fail", e1["prompt"], e1["output"], app="ops-eval")
    sc.feedback("e-fail", "thumbs", value=-1)
    sc.inference("e-ok", e2["prompt"] + " " + e2["output"], e2["output"], app="ops-eval")
    sc.eval_ids |= {"e-fail", "e-ok"}
    sc.failures.add("e-fail")
    sc.inference("s-same", e1["prompt"], e1["output"] + " (reviewed)")
    sc.feedback("s-same", "thumbs", value=1)
    near = (e2["prompt"] + " " + e2["output"]).split()
    near[len(near) // 2] = "precisely"
    sc.inference("s-near", " ".join(near), "A different answer that the user liked a lot.")
    sc.feedback("s-near", "thumbs", value=1)
    # Enough sessions that both splits get rows: plain liked answers, one per session, two per session for some.
    for i, a in enumerate(long_answers[5:25]):
        iid = sc.inference(f"g-{i}", a["prompt"], a["output"], session=f"sg-{i // 2}")
        sc.feedback(iid, "thumbs", value=1)
        sc.sft.add(iid)
        sc.sft_completion[iid] = a["output"]
        sc.kto[(iid, True)] = "feedback"
    return sc


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return _load_bundled()  # the bundled corpus (infra/demo/corpus.jsonl), never ../shared


@pytest.fixture(scope="session")
def scenario(corpus: Corpus) -> Scenario:
    return build_scenario(corpus)


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory, broker_port: int, scenario: Scenario) -> Iterator[Path]:
    """A lake holding the scenario, sent through the embedded broker and landed by the worker; tests copy it."""
    home = tmp_path_factory.mktemp("landed")
    tag = home.name.replace("_", "")[-10:]
    s = Settings(home=home, broker_port=broker_port, topic_prefix=f"c{tag}", ingest_group=f"g{tag}", partitions=2,
                 flush_interval_s=0.5)
    ensure_topics(s)
    with FlywheelClient(s) as fw:
        for ev in scenario.events:
            fw.send(ev)
    stats = IngestWorker(s).run(until_idle=2)
    n_inf = sum(1 for e in scenario.events if "feedback_id" not in e)
    assert stats.landed["inferences"] == n_inf and stats.landed["feedback"] == len(scenario.events) - n_inf
    yield Path(s.lake)


@pytest.fixture
def lake(landed: Path, tmp_path: Path) -> Settings:
    """Settings on a private copy of the landed lake (so a test may add events or versions)."""
    home = tmp_path / "home"
    shutil.copytree(landed, home / "lake")
    return Settings(home=home)


@pytest.fixture
def ds() -> DatasetSettings:
    return DatasetSettings()


def rows(table: Any) -> list[dict[str, Any]]:
    return table.to_pylist()


_ = embedded  # the broker fixture lives in tests/conftest.py

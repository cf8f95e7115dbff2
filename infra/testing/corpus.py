"""Realistic event streams built from real public LLM feedback data, for the demo, tests and benchmarks.

Sources (see infra/demo/README.md for licenses): OpenAssistant sampling reports (the same prompts answered by
successive model versions), PandaLM pairwise human preferences, LAMP professional edits (corrections) and
LLaMA-Factory KTO labels (thumbs). `load_corpus()` reads the bundled sample `infra/demo/corpus.jsonl` (the same
on every checkout, so tests and the demo do not depend on where they run), `load_corpus(path)` the full sources of
a `shared/data` checkout (benchmarks).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"  # infra/demo: this module is infra/testing/corpus.py
BUNDLED = DEMO_DIR / "corpus.jsonl"
APPS = ("support-bot", "writing-assistant", "search-answers")
IMPLICIT = ("copy", "regenerate", "abandon", "accept")


@dataclass
class Corpus:
    answers: list[dict[str, Any]] = field(default_factory=list)
    """{prompt, output, model, model_version}"""
    edits: list[dict[str, str]] = field(default_factory=list)
    """{prompt, output, correction}"""
    pairs: list[dict[str, Any]] = field(default_factory=list)
    """{prompt, a, b, preference} with preference 1 (a), -1 (b) or 0"""
    labels: list[dict[str, Any]] = field(default_factory=list)
    """{messages, output, label}"""

    def to_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for kind in ("answers", "edits", "pairs", "labels"):
                for rec in getattr(self, kind):
                    fh.write(json.dumps({"kind": kind, **rec}, ensure_ascii=False) + "\n")


def default_shared_data() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):  # the checkout: ../shared beside it
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def load_corpus(shared_data: Path | None = None, per_source: int | None = None) -> Corpus:
    """The bundled corpus, or the full sources of a `shared/data` checkout when one is given (benchmarks pass
    `default_shared_data()`). Tests never depend on which checkout they run in: without an argument, always the
    bundled corpus."""
    if shared_data is None:
        return _load_bundled()
    c = Corpus()
    for report in sorted((shared_data / "oasst_model_eval" / "sampling_reports").glob("*.json*")):
        data = json.loads(report.read_text(encoding="utf-8"))
        model = data["model_name"].split("/")[-1]
        version = report.name[:10]
        for p in data["prompts"][:per_source]:
            for res in p["results"]:
                for out in res["outputs"]:
                    c.answers.append({"prompt": p["prompt"], "output": out.strip(), "model": model,
                                      "model_version": version})
    for item in json.loads((shared_data / "lamp_edits" / "LLM_edited_oracle.sanitized.json").read_text())[:per_source]:
        c.edits.append({"prompt": item["instruction"], "output": item["preedit"], "correction": item["postedit"]})
    for item in json.loads((shared_data / "pandalm" / "testset-v1.json").read_text())[:per_source]:
        if not (isinstance(item["response1"], str) and isinstance(item["response2"], str)):
            continue  # a few PandaLM rows hold booleans where a response should be
        votes = [item[f"annotator{i}"] for i in (1, 2, 3)]
        score = sum(1 if v == 1 else -1 if v == 2 else 0 for v in votes)
        prompt = item["instruction"] + ("\n\n" + item["input"] if item.get("input") else "")
        c.pairs.append({"prompt": prompt, "a": item["response1"], "b": item["response2"],
                        "preference": (score > 0) - (score < 0)})
    for item in json.loads((shared_data / "llamafactory" / "kto_en_demo.json").read_text())[:per_source]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
        if msgs and msgs[-1]["role"] == "assistant":
            c.labels.append({"messages": msgs[:-1], "output": msgs[-1]["content"], "label": bool(item["label"])})
    return c


def _load_bundled() -> Corpus:
    c = Corpus()
    with open(BUNDLED, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            getattr(c, rec.pop("kind")).append(rec)
    return c


def _ts(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def generate(corpus: Corpus, n_inferences: int, seed: int = 7, start: datetime | None = None,
             feedback_rate: float = 0.6, prefix: str = "inf", metadata: bool = False) -> Iterator[dict[str, Any]]:
    """Yield `n_inferences` inference events, each followed by feedback with probability `feedback_rate`.

    Ids are `<prefix>-<n>`, so streams with different prefixes never collide. Deterministic for a seed. With
    `metadata`, every event also carries a `metadata` object as SDKs attach them (`inference_metadata`,
    `feedback_metadata`), drawn from a generator of its own: the events are otherwise the same as without.
    """
    rng = random.Random(seed)
    meta_rng = random.Random(f"metadata-{seed}")
    t = start or datetime(2026, 11, 1, tzinfo=timezone.utc)
    fb = 0
    for n in range(n_inferences):
        t += timedelta(milliseconds=rng.randint(5, 400))
        iid = f"{prefix}-{n}"
        pick = rng.random()
        base: dict[str, Any] = {"inference_id": iid, "timestamp": _ts(t), "app": rng.choice(APPS),
                                "user_id": f"u{rng.randint(1, 5000)}", "session_id": f"s{rng.randint(1, 20000)}",
                                "provider": "demo", "prompt_template": "default", "prompt_version": "v3"}
        feedback: list[dict[str, Any]] = []
        if pick < 0.1 and corpus.edits:
            rec = rng.choice(corpus.edits)
            ev = {**base, "model": "gpt-4o", "model_version": "2024-08-06", "input": rec["prompt"],
                  "output": rec["output"]}
            feedback.append({"kind": "correction", "correction": rec["correction"], "source": "expert",
                             "annotator_id": f"writer-{rng.randint(1, 12)}"})
        elif pick < 0.2 and corpus.pairs:
            rec = rng.choice(corpus.pairs)
            ev = {**base, "model": "llama-7b", "input": rec["prompt"], "output": rec["a"]}
            if rng.random() < 0.5:
                feedback.append({"kind": "preference", "other_inference_id": f"{iid}-alt",
                                 "value": rec["preference"], "source": "expert"})
        elif pick < 0.35 and corpus.labels:
            rec = rng.choice(corpus.labels)
            ev = {**base, "model": "mistral-7b", "input": rec["messages"], "output": rec["output"]}
            feedback.append({"kind": "thumbs", "value": 1 if rec["label"] else -1})
        else:
            rec = rng.choice(corpus.answers)
            ev = {**base, "model": rec["model"], "model_version": rec["model_version"], "input": rec["prompt"],
                  "output": rec["output"]}
        tokens_in, tokens_out = len(str(ev["input"])) // 4 + 1, len(ev["output"]) // 4 + 1
        ev.update(latency_ms=round(rng.lognormvariate(6.5, 0.5), 1), input_tokens=tokens_in,
                  output_tokens=tokens_out, cost_usd=round((tokens_in * 2.5 + tokens_out * 10) / 1e6, 7))
        if metadata:
            ev = {**ev, "metadata": inference_metadata(meta_rng, ev)}
        yield ev
        if not feedback and rng.random() < feedback_rate:
            r = rng.random()
            if r < 0.6:
                feedback.append({"kind": "thumbs", "value": 1 if rng.random() < 0.75 else -1})
            elif r < 0.8:
                feedback.append({"kind": "rating", "value": rng.randint(1, 5)})
            elif r < 0.9:
                feedback.append({"kind": "implicit", "signal": rng.choice(IMPLICIT)})
            else:
                feedback.append({"kind": "flag", "reason": rng.choice(["unsafe", "wrong", "off-topic"])})
        for f in feedback:
            fb += 1
            delay = timedelta(seconds=rng.expovariate(1 / 90))
            fev = {"feedback_id": f"{prefix}-fb-{fb}", "inference_id": iid, "timestamp": _ts(t + delay), **f}
            yield {**fev, "metadata": feedback_metadata(meta_rng)} if metadata else fev


REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR")
PLANS = ("free", "pro", "team", "enterprise")
TITLES = ("Quarterly report draft", "Résumé review", "Café menu translation", "Übersicht der Kosten",
          "週次レポート", "Q&A: \"refund\" policy", "Notes\nfrom the call", "Onboarding checklist")


def inference_metadata(rng: random.Random, ev: dict[str, Any]) -> dict[str, Any]:
    """What an LLM app attaches to a call: request and trace ids, sampling parameters, retrieval context, the
    client and the user's plan. Types are stable per key (as one app's SDK sends them); the keys present vary."""
    meta: dict[str, Any] = {
        "request_id": f"req_{rng.getrandbits(64):016x}",
        "trace_id": f"{rng.getrandbits(128):032x}",
        "environment": rng.choice(("production", "production", "production", "staging")),
        "region": rng.choice(REGIONS),
        "params": {"temperature": rng.choice((0.0, 0.2, 0.7, 1.0)), "top_p": rng.choice((0.9, 0.95, 1.0)),
                   "max_tokens": rng.choice((256, 512, 1024, 4096)), "stream": rng.random() < 0.6},
        "client": {"sdk": "flywheel-python", "sdk_version": rng.choice(("0.4.2", "0.5.0")),
                   "locale": rng.choice(LOCALES)},
        "user": {"plan": rng.choice(PLANS), "cohort": f"2026-{rng.randint(1, 11):02d}"},
    }
    if rng.random() < 0.5:
        docs = [f"kb-{rng.randint(1, 90000)}" for _ in range(rng.randint(1, 5))]
        meta["retrieval"] = {"index": "kb-v7", "doc_ids": docs,
                             "scores": [round(rng.uniform(0.3, 0.95), 4) for _ in docs], "latency_ms": rng.randint(8, 120)}
    if rng.random() < 0.3:
        meta["tags"] = rng.sample(("beta", "rag", "long-context", "tool-use", "eval"), rng.randint(1, 3))
    if rng.random() < 0.15:  # free text from the product: non-ASCII, quotes, newlines
        meta["document_title"] = rng.choice(TITLES)
    if rng.random() < 0.1:
        meta["cache"] = {"hit": True, "key": f"c{rng.getrandbits(32):08x}", "ttl_s": None}
    return meta


def feedback_metadata(rng: random.Random) -> dict[str, Any]:
    """What a product attaches to feedback: where it was given, by which client, after how long."""
    meta: dict[str, Any] = {"surface": rng.choice(("chat-widget", "web-app", "slack", "api")),
                            "client_version": rng.choice(("2.14.0", "2.15.1", "3.0.0-rc.2")),
                            "locale": rng.choice(LOCALES), "seconds_after_answer": round(rng.expovariate(1 / 40), 1)}
    if rng.random() < 0.2:
        meta["comment_title"] = rng.choice(TITLES)
    return meta


def write_jsonl(events: Iterator[dict[str, Any]], path: Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(ev, ensure_ascii=False) + "\n")
            n += 1
    return n


def hostile_payloads(valid: list[dict[str, Any]], n: int, seed: int = 13,
                     big_bytes: int = 10 * 1024 * 1024) -> list[tuple[str, bytes]]:
    """`n` hostile payloads (name, bytes) derived from `valid` events: every one breaks the contract.

    Truncated JSON, wrong types, oversized (`big_bytes`) payloads, invalid UTF-8, null bytes, huge numbers,
    unknown kinds, missing ids, non-objects, duplicate keys, NaN. Big payloads are at most a handful.
    """
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []

    def enc(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode()

    makers = [
        ("truncated", lambda e: enc(e)[: rng.randint(1, max(2, len(enc(e)) - 2))]),
        ("wrong-type-number", lambda e: enc({**e, ("latency_ms" if "inference_id" in e and "output" in e
                                                   else "value"): "fast"})),
        ("wrong-type-string", lambda e: enc({**e, "timestamp": 1732790000})),
        ("bool-for-int", lambda e: enc({**e, "schema_version": True})),
        ("list-for-object", lambda e: enc({**e, "metadata": [1, 2]})),
        ("invalid-utf8", lambda e: enc(e)[:20] + b"\xff\xfe\xfd" + enc(e)[20:]),
        ("null-byte", lambda e: enc(e)[:10] + b"\x00" + enc(e)[10:]),
        ("huge-number", lambda e: enc(e)[:-1] + b', "cost_usd": 1e400, "value": 1e400}'),
        ("huge-int", lambda e: enc({**e, "schema_version": 10**30})),
        ("unknown-kind", lambda e: enc({**e, "kind": "telepathy"} if "feedback_id" in e else {**e, "input": {"q": 1}})),
        ("missing-id", lambda e: enc({k: v for k, v in e.items() if not k.endswith("_id")})),
        ("empty-id", lambda e: enc({**e, ("feedback_id" if "feedback_id" in e else "inference_id"): ""})),
        ("not-an-object", lambda e: rng.choice([b"[1, 2, 3]", b'"just a string"', b"42", b"null", b"true"])),
        ("empty", lambda e: b""),
        ("duplicate-key", lambda e: enc(e)[:-1] + b', "timestamp": "2026-01-01T00:00:00Z"}'),
        ("nan", lambda e: enc({k: v for k, v in e.items() if k not in ("value", "cost_usd")})[:-1]
         + b', "value": NaN, "cost_usd": -Infinity}'),
        ("naive-timestamp", lambda e: enc({**e, "timestamp": "2026-11-01T10:00:00"})),
        ("negative", lambda e: enc({**e, "kind": "rating", "value": -7} if "feedback_id" in e
                                   else {**e, "latency_ms": -1, "input_tokens": -3})),
    ]
    bigs = 0
    for i in range(n):
        e = rng.choice(valid)
        if i % 200 == 7 and bigs < 5:
            bigs += 1
            out.append(("oversized", enc({**e, "output": "x" * big_bytes, "correction": "x" * big_bytes})))
            continue
        name, make = makers[i % len(makers)]
        out.append((name, make(e)))
    return out

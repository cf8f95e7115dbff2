"""Drift scenarios built from real public data (fixtures in `data/`, derived from `shared/data`), and a fast
columnar way to land them without Kafka.

The scenarios (used by tests/warehouse/drift/test_scenarios.py and bench/drift.py):
- `stationary`: OpenAssistant sampling-report answers of several models, shuffled and split into windows;
- `model_change`: the same 250 prompts answered by one model version, then by its successor (oasst-sft-7-llama-30b
  then oasst-rlhf-1-llama-30b-8k-steps), deployed under one model name;
- `language_shift`: English prompts, then a share of Spanish/Russian/... (oasst multilingual-60 with falcon's
  answers) and Chinese (LLaMA-Factory dpo_zh_demo) prompts mixed in;
- `satisfaction_drop`: thumbs on every inference, 20% down, then 45% down;
- `late_corrections`: a steady correction rate whose expert corrections mostly arrive days late.

`land()` writes Arrow columns straight into the lake's Delta tables with unique synthetic Kafka coordinates, which
is how the landing worker's rows look, at millions of rows per second (the JSON path is for contract tests).
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.config import Settings
from flywheel.schemas.arrow import SCHEMAS, defaults
from flywheel.warehouse.lake import Lake

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


@dataclass
class Events:
    """Columns of inference and feedback events (lists of equal length per side)."""

    inferences: dict[str, list[Any]] = field(default_factory=dict)
    feedback: dict[str, list[Any]] = field(default_factory=dict)

    def add_inference(self, **cols: Any) -> None:
        n = len(self.inferences.get("inference_id", []))
        for k, v in cols.items():
            self.inferences.setdefault(k, [None] * n).append(v)
        for col in self.inferences.values():
            if len(col) == n:
                col.append(None)

    def add_feedback(self, **cols: Any) -> None:
        n = len(self.feedback.get("feedback_id", []))
        for k, v in cols.items():
            self.feedback.setdefault(k, [None] * n).append(v)
        for col in self.feedback.values():
            if len(col) == n:
                col.append(None)


def lake_table(name: str, columns: dict[str, Any], offset0: int = 0, topic: str = "synthetic") -> pa.Table:
    """A table of the lake's schema `name` from `columns` (missing ones null; `event_date` from `timestamp`;
    Kafka coordinates `topic`[0] from `offset0`)."""
    schema = SCHEMAS[name]
    n = len(columns["timestamp"])
    default = defaults(name)
    arrays = []
    for f in schema:
        if f.name in columns:
            arrays.append(pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
                          else columns[f.name].cast(f.type))
        elif f.name == "event_date":
            arrays.append(pc.cast(pa.array(columns["timestamp"], schema.field("timestamp").type), pa.date32()))
        elif f.name == "_topic":
            arrays.append(pa.array([f"{topic}.{name}"] * n, pa.string()))
        elif f.name == "_partition":
            arrays.append(pa.array(np.zeros(n, np.int32)))
        elif f.name == "_offset":
            arrays.append(pa.array(np.arange(offset0, offset0 + n, dtype=np.int64)))
        elif f.name == "_ingested_at":
            arrays.append(pa.array([datetime.now(timezone.utc)] * n, f.type))
        elif f.name in default:
            arrays.append(pa.repeat(pa.scalar(default[f.name], f.type), n))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def land(settings: Settings, events: Events, offset0: int = 0, topic: str = "synthetic") -> tuple[int, int]:
    """Commit `events` to the lake (creating its tables). Returns (inferences, feedback) landed."""
    lake = Lake(settings.lake_location)
    lake.ensure()
    n_inf = n_fb = 0
    if events.inferences.get("inference_id"):
        t = lake_table("inferences", events.inferences, offset0, topic)
        n_inf = lake.commit("inferences", t, {}).rows
    if events.feedback.get("feedback_id"):
        t = lake_table("feedback", events.feedback, offset0, topic)
        n_fb = lake.commit("feedback", t, {}).rows
    return n_inf, n_fb


# --------------------------------------------------------------------------------------------------- real data


DATA = Path(__file__).parent / "data"
"""Fixtures derived from `shared/data` (see data/README.md; rebuilt by `derive_fixtures.py`)."""


@functools.cache
def _answers() -> tuple[tuple[str, str, str], ...]:
    """(report file name, prompt, output as written) of every OpenAssistant sampling report, in file order."""
    with gzip.open(DATA / "oasst_sampling_answers.jsonl.gz", "rt", encoding="utf-8", newline="\n") as fh:
        return tuple((r["report"], r["prompt"], r["output"]) for r in map(json.loads, fh))


def raw_outputs(model_fragment: str) -> list[str]:
    """The outputs, unstripped, of the sampling report whose file name contains `model_fragment`."""
    reports = sorted({r for r, _, _ in _answers() if model_fragment in r})
    if not reports:
        raise FileNotFoundError(f"no sampling report matching {model_fragment!r} in {DATA}")
    return [o for r, _, o in _answers() if r == reports[0]]


def sampling_report(model_fragment: str) -> list[tuple[str, str]]:
    """(prompt, output) pairs of the oasst sampling report whose file name contains `model_fragment`."""
    reports = sorted({r for r, _, _ in _answers() if model_fragment in r})
    if not reports:
        raise FileNotFoundError(f"no sampling report matching {model_fragment!r} in {DATA}")
    return [(p, o.strip()) for r, p, o in _answers() if r == reports[0]]


def all_answers() -> list[tuple[str, str]]:
    return [(p, o.strip()) for _, p, o in _answers()]


def multilingual_answers() -> list[tuple[str, str]]:
    """Non-English prompts with answers: falcon's answers to oasst multilingual-60, and Chinese DPO pairs."""
    out = [(p, o) for p, o in sampling_report("multilingual") if not p.isascii()]
    with gzip.open(DATA / "dpo_zh_chosen.jsonl.gz", "rt", encoding="utf-8", newline="\n") as fh:
        out += [(r["prompt"], r["output"]) for r in map(json.loads, fh)]
    return out


def _add(ev: Events, rng: random.Random, n: int, t: datetime, prompt: str, output: str, *, app: str, model: str,
         model_version: str, prompt_version: str = "v1", thumbs_down: float | None = None,
         feedback_rate: float = 0.6, prefix: str = "i") -> None:
    iid = f"{prefix}-{n}"
    latency = rng.lognormvariate(6.5, 0.4) + len(output) * 0.5
    tin, tout = len(prompt) // 4 + 1, len(output) // 4 + 1
    ev.add_inference(inference_id=iid, timestamp=t, app=app, model=model, model_version=model_version,
                     prompt_template="default", prompt_version=prompt_version, input=prompt, output=output,
                     latency_ms=latency, input_tokens=tin, output_tokens=tout, cost_usd=(tin * 2.5 + tout * 10) / 1e6)
    if thumbs_down is not None:
        ev.add_feedback(feedback_id=f"{iid}-fb", inference_id=iid, timestamp=t + timedelta(seconds=30),
                        kind="thumbs", value=-1.0 if rng.random() < thumbs_down else 1.0)
    elif rng.random() < feedback_rate:
        r = rng.random()
        if r < 0.7:
            ev.add_feedback(feedback_id=f"{iid}-fb", inference_id=iid, timestamp=t + timedelta(seconds=30),
                            kind="thumbs", value=-1.0 if rng.random() < 0.2 else 1.0)
        else:
            ev.add_feedback(feedback_id=f"{iid}-fb", inference_id=iid, timestamp=t + timedelta(seconds=30),
                            kind="rating", value=float(rng.randint(3, 5)), scale_min=1.0, scale_max=5.0)


def windows_of(rows: Sequence[tuple[str, str]], n_windows: int, window: timedelta, *, start: datetime = T0,
               seed: int = 0, **kw: Any) -> Events:
    """`rows` spread evenly over `n_windows` consecutive windows, in order."""
    rng = random.Random(seed)
    ev = Events()
    per = len(rows) / n_windows
    for n, (prompt, output) in enumerate(rows):
        w = int(n / per)
        t = start + w * window + timedelta(seconds=rng.random() * window.total_seconds() * 0.999)
        _add(ev, rng, n, t, prompt, output, **kw)
    return ev


def stationary(n_windows: int = 30, window: timedelta = timedelta(hours=1),
               seed: int = 0) -> Events:
    rows = all_answers()
    random.Random(seed).shuffle(rows)
    return windows_of(rows, n_windows, window, seed=seed, app="assistant", model="oasst", model_version="mix")


def model_change(windows_each: int = 4, window: timedelta = timedelta(hours=1),
                 seed: int = 0) -> Events:
    """`windows_each` windows of oasst-sft-7, then `windows_each` of oasst-rlhf-1 (8k steps), same prompts."""
    rng = random.Random(seed)
    before = sampling_report("oasst-sft-7-llama-30b")
    after = sampling_report("oasst-rlhf-1-llama-30b-8k")
    rng.shuffle(before)
    rng.shuffle(after)
    ev = windows_of(before, windows_each, window, seed=seed, app="assistant", model="oasst-llama-30b",
                    model_version="sft-7", prefix="a")
    _extend(ev, windows_of(after, windows_each, window, start=T0 + windows_each * window, seed=seed + 1,
                           app="assistant", model="oasst-llama-30b", model_version="rlhf-1-8k", prefix="b"))
    # A second model in the same app that does not change (gpt-3.5, gpt-4, claude answers, resampled).
    steady = [x for m in ("gpt-3.5", "gpt-4", "claude") for x in sampling_report(m)]
    steady = [rng.choice(steady) for _ in range(len(before) + len(after))]
    _extend(ev, windows_of(steady, 2 * windows_each, window, seed=seed + 2, app="assistant", model="gpt",
                           model_version="2023-04", prefix="c"))
    return ev


def language_shift(windows_before: int = 4, windows_after: int = 3, share: float = 0.4,
                   window: timedelta = timedelta(hours=1), per_window: int = 400, seed: int = 0) -> Events:
    """English traffic, then `share` of each window's prompts multilingual (incl. Chinese)."""
    rng = random.Random(seed)
    english = all_answers()
    foreign = multilingual_answers()
    ev = Events()
    n = 0
    for w in range(windows_before + windows_after):
        for _ in range(per_window):
            pool = foreign if w >= windows_before and rng.random() < share else english
            prompt, output = rng.choice(pool)
            t = T0 + w * window + timedelta(seconds=rng.random() * window.total_seconds() * 0.999)
            _add(ev, rng, n, t, prompt, output, app="assistant", model="oasst", model_version="mix")
            n += 1
    return ev


def satisfaction_drop(windows_before: int = 4, windows_after: int = 2, before: float = 0.2,
                      after: float = 0.45, window: timedelta = timedelta(hours=1), per_window: int = 500,
                      seed: int = 0) -> Events:
    """Thumbs on every inference: `before` share down, then `after` (same answers throughout)."""
    rng = random.Random(seed)
    rows = all_answers()
    ev = Events()
    n = 0
    for w in range(windows_before + windows_after):
        for _ in range(per_window):
            prompt, output = rng.choice(rows)
            t = T0 + w * window + timedelta(seconds=rng.random() * window.total_seconds() * 0.999)
            _add(ev, rng, n, t, prompt, output, app="assistant", model="oasst", model_version="mix",
                 thumbs_down=after if w >= windows_before else before)
            n += 1
    return ev


def late_corrections(days_before: int = 7, per_day: int = 600, rate: float = 0.2,
                     rate_after: float | None = None, fast_share: float = 0.3, now: datetime | None = None,
                     seed: int = 0) -> Events:
    """Expert corrections that mostly arrive days late: `days_before` daily windows, then one current day, each
    inference corrected with probability `rate` (`rate_after` on the current day); `fast_share` of corrections come
    within an hour, the rest 6-72 h later. Feedback after `now` (default: 1 h after the current day ends) has not
    happened yet and is not landed, as at run time. Thumbs (30 s after, 20% down) on every inference."""
    rng = random.Random(seed)
    rows = all_answers()
    day = timedelta(days=1)
    now = now or T0 + (days_before + 1) * day + timedelta(hours=1)
    ev = Events()
    n = 0
    for d in range(days_before + 1):
        p = rate_after if d == days_before and rate_after is not None else rate
        for _ in range(per_day):
            prompt, output = rng.choice(rows)
            t = T0 + d * day + timedelta(seconds=rng.random() * day.total_seconds() * 0.999)
            _add(ev, rng, n, t, prompt, output, app="assistant", model="oasst", model_version="mix", thumbs_down=0.2)
            if rng.random() < p:
                late = rng.random() >= fast_share
                at = t + (timedelta(hours=rng.uniform(6, 72)) if late else timedelta(minutes=rng.uniform(1, 60)))
                if at <= now:
                    ev.add_feedback(feedback_id=f"i-{n}-corr", inference_id=f"i-{n}", timestamp=at,
                                    kind="correction", correction=output + " (edited)")
            n += 1
    return ev


def _extend(a: Events, b: Events) -> None:
    for side in ("inferences", "feedback"):
        x, y = getattr(a, side), getattr(b, side)
        nx = len(next(iter(x.values()), []))
        ny = len(next(iter(y.values()), []))
        for k in set(x) | set(y):
            x[k] = x.get(k, [None] * nx) + y.get(k, [None] * ny)

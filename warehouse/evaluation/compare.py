"""Comparing two evaluation runs over the same examples, and the gate a release pipeline can block on.

Deltas are candidate minus baseline over the examples both runs recorded (matched by example id). Confidence
intervals are 95% paired bootstrap intervals (`EvalSettings.bootstrap` resamples of the matched examples, seed 0):
each resample draws examples with replacement and recomputes both runs' metric on the same draw. Latency p95 is
compared as a ratio. Per-segment regressions are the segments whose pass rate fell; *flipped* examples passed in
the baseline and fail in the candidate.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.judge import pairwise_between, rubric_scores
from flywheel.warehouse.evaluation.online import OnlineEvidence
from flywheel.warehouse.evaluation.runs import EvalError, finished, rows
from flywheel.warehouse.evaluation.settings import EvalSettings

__all__ = ["Comparison", "Delta", "EvalError", "Gate", "JudgeWinRate", "Segment", "compare", "gate", "markdown",
           "to_json"]


@dataclass(frozen=True)
class Delta:
    metric: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    low: float | None
    high: float | None
    """95% paired bootstrap interval of the delta (None where the metric is missing)."""


@dataclass(frozen=True)
class Segment:
    segment: str
    n: int
    baseline_pass_rate: float
    candidate_pass_rate: float


@dataclass(frozen=True)
class JudgeWinRate:
    """The candidate's pairwise judge verdicts against the baseline (each example asked in both orders)."""

    judge: str
    judged: int
    """Examples with a verdict in both orders (failed judgements are left out and counted in `failed`)."""
    wins: int
    losses: int
    ties: int
    failed: int
    win_rate: float | None
    """(wins + ties / 2) / judged: 0.5 is no difference."""
    low: float | None
    high: float | None
    """95% bootstrap interval of the win rate, over the judged examples."""


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    matched: int
    deltas: tuple[Delta, ...]
    latency_p95_ratio: float | None
    regressions: tuple[Segment, ...]
    flipped: tuple[str, ...]
    """Example ids that passed in the baseline and fail in the candidate."""
    method: str
    judge: JudgeWinRate | None = None
    online: tuple[OnlineEvidence, ...] = ()
    """What users said about each run's model and prompt version in the lake (baseline first), when looked up."""

    def delta(self, metric: str) -> Delta:
        return next(d for d in self.deltas if d.metric == metric)

    def to_dict(self) -> dict[str, object]:
        return {"baseline": self.baseline, "candidate": self.candidate, "matched": self.matched,
                "method": self.method, "latency_p95_ratio": self.latency_p95_ratio,
                "deltas": [d.__dict__ for d in self.deltas], "regressions": [s.__dict__ for s in self.regressions],
                "flipped": list(self.flipped), "judge": self.judge.__dict__ if self.judge else None,
                "online": [o.__dict__ for o in self.online]}


@dataclass(frozen=True)
class Gate:
    passed: bool
    reasons: tuple[str, ...]
    comparison: Comparison


METRICS = ("pass_rate", "similarity", "error_rate", "refusal_rate", "output_chars", "judge_score")


def _matrix(t: pa.Table) -> dict[str, np.ndarray]:
    errors = np.array([e is not None for e in t["error"].to_pylist()], dtype=np.float64)
    ok = errors == 0
    refusal = np.array([bool(r) if r is not None else np.nan for r in t["refusal"].to_pylist()], np.float64)
    sim = np.array([s if s is not None else np.nan for s in t["similarity"].to_pylist()], np.float64)
    chars = np.array([c if c is not None else np.nan for c in t["output_chars"].to_pylist()], np.float64)
    lat = np.array([x if x is not None else np.nan for x in t["latency_ms"].to_pylist()], np.float64)
    return {"pass_rate": np.array([bool(p) for p in t["passed"].to_pylist()], np.float64),
            "similarity": sim, "error_rate": errors, "refusal_rate": np.where(ok, refusal, np.nan),
            "output_chars": chars, "latency": np.where(ok, lat, np.nan)}


def _judge_scores(ids: list[str], scores: dict[str, int] | None) -> np.ndarray:
    return np.array([scores.get(i, np.nan) if scores else np.nan for i in ids], np.float64)


def _win_rate(lake: tables.Where, baseline: str, candidate: str, common: list[str],
              draws: int) -> JudgeWinRate | None:
    record = pairwise_between(lake, baseline, candidate)
    if record is None:
        return None
    got = [record.outcomes[i] for i in common if i in record.outcomes]
    judged = np.array([{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in got if o != "failed"])
    low = high = rate = None
    if len(judged):
        rate = float(judged.mean())
        boot = judged[np.random.default_rng(0).integers(0, len(judged), size=(draws, len(judged)))].mean(axis=1)
        low, high = float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
    return JudgeWinRate(record.judge, len(judged), got.count("win"), got.count("loss"), got.count("tie"),
                        got.count("failed"), rate, low, high)


def _mean(x: np.ndarray) -> float | None:
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def compare(lake: tables.Where, baseline: str, candidate: str, settings: EvalSettings) -> Comparison:
    a, b = rows(lake, baseline), rows(lake, candidate)
    for run_id, t in ((baseline, a), (candidate, b)):
        if t.num_rows == 0:
            raise EvalError(f"evaluation run {run_id!r} has no recorded examples (see `flywheel eval list`)",
                            run_id=run_id)
        if not finished(lake, run_id):
            # A killed (or still running) run's examples are whichever were committed first: a gate on them
            # would judge a different, smaller eval set.
            raise EvalError(f"evaluation run {run_id!r} is unfinished ({t.num_rows} examples recorded so far): "
                            "run the same `flywheel eval run` again to resume it, then compare", run_id=run_id)
    ids_a, ids_b = a["example_id"].to_pylist(), b["example_id"].to_pylist()
    common = sorted(set(ids_a) & set(ids_b))
    if not common:
        raise EvalError(f"runs {baseline} and {candidate} share no example: compare runs over the same eval set")
    a = a.take(pa.array([ids_a.index(i) for i in common])) if ids_a != common else a
    b = b.take(pa.array([ids_b.index(i) for i in common])) if ids_b != common else b
    ma, mb = _matrix(a), _matrix(b)
    scores = rubric_scores(lake, baseline, candidate)
    ma["judge_score"] = _judge_scores(common, scores[0] if scores else None)
    mb["judge_score"] = _judge_scores(common, scores[1] if scores else None)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(common), size=(settings.bootstrap, len(common)))
    deltas = []
    for m in METRICS:
        base, cand = _mean(ma[m]), _mean(mb[m])
        if base is None or cand is None:
            deltas.append(Delta(m, base, cand, None, None, None))
            continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no value of a metric: dropped below
            boot = np.nanmean(mb[m][draws], axis=1) - np.nanmean(ma[m][draws], axis=1)
        boot = boot[np.isfinite(boot)]
        low, high = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) else (None, None)
        deltas.append(Delta(m, base, cand, cand - base, low, high))
    la, lb = ma["latency"][np.isfinite(ma["latency"])], mb["latency"][np.isfinite(mb["latency"])]
    ratio = float(np.quantile(lb, 0.95) / np.quantile(la, 0.95)) if len(la) and len(lb) and np.quantile(la, 0.95) > 0 \
        else None
    segments = []
    seg = a["segment"].to_pylist()
    for s in sorted(set(seg)):
        idx = np.array([i for i, x in enumerate(seg) if x == s])
        pa_, pb = float(ma["pass_rate"][idx].mean()), float(mb["pass_rate"][idx].mean())
        if pb < pa_:
            segments.append(Segment(s, len(idx), pa_, pb))
    flipped = tuple(i for i, x, y in zip(common, ma["pass_rate"], mb["pass_rate"]) if x == 1 and y == 0)
    return Comparison(baseline, candidate, len(common), tuple(deltas), ratio,
                      tuple(sorted(segments, key=lambda s: s.candidate_pass_rate - s.baseline_pass_rate)), flipped,
                      f"paired bootstrap, {settings.bootstrap} resamples of the {len(common)} matched examples, "
                      "95% percentile intervals", _win_rate(lake, baseline, candidate, common, settings.bootstrap))


def gate(lake: tables.Where, candidate: str, baseline: str, settings: EvalSettings) -> Gate:
    """The candidate passes unless it is worse than the baseline beyond a tolerance of `settings` (each failure
    is a reason, naming the metric, both values and the tolerance)."""
    c = compare(lake, baseline, candidate, settings)
    reasons = []
    checks = (("similarity", -settings.max_similarity_drop, "mean similarity dropped"),
              ("pass_rate", -settings.max_pass_rate_drop, "pass rate dropped"),
              ("error_rate", settings.max_error_rate_rise, "error rate rose"),
              ("refusal_rate", settings.max_refusal_rate_rise, "refusal rate rose"))
    for metric, tolerance, what in checks:
        d = c.delta(metric)
        if d.delta is None:
            continue
        worse = d.delta < tolerance if tolerance < 0 else d.delta > tolerance
        if worse:
            reasons.append(f"{what}: {d.baseline:.3f} -> {d.candidate:.3f} ({d.delta:+.3f}, tolerance "
                           f"{abs(tolerance):g}; 95% CI {d.low:+.3f}..{d.high:+.3f})")
    if c.latency_p95_ratio is not None and c.latency_p95_ratio > settings.max_latency_p95_ratio:
        reasons.append(f"latency p95 is {c.latency_p95_ratio:.2f}x the baseline's (tolerance "
                       f"{settings.max_latency_p95_ratio:g}x)")
    return Gate(not reasons, tuple(reasons), c)


def markdown(c: Comparison) -> str:
    """The comparison as a Markdown table, for a CI comment."""
    out = [f"**{c.candidate}** vs baseline **{c.baseline}** over {c.matched} examples ({c.method})", "",
           "| metric | baseline | candidate | delta | 95% CI |", "|---|---|---|---|---|"]
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for d in c.deltas:
        if d.metric == "judge_score" and d.baseline is None and d.candidate is None:
            continue  # no rubric judge scored both runs
        ci = "n/a" if d.low is None else f"{d.low:+.3f} .. {d.high:+.3f}"
        out.append(f"| {d.metric} | {f(d.baseline)} | {f(d.candidate)} | "
                   f"{'n/a' if d.delta is None else f'{d.delta:+.3f}'} | {ci} |")
    if c.latency_p95_ratio is not None:
        out.append(f"| latency p95 (ratio) | 1 | {c.latency_p95_ratio:.2f} | | |")
    if c.regressions:
        out += ["", "Segments whose pass rate fell: " + ", ".join(
            f"{s.segment or '(none)'} {s.baseline_pass_rate:.0%} -> {s.candidate_pass_rate:.0%} (n={s.n})"
            for s in c.regressions)]
    if c.flipped:
        out += ["", f"{len(c.flipped)} examples flipped from pass to fail: " + ", ".join(c.flipped[:20])]
    if c.judge is not None:
        j = c.judge
        rate = "n/a" if j.win_rate is None else f"{j.win_rate:.3f} (95% CI {j.low:.3f} .. {j.high:.3f})"
        out += ["", f"LLM judge `{j.judge}` (pairwise, position-swapped: a win needs both orders to agree): "
                    f"candidate judge win rate {rate} over {j.judged} examples: {j.wins} wins, {j.losses} losses, "
                    f"{j.ties} ties, {j.failed} failed judgements"]
    if c.online:
        out += ["", "Online evidence (the lake's feedback on each run's model and prompt version; rates per "
                    "inference, n = inferences counted):", "",
                "| run | model | model version | prompt version | inferences | thumbs-up rate | mean rating "
                "(0-1) | correction rate | flag rate |", "|---|---|---|---|---|---|---|---|---|"]
        for o in c.online:
            out.append(f"| {o.run_id} | {o.model} | {o.model_version or 'any'} | {o.prompt_version or 'any'} | "
                       f"{o.inferences} | {f(o.thumbs_up_rate)} (n={o.thumbs_n}) | {f(o.rating_mean)} "
                       f"(n={o.rating_n}) | {f(o.correction_rate)} (n={o.inferences}) | {f(o.flag_rate)} "
                       f"(n={o.inferences}) |")
    return "\n".join(out)


def to_json(c: Comparison) -> str:
    return json.dumps(c.to_dict(), default=str)

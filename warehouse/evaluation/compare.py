"""Comparing two evaluation runs over the same examples, and the gate a release pipeline can block on.

Deltas are candidate minus baseline over the examples both runs recorded (matched by example id). Confidence
intervals are 95% paired bootstrap intervals (`EvalSettings.bootstrap` resamples of the matched examples, seed 0):
each resample draws examples with replacement and recomputes both runs' metric on the same draw. Rates and
similarity are means over the examples they apply to (`runs.summarize` says which); output length and cost are
compared at their p50 and p95 as well (`runs.percentile`, the summary's method), latency p95 as a ratio.
Per-segment regressions are the segments whose pass rate fell; *flipped* examples passed in the baseline and fail
in the candidate, and likewise per metric for exact match and JSON validity (an example the candidate failed to
answer counts as lost).
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
from flywheel.warehouse.evaluation.runs import EvalError, finished, percentile, rows
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
    flipped_exact_match: tuple[str, ...] = ()
    """Example ids whose answer matched the reference exactly in the baseline and does not in the candidate."""
    flipped_json_valid: tuple[str, ...] = ()
    """Example ids whose answer was valid JSON in the baseline and is not in the candidate (JSON expected)."""

    def delta(self, metric: str) -> Delta:
        return next(d for d in self.deltas if d.metric == metric)

    def to_dict(self) -> dict[str, object]:
        return {"baseline": self.baseline, "candidate": self.candidate, "matched": self.matched,
                "method": self.method, "latency_p95_ratio": self.latency_p95_ratio,
                "deltas": [d.__dict__ for d in self.deltas], "regressions": [s.__dict__ for s in self.regressions],
                "flipped": list(self.flipped), "flipped_exact_match": list(self.flipped_exact_match),
                "flipped_json_valid": list(self.flipped_json_valid),
                "judge": self.judge.__dict__ if self.judge else None, "online": [o.__dict__ for o in self.online]}


@dataclass(frozen=True)
class Gate:
    passed: bool
    reasons: tuple[str, ...]
    comparison: Comparison


METRICS = ("pass_rate", "similarity", "exact_match_rate", "json_valid_rate", "error_rate", "refusal_rate",
           "output_chars", "output_chars_p50", "output_chars_p95", "cost_usd_p50", "cost_usd_p95", "judge_score")
_QUANTILES = {"output_chars_p50": ("output_chars", 0.5), "output_chars_p95": ("output_chars", 0.95),
              "cost_usd_p50": ("cost_usd", 0.5), "cost_usd_p95": ("cost_usd", 0.95)}
"""Metrics compared at a quantile of a column of `_matrix` rather than its mean."""
_FLIPS = ("exact_match_rate", "json_valid_rate")


def _column(t: pa.Table, name: str) -> np.ndarray:
    """A column as floats (booleans as 0/1), NaN where it is null: where the metric does not apply."""
    return np.array([float(v) if v is not None else np.nan for v in t[name].to_pylist()], np.float64)


def _matrix(t: pa.Table) -> dict[str, np.ndarray]:
    errors = np.array([e is not None for e in t["error"].to_pylist()], dtype=np.float64)
    ok = errors == 0
    lat = _column(t, "latency_ms")
    return {"pass_rate": np.array([bool(p) for p in t["passed"].to_pylist()], np.float64),
            "similarity": _column(t, "similarity"), "exact_match_rate": np.where(ok, _column(t, "exact_match"), np.nan),
            "json_valid_rate": np.where(ok, _column(t, "json_valid"), np.nan), "error_rate": errors,
            "refusal_rate": np.where(ok, _column(t, "refusal"), np.nan), "output_chars": _column(t, "output_chars"),
            "cost_usd": _column(t, "cost_usd"), "latency": np.where(ok, lat, np.nan)}


def _point(x: np.ndarray, q: float | None) -> float | None:
    """The mean of `x`, or its `q` quantile, over the values it has (None without one)."""
    if q is None:
        return _mean(x)
    return percentile([float(v) for v in x[np.isfinite(x)]], q)


def _lost(base: np.ndarray, cand: np.ndarray, cand_errors: np.ndarray) -> np.ndarray:
    """Where the baseline had the property (1) and the candidate has not (0), or did not answer at all."""
    return (base == 1) & ((cand == 0) | ((cand_errors == 1) & np.isnan(cand)))


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
        col, q = _QUANTILES.get(m, (m, None))
        xa, xb = ma[col], mb[col]
        base, cand = _point(xa, q), _point(xb, q)
        if base is None or cand is None:
            deltas.append(Delta(m, base, cand, None, None, None))
            continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no value of a metric: dropped below
            if q is None:
                boot = np.nanmean(xb[draws], axis=1) - np.nanmean(xa[draws], axis=1)
            else:  # the same interpolation as `percentile`
                boot = np.nanquantile(xb[draws], q, axis=1) - np.nanquantile(xa[draws], q, axis=1)
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
    lost = {m: tuple(i for i, f in zip(common, _lost(ma[m], mb[m], mb["error_rate"])) if f) for m in _FLIPS}
    return Comparison(baseline, candidate, len(common), tuple(deltas), ratio,
                      tuple(sorted(segments, key=lambda s: s.candidate_pass_rate - s.baseline_pass_rate)), flipped,
                      f"paired bootstrap, {settings.bootstrap} resamples of the {len(common)} matched examples, "
                      "95% percentile intervals", _win_rate(lake, baseline, candidate, common, settings.bootstrap),
                      flipped_exact_match=lost["exact_match_rate"], flipped_json_valid=lost["json_valid_rate"])


def gate(lake: tables.Where, candidate: str, baseline: str, settings: EvalSettings) -> Gate:
    """The candidate passes unless it is worse than the baseline beyond a tolerance of `settings` (each failure
    is a reason, naming the metric, both values and the tolerance)."""
    c = compare(lake, baseline, candidate, settings)
    reasons = []
    checks = (("similarity", -settings.max_similarity_drop, "mean similarity dropped"),
              ("pass_rate", -settings.max_pass_rate_drop, "pass rate dropped"),
              ("error_rate", settings.max_error_rate_rise, "error rate rose"),
              ("refusal_rate", settings.max_refusal_rate_rise, "refusal rate rose"),
              ("exact_match_rate", -settings.max_exact_match_drop, "exact-match rate dropped"),
              ("json_valid_rate", -settings.max_json_valid_drop, "valid JSON rate dropped"))
    for metric, tolerance, what in checks:
        d = c.delta(metric)
        if d.delta is None:
            continue
        # a drop's tolerance is negative (0.0 for "any drop" is -0.0: `d.delta < -0.0` is a drop)
        worse = d.delta < tolerance if what.endswith("dropped") else d.delta > tolerance
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
        if d.baseline is None and d.candidate is None:
            if d.metric == "json_valid_rate":
                out.append(f"| {d.metric} | not applicable | not applicable | | |")  # neither expects JSON
            continue  # e.g. no rubric judge scored both runs, or an unpriced target has no cost
        ci = "n/a" if d.low is None else f"{d.low:+.3f} .. {d.high:+.3f}"
        out.append(f"| {d.metric} | {f(d.baseline)} | {f(d.candidate)} | "
                   f"{'n/a' if d.delta is None else f'{d.delta:+.3f}'} | {ci} |")
    if c.latency_p95_ratio is not None:
        out.append(f"| latency p95 (ratio) | 1 | {c.latency_p95_ratio:.2f} | | |")
    if c.regressions:
        out += ["", "Segments whose pass rate fell: " + ", ".join(
            f"{s.segment or '(none)'} {s.baseline_pass_rate:.0%} -> {s.candidate_pass_rate:.0%} (n={s.n})"
            for s in c.regressions)]
    for ids, what in ((c.flipped, "from pass to fail"), (c.flipped_exact_match, "from an exact match to none"),
                      (c.flipped_json_valid, "from valid to invalid JSON")):
        if ids:
            out += ["", f"{len(ids)} examples flipped {what}: " + ", ".join(ids[:20])]
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

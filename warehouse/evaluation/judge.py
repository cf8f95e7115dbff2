"""An optional LLM judge of a finished run, through the same endpoint interface (a target, the same bounded,
retrying client) as the run itself, recorded per example in the `eval_judgements` lake table.

Two modes:
- `pairwise`: each answer of the run is judged against the baseline run's answer to the same example. Every pair
  is asked in both orders, (candidate, baseline) as (A, B) and then (baseline, candidate), and the candidate
  *wins* only when both orders prefer it, *loses* only when both prefer the baseline, and ties otherwise: a judge
  that favours a position (LLM judges often prefer the first answer) disagrees with itself and yields ties, never
  wins. An example with a failed judgement in either order is *failed*, not a tie.
- `rubric`: each answer is scored 1-5 against a rubric (one answer, so there is no order to swap); runs scored by
  the same judge and rubric compare as a paired delta of their mean scores.

Guarantees: every judgement asked ends recorded, with the verdict or the error that prevented one (an endpoint
failure, or an answer with no parseable verdict: never a crash); judgements are committed in batches
(`EvalSettings.save_every`) and a judgement already recorded for (run, judge, example, order) is never asked again,
so a killed or repeated judging resumes. The judge's key goes only into the request header.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from flywheel.errors import FlywheelError
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.client import ChatClient, ChatRequest, Completion, RetryPolicy
from flywheel.warehouse.evaluation.runs import TS, record_completions, rows
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target

TABLE = "eval_judgements"
MODES = ("pairwise", "rubric")
SCORE_MIN, SCORE_MAX = 1, 5
DEFAULT_RUBRIC = "Is the answer correct, complete and helpful for the request, without padding or invented facts?"
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("judge_key", pa.string()), ("recorded_at", TS), ("mode", pa.string()),
    ("judge", pa.string()), ("judge_model", pa.string()), ("against_run", pa.string()), ("rubric", pa.string()),
    ("example_id", pa.string()), ("order", pa.string()), ("output", pa.string()), ("verdict", pa.string()),
    ("score", pa.int32()), ("error", pa.string()), ("latency_ms", pa.float64()),
])
"""`eval_judgements`: one row per judgement asked. `order` is `ab` (this run's answer shown as A), `ba` (shown as
B) or `score` (rubric); `verdict` is A, B or tie as the judge wrote it (pairwise), `score` 1-5 (rubric); `error`
says why there is neither."""

PAIRWISE_PROMPT = """You are an impartial judge. Compare two answers to the same user request.
{rubric}

[User request]
{prompt}

[Answer A]
{a}

[Answer B]
{b}

Which answer is better? Give a short reason, then end with a final line that is exactly "Verdict: A",
"Verdict: B" or "Verdict: tie"."""

RUBRIC_PROMPT = """You are an impartial judge. Score the answer to the user request against the rubric, from
{lo} (worst) to {hi} (best).

[Rubric]
{rubric}

[User request]
{prompt}

[Answer]
{answer}

Give a short reason, then end with a final line that is exactly "Score: N" with N from {lo} to {hi}."""


class JudgeError(FlywheelError):
    """Judging could not start (an unknown mode, a pairwise judge without a baseline run); also `run_id`."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.run_id = run_id


class JudgeVerdictError(ValueError):
    """A judge's answer holds no verdict (or score) that can be read; recorded as the judgement's error."""


@dataclass(frozen=True)
class JudgeSpec:
    target: Target
    """The judge: an OpenAI-compatible endpoint, like any evaluation target (often a stronger model)."""
    mode: str = "pairwise"
    """`pairwise` (against `baseline_run`'s answers, both orders) or `rubric` (a 1-5 score per answer)."""
    rubric: str = DEFAULT_RUBRIC
    """What the judge is told to value (both modes)."""
    baseline_run: str | None = None
    """Pairwise only: the run whose answers the judged run's answers are compared with."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise JudgeError(f"judge mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "pairwise" and not self.baseline_run:
            raise JudgeError("a pairwise judge compares against a baseline run: name it (--judge-baseline RUN)")

    def key(self) -> str:
        """What identifies these judgements (judge target without its key, mode, rubric, baseline), for resuming."""
        spec = {"target": self.target.describe(), "mode": self.mode, "rubric": self.rubric,
                "against": self.baseline_run if self.mode == "pairwise" else None}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Judgement:
    example_id: str
    order: str
    verdict: str | None
    score: int | None
    error: str | None


@dataclass(frozen=True)
class JudgeResult:
    run_id: str
    judge_key: str
    mode: str
    asked: int
    """Judgements asked in this call (the others were recorded before it)."""
    judged: int
    """Examples with a complete judgement (pairwise: both orders answered; rubric: a score)."""
    failed: int
    wins: int
    losses: int
    ties: int
    mean_score: float | None


_VERDICT = re.compile(r"verdict\s*[:=]\s*[*_\[\"'`\s]*(A|B|tie)\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)
_SCORE = re.compile(r"score\s*[:=]\s*[*_\s]*(\d+)(?:\s*/\s*\d+)?", re.IGNORECASE)


def parse_verdict(text: str) -> str:
    """`A`, `B` or `tie` from a judge's answer: its last `Verdict: X` (judges reason first, then conclude), else a
    last `[[X]]`, else an answer that is only the verdict. Raises `JudgeVerdictError` otherwise."""
    found = _VERDICT.findall(text) or _BRACKETED.findall(text)
    if not found and text.strip().strip(".*").lower() in ("a", "b", "tie"):
        found = [text.strip().strip(".*")]
    if not found:
        raise JudgeVerdictError(f"no verdict in the judge's answer (wanted a final 'Verdict: A|B|tie'): "
                                f"{_short(text)!r}")
    v = found[-1]
    return "tie" if v.lower() == "tie" else v.upper()


def parse_rubric(text: str) -> int:
    """The 1-5 score of a judge's answer (its last `Score: N`, `N/5` allowed). Raises `JudgeVerdictError`."""
    found = _SCORE.findall(text)
    if not found or not SCORE_MIN <= int(found[-1]) <= SCORE_MAX:
        raise JudgeVerdictError(f"no verdict in the judge's answer (wanted a final 'Score: N', N from {SCORE_MIN} "
                                f"to {SCORE_MAX}): {_short(text)!r}")
    return int(found[-1])


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class _Ask:
    example_id: str
    order: str
    request: ChatRequest


def _asks(lake: tables.Where, run_id: str, spec: JudgeSpec) -> list[_Ask]:
    """Every judgement the spec calls for over the run's answered examples (pairwise: those both runs answered)."""
    mine = {r["example_id"]: r for r in rows(lake, run_id).to_pylist() if r["output"] is not None}
    if not mine:
        raise JudgeError(f"evaluation run {run_id!r} has no answered example to judge (see `flywheel eval list`)",
                         run_id=run_id)
    out = []
    if spec.mode == "rubric":
        for eid, r in mine.items():
            text = RUBRIC_PROMPT.format(lo=SCORE_MIN, hi=SCORE_MAX, rubric=spec.rubric, prompt=r["prompt"],
                                        answer=r["output"])
            out.append(_Ask(eid, "score", ChatRequest((("user", text),))))
        return out
    assert spec.baseline_run is not None
    theirs = {r["example_id"]: r["output"] for r in rows(lake, spec.baseline_run).to_pylist()
              if r["output"] is not None}
    if not theirs:
        raise JudgeError(f"baseline run {spec.baseline_run!r} has no answered example to judge against",
                         run_id=spec.baseline_run)
    for eid in sorted(set(mine) & set(theirs)):
        r = mine[eid]
        for order, a, b in (("ab", r["output"], theirs[eid]), ("ba", theirs[eid], r["output"])):
            text = PAIRWISE_PROMPT.format(rubric=spec.rubric, prompt=r["prompt"], a=a, b=b)
            out.append(_Ask(eid, order, ChatRequest((("user", text),))))
    return out


def judge_run(lake: tables.Where, run_id: str, spec: JudgeSpec, key: Secret, settings: EvalSettings,
              progress: Callable[[int, int], None] | None = None) -> JudgeResult:
    """Ask the judge every judgement of `run_id` not recorded yet, record each, and return the totals."""
    jkey = spec.key()
    asks = _asks(lake, run_id, spec)
    done = {(j.example_id, j.order) for j in judgements(lake, run_id, jkey)}
    todo = [a for a in asks if (a.example_id, a.order) not in done]
    client = ChatClient(spec.target, key, settings.concurrency, RetryPolicy(attempts=settings.attempts))
    record_completions(lake, TABLE, SCHEMA, client, [a.request for a in todo],
                       lambda i, c: _row(run_id, jkey, spec, todo[i], c), settings.save_every, progress,
                       len(asks) - len(todo), len(asks))
    return _totals(run_id, jkey, spec.mode, judgements(lake, run_id, jkey), len(todo))


def _row(run_id: str, jkey: str, spec: JudgeSpec, ask: _Ask, c: Completion) -> dict[str, object]:
    verdict: str | None = None
    score: int | None = None
    error = c.error
    if c.output is not None:
        try:
            if spec.mode == "rubric":
                score = parse_rubric(c.output)
            else:
                verdict = parse_verdict(c.output)
        except JudgeVerdictError as exc:
            error = str(exc)
    return {"run_id": run_id, "judge_key": jkey, "recorded_at": datetime.now(timezone.utc), "mode": spec.mode,
            "judge": spec.target.name, "judge_model": spec.target.model,
            "against_run": spec.baseline_run if spec.mode == "pairwise" else None, "rubric": spec.rubric,
            "example_id": ask.example_id, "order": ask.order, "output": c.output, "verdict": verdict,
            "score": score, "error": error, "latency_ms": c.latency_ms}


def judgements(lake: tables.Where, run_id: str, judge_key: str) -> list[Judgement]:
    """The recorded judgements of a run by one judge (first recorded per example and order), by example."""
    t = tables.query(lake, TABLE, """
        SELECT example_id, "order", verdict, score, error FROM t WHERE run_id = $r AND judge_key = $k
        QUALIFY row_number() OVER (PARTITION BY example_id, "order" ORDER BY recorded_at) = 1
        ORDER BY example_id, "order" """, {"r": run_id, "k": judge_key}, empty=SCHEMA)
    return [Judgement(**r) for r in t.to_pylist()]


def outcomes(found: list[Judgement]) -> dict[str, str]:
    """Pairwise: example id -> `win`, `loss`, `tie` or `failed` of the judged run, from both orders."""
    by: dict[str, dict[str, Judgement]] = {}
    for j in found:
        by.setdefault(j.example_id, {})[j.order] = j
    out = {}
    for eid, orders in by.items():
        ab, ba = orders.get("ab"), orders.get("ba")
        if ab is None or ba is None or ab.verdict is None or ba.verdict is None:
            out[eid] = "failed"
            continue
        # In `ab` the judged run's answer is A; in `ba` it is B.
        mine = (ab.verdict == "A", ba.verdict == "B")
        theirs = (ab.verdict == "B", ba.verdict == "A")
        out[eid] = "win" if all(mine) else "loss" if all(theirs) else "tie"
    return out


def _totals(run_id: str, jkey: str, mode: str, found: list[Judgement], asked: int) -> JudgeResult:
    if mode == "rubric":
        scores = [j.score for j in found if j.score is not None]
        return JudgeResult(run_id, jkey, mode, asked, len(scores), len(found) - len(scores), 0, 0, 0,
                           sum(scores) / len(scores) if scores else None)
    kinds = list(outcomes(found).values())
    failed = kinds.count("failed")
    return JudgeResult(run_id, jkey, mode, asked, len(kinds) - failed, failed, kinds.count("win"), kinds.count("loss"),
                       kinds.count("tie"), None)


@dataclass(frozen=True)
class PairwiseRecord:
    """The pairwise judgements between two runs, whichever of them was judged against the other."""

    judge: str
    judge_key: str
    outcomes: dict[str, str]
    """Example id -> win, loss, tie or failed *of the candidate*."""


def pairwise_between(lake: tables.Where, baseline: str, candidate: str) -> PairwiseRecord | None:
    """The latest pairwise judging of `candidate` against `baseline` (or of `baseline` against `candidate`, with
    wins and losses swapped), or None when neither was judged against the other."""
    t = tables.query(lake, TABLE, """
        SELECT run_id, judge_key, any_value(judge) AS judge FROM t
        WHERE mode = 'pairwise' AND ((run_id = $c AND against_run = $b) OR (run_id = $b AND against_run = $c))
        GROUP BY run_id, judge_key ORDER BY max(recorded_at) DESC LIMIT 1""",
                     {"b": baseline, "c": candidate}, empty=SCHEMA)
    if t.num_rows == 0:
        return None
    run_id, jkey, judge = (t[c][0].as_py() for c in ("run_id", "judge_key", "judge"))
    got = outcomes(judgements(lake, run_id, jkey))
    if run_id != candidate:
        swap = {"win": "loss", "loss": "win"}
        got = {e: swap.get(o, o) for e, o in got.items()}
    return PairwiseRecord(str(judge), str(jkey), got)


def rubric_scores(lake: tables.Where, baseline: str, candidate: str) -> tuple[dict[str, int], dict[str, int]] | None:
    """Example id -> score of each run, by the latest judge and rubric that scored both runs (None if none did)."""
    t = tables.query(lake, TABLE, """
        SELECT judge_key FROM t WHERE mode = 'rubric' AND run_id IN ($b, $c) GROUP BY judge_key
        HAVING count(DISTINCT run_id) = 2 ORDER BY max(recorded_at) DESC LIMIT 1""",
                     {"b": baseline, "c": candidate}, empty=SCHEMA)
    if t.num_rows == 0:
        return None
    jkey = str(t["judge_key"][0].as_py())
    def scores(run: str) -> dict[str, int]:
        return {j.example_id: j.score for j in judgements(lake, run, jkey) if j.score is not None}

    return scores(baseline), scores(candidate)

"""Offline metrics of one answer against its example, each a pure function; what each measures:

- `similarity`: chrF (character n-gram F-score, n = 1..6, beta = 2, as sacrebleu's chrF defines it, on text with
  whitespace collapsed) between the answer and the example's reference, in [0, 1]; None without a reference (a
  reference exists where a human corrected an answer).
- `exact_match`: the answer equals the reference after collapsing whitespace and case (for short, closed answers);
  None without a reference. Summarized as `exact_match_rate` over the answered examples with a reference.
- `json_valid`: the answer parses as a JSON object or array; only where the eval set expects JSON (its recipe's
  `eval.output_format: json`), None (not applicable) otherwise, so a prose eval set is not reported as 0% valid
  JSON. Summarized as `json_valid_rate` over the answered examples.
- `refusal`: the answer starts like a refusal (the drift stage's refusal descriptor, first 200 characters).
- `output_chars`: the answer's length in characters (mean, p50 and p95 per run; cost per example likewise).
An example *passes* when the call succeeded, the answer is not a refusal, (on an eval set that expects JSON) it is
valid JSON, and (with a reference) its similarity is at least the pass threshold.

With an LLM judge (`judge`, optional; `eval_judgements` holds every verdict):
- `judge win rate` (pairwise): the share of examples where the judge preferred the candidate's answer to the
  baseline run's, ties counted half, over the examples judged in both orders; a win or a loss needs the judge to
  agree with itself when the two answers are swapped, anything else is a tie, so 0.5 is "no difference" and a
  judge that always prefers one position yields 0.5, not a win. Shown with wins, losses, ties, failed judgements
  and a 95% bootstrap interval.
- `judge_score` (rubric): the judge's 1-5 score of each answer against the rubric, compared as the paired mean of
  two runs scored by the same judge and rubric.
A judge answer without a readable verdict (`Verdict: A|B|tie`, `Score: N`) is a failed judgement with its error,
left out of both.

Online evidence (`online`, shown by `eval compare` next to these): for the run's model, model version and prompt
version, the lake's thumbs-up rate, mean rating (scaled to [0, 1]), correction rate and flag rate, each per
inference and with its sample size.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from flywheel.warehouse.drift.descriptors import REFUSAL_PREFIX_CHARS, REFUSAL_RE

_REFUSAL = re.compile(REFUSAL_RE)
CHRF_ORDER = 6
CHRF_BETA = 2.0


@dataclass(frozen=True)
class Scores:
    similarity: float | None
    exact_match: bool | None
    json_valid: bool | None
    refusal: bool
    output_chars: int


def _norm(text: str) -> str:
    return " ".join(text.split())


def chrf(hypothesis: str, reference: str, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """chrF in [0, 1]: the mean over n = 1..order of character n-gram precision and recall, combined as F-beta
    (sacrebleu's definition, whitespace removed before counting n-grams)."""
    hyp, ref = hypothesis.replace(" ", ""), reference.replace(" ", "")
    precisions, recalls = [], []
    for n in range(1, order + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        common = sum((h & r).values())
        precisions.append(common / sum(h.values()))
        recalls.append(common / sum(r.values()))
    if not precisions:
        return 1.0 if hyp == ref else 0.0
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text[:REFUSAL_PREFIX_CHARS].lower()))


def is_json(text: str) -> bool:
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


OUTPUT_FORMATS = ("text", "json")
"""What an eval set expects its answers to be (`Example.output_format`; the recipe's `eval.output_format`)."""


def score(output: str, reference: str | None, output_format: str = "text") -> Scores:
    """The scores of one answer; `json_valid` only when `output_format` is `json` (None otherwise)."""
    sim = chrf(_norm(output), _norm(reference)) if reference else None
    exact = _norm(output).lower() == _norm(reference).lower() if reference else None
    return Scores(sim, exact, is_json(output) if output_format == "json" else None, is_refusal(output), len(output))


def passes(ok: bool, scores: Scores | None, threshold: float) -> bool:
    if not ok or scores is None or scores.refusal or scores.json_valid is False:
        return False
    return scores.similarity is None or scores.similarity >= threshold

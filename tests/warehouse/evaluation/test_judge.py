"""The LLM judge against the provider double answering judge prompts with PandaLM's recorded human verdicts: two
recorded answers to the same request (PandaLM's response1 and response2) judged pairwise in both orders, so a
position-biased judge yields ties, not wins; rubric scores; malformed verdicts recorded as failed judgements; a
judged run is never judged twice; and compare shows the win rate with its interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.infra.testing.corpus import load_corpus
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.compare import compare, markdown
from flywheel.warehouse.evaluation.judge import (JudgeSpec, JudgeVerdictError, judge_run, judgements,
                                                 parse_rubric, parse_verdict)
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target

SETTINGS = EvalSettings(concurrency=8, attempts=2, save_every=25, bootstrap=500)


def _pairs() -> list[dict[str, object]]:
    """PandaLM pairs the double can tell apart: one pair per request, neither answer inside the other."""
    seen: set[str] = set()
    out = []
    for p in load_corpus().pairs:
        a, b = " ".join(str(p["a"]).split()), " ".join(str(p["b"]).split())
        if not a or not b or a in b or b in a or p["prompt"] in seen:
            continue
        seen.add(str(p["prompt"]))
        out.append(p)
    return out


def _runs(lake: Path, provider: RecordedProvider, pairs: list[dict[str, object]]) -> tuple[str, str]:
    examples = [Example(f"p{i}", (("user", str(p["prompt"])),)) for i, p in enumerate(pairs)]
    base = run_eval(lake, "panda@1", examples, Target("r1", provider.url, "panda-response1"), Secret(""), SETTINGS)
    cand = run_eval(lake, "panda@1", examples, Target("r2", provider.url, "panda-response2"), Secret(""), SETTINGS)
    assert base.failed == cand.failed == 0
    return base.run_id, cand.run_id


def _provider(pairs: list[dict[str, object]]) -> RecordedProvider:
    records = ([{"model": "panda-response1", "prompt": str(p["prompt"]), "output": str(p["a"])} for p in pairs]
               + [{"model": "panda-response2", "prompt": str(p["prompt"]), "output": str(p["b"])} for p in pairs])
    provider = RecordedProvider.from_records(records)
    provider.add_judge("judge-human", pairs)
    provider.add_judge("judge-first", pairs, bias="first")
    provider.add_judge("judge-rambling", pairs, garbled=True)
    return provider


def test_the_verdict_parser_takes_the_final_verdict_and_refuses_anything_else() -> None:
    assert parse_verdict("A is terse; B answers fully.\nVerdict: B") == "B"
    assert parse_verdict("Verdict: **a**") == "A" and parse_verdict("[[B]]") == "B" and parse_verdict(" tie ") == "tie"
    assert parse_verdict("At first: Verdict: A. On reflection...\nVerdict: tie") == "tie"
    for bad in ("Both answers have merits.", "", "Verdict: C", "A or B, hard to say"):
        with pytest.raises(JudgeVerdictError):
            parse_verdict(bad)
    assert parse_rubric("Clear and correct.\nScore: 4") == 4 and parse_rubric("Score: 5/5") == 5
    for bad in ("Score: 9", "good", "Score: three"):
        with pytest.raises(JudgeVerdictError):
            parse_rubric(bad)


def test_pairwise_judge_agrees_with_the_human_verdicts_and_compare_shows_the_win_rate(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    pairs = _pairs()[:40]
    with _provider(pairs) as provider:
        base, cand = _runs(lake, provider, pairs)
        sent = len(provider.requests)
        spec = JudgeSpec(Target("judge", provider.url, "judge-human"), "pairwise", baseline_run=base)
        result = judge_run(lake, cand, spec, Secret(""), SETTINGS)
        assert len(provider.requests) - sent == 2 * len(pairs)  # each pair asked in both orders
        # Resumed (or re-run): every verdict is recorded, so nothing is asked again.
        again = judge_run(lake, cand, spec, Secret(""), SETTINGS)
        assert again.asked == 0 and len(provider.requests) - sent == 2 * len(pairs)
        assert (again.wins, again.losses, again.ties) == (result.wins, result.losses, result.ties)
    # The candidate answered PandaLM's response2: it wins where the annotators' majority preferred response2.
    want = (sum(p["preference"] == -1 for p in pairs), sum(p["preference"] == 1 for p in pairs),
            sum(p["preference"] == 0 for p in pairs))
    assert (result.wins, result.losses, result.ties, result.failed) == (*want, 0)
    assert result.asked == 2 * len(pairs) and want[0] > 0 and want[1] > 0

    c = compare(lake, base, cand, SETTINGS)
    assert c.judge is not None and c.judge.judged == len(pairs)
    assert c.judge.win_rate == pytest.approx((want[0] + want[2] / 2) / len(pairs))
    assert 0 <= c.judge.low <= c.judge.win_rate <= c.judge.high <= 1 and c.judge.low < c.judge.high
    assert "judge win rate" in markdown(c) and "position-swapped" in markdown(c)
    # Seen from the other side, the same verdicts: the baseline's win rate is the complement.
    flipped = compare(lake, cand, base, SETTINGS)
    assert flipped.judge is not None and flipped.judge.win_rate == pytest.approx(1 - c.judge.win_rate)


def test_a_position_biased_judge_yields_ties_and_a_garbled_one_failed_judgements(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    pairs = _pairs()[:12]
    with _provider(pairs) as provider:
        base, cand = _runs(lake, provider, pairs)
        biased = judge_run(lake, cand, JudgeSpec(Target("j", provider.url, "judge-first"), "pairwise",
                                                 baseline_run=base), Secret(""), SETTINGS)
        garbled = judge_run(lake, cand, JudgeSpec(Target("g", provider.url, "judge-rambling"), "pairwise",
                                                  baseline_run=base), Secret(""), SETTINGS)
    # Asked once with the candidate first, this judge would have handed it every pair ...
    first = [j for j in judgements(lake, cand, biased.judge_key) if j.order == "ab"]
    assert len(first) == len(pairs) and {j.verdict for j in first} == {"A"}
    # ... asked in both orders, it never agrees with itself: ties, no wins, no losses.
    assert (biased.wins, biased.losses, biased.ties, biased.failed) == (0, 0, len(pairs), 0)
    # No verdict in the answer: a failed judgement with its error, never a crash nor a tie.
    assert (garbled.wins, garbled.losses, garbled.ties, garbled.failed) == (0, 0, 0, len(pairs))
    errors = [j.error for j in judgements(lake, cand, garbled.judge_key)]
    assert len(errors) == 2 * len(pairs) and all(e and "no verdict" in e for e in errors)


def test_rubric_scores_follow_the_human_preference_and_compare_as_a_paired_delta(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    pairs = _pairs()[:20]
    with _provider(pairs) as provider:
        base, cand = _runs(lake, provider, pairs)
        spec = JudgeSpec(Target("judge", provider.url, "judge-human"), "rubric", rubric="Is it correct and helpful?")
        rb = judge_run(lake, base, spec, Secret(""), SETTINGS)
        rc = judge_run(lake, cand, spec, Secret(""), SETTINGS)
    assert rb.asked == rc.asked == len(pairs) and rb.failed == rc.failed == 0
    # The double scores the preferred answer 5, the other 1, both 3 on a tie: an independent expectation.
    score_a = {1: 5, -1: 1, 0: 3}
    want_b = sum(score_a[int(p["preference"])] for p in pairs) / len(pairs)
    want_c = sum(6 - score_a[int(p["preference"])] for p in pairs) / len(pairs)
    assert rb.mean_score == pytest.approx(want_b) and rc.mean_score == pytest.approx(want_c)
    d = compare(lake, base, cand, SETTINGS).delta("judge_score")
    assert d.baseline == pytest.approx(want_b) and d.delta == pytest.approx(want_c - want_b)
    assert d.low is not None and d.low <= d.delta <= d.high


def test_judging_killed_midway_resumes_without_asking_a_pair_twice(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    pairs = _pairs()[:12]
    batched = EvalSettings(concurrency=2, attempts=2, save_every=5, bootstrap=100)

    class Killed(Exception):
        pass

    def kill_at_13(done: int, _total: int) -> None:
        if done == 13:
            raise Killed  # as a SIGKILL would: the batch in memory is lost, the committed ones stay

    with _provider(pairs) as provider:
        base, cand = _runs(lake, provider, pairs)
        spec = JudgeSpec(Target("judge", provider.url, "judge-human"), "pairwise", baseline_run=base)
        with pytest.raises(Killed):
            judge_run(lake, cand, spec, Secret(""), batched, progress=kill_at_13)
        saved = len(judgements(lake, cand, spec.key()))
        assert saved == 10  # two batches of five committed; the three after them were lost
        resumed = judge_run(lake, cand, spec, Secret(""), batched)
    assert resumed.asked == 2 * len(pairs) - saved
    raw = tables.query(lake, "eval_judgements", "SELECT example_id, \"order\", count(*) AS n FROM t "
                       "GROUP BY ALL HAVING n > 1")
    assert raw.num_rows == 0 and len(judgements(lake, cand, spec.key())) == 2 * len(pairs)
    assert resumed.judged == len(pairs) and resumed.failed == 0

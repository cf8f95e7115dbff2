"""Exact match, JSON validity, and the p50/p95 of output length and cost as first-class metrics: in each run's
summary, compared between runs with paired intervals, and in the flipped examples; checked against DuckDB's own
computation over the stored `eval_runs` files.

Two recorded versions answer an eval set of short structured answers (a JSON object per question): the baseline
gives the reference for every question; the candidate rewords some (still JSON, no longer an exact match), answers
some in prose (not JSON either), and never answered one (the endpoint's 404: a failed example)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.compare import compare, markdown, to_json
from flywheel.warehouse.evaluation.runs import TABLE, Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target

SETTINGS = EvalSettings(concurrency=4, attempts=2, save_every=4, bootstrap=400)
N = 12
PROSE = {"q03", "q07"}
"""The candidate answers these in prose: neither JSON nor an exact match."""
REWORDED = {"q01", "q05", "q09"}
"""The candidate answers these with other JSON: valid, not an exact match."""
UNANSWERED = "q11"
"""The candidate has no recorded answer here: the endpoint answers 404 and the example fails."""


def _reference(i: int) -> str:
    return json.dumps({"order": 1000 + i, "status": ["shipped", "pending", "refunded"][i % 3]})


def _candidate(qid: str, i: int) -> str:
    if qid in PROSE:
        return f"Order {1000 + i} is {['shipped', 'pending', 'refunded'][i % 3]}, as far as I can tell."
    if qid in REWORDED:
        return json.dumps({"order": 1000 + i, "status": "unknown", "note": "checked the warehouse records twice"})
    return _reference(i)


def _examples(output_format: str) -> list[Example]:
    return [Example(f"q{i:02d}", (("user", f"Status of order {1000 + i} as JSON {{order, status}}?"),),
                    _reference(i), f"seg{i % 2}", output_format) for i in range(N)]


def _runs(lake: Path, output_format: str) -> tuple[str, str]:
    examples = _examples(output_format)
    records = ([{"model": "base", "prompt": e.prompt, "output": str(e.reference)} for e in examples]
               + [{"model": "cand", "prompt": e.prompt, "output": _candidate(e.example_id, i)}
                  for i, e in enumerate(examples) if e.example_id != UNANSWERED])
    prices = {"price_per_1k_input_usd": 0.5, "price_per_1k_output_usd": 1.5}
    with RecordedProvider.from_records(records) as p:
        base = run_eval(lake, f"orders-{output_format}@1", examples, Target("base", p.url, "base", **prices),
                        Secret(""), SETTINGS)
        cand = run_eval(lake, f"orders-{output_format}@1", examples, Target("cand", p.url, "cand", **prices),
                        Secret(""), SETTINGS)
    assert (base.failed, cand.failed) == (0, 1)
    return base.run_id, cand.run_id


def _duckdb(lake: Path, run_id: str) -> dict[str, float | None]:
    """The same numbers, computed by DuckDB from the stored files (not by the code under test)."""
    files = ", ".join(f"'{f}'" for f in tables.files(lake, TABLE))
    row = duckdb.connect().execute(f"""
        SELECT avg(exact_match::INT) FILTER (WHERE error IS NULL AND exact_match IS NOT NULL),
               avg(json_valid::INT) FILTER (WHERE error IS NULL AND json_valid IS NOT NULL),
               quantile_cont(output_chars, 0.5), quantile_cont(output_chars, 0.95),
               quantile_cont(cost_usd, 0.5), quantile_cont(cost_usd, 0.95)
        FROM read_parquet([{files}]) WHERE row_kind = 'example' AND run_id = ?""", [run_id]).fetchone()
    assert row is not None
    keys = ("exact_match_rate", "json_valid_rate", "output_chars_p50", "output_chars_p95", "cost_usd_p50",
            "cost_usd_p95")
    return dict(zip(keys, row))


def test_json_eval_set_summarizes_compares_and_flips_exact_match_and_json_validity(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    base, cand = _runs(lake, "json")
    summaries = {r: json.loads(tables.query(lake, TABLE, "SELECT summary FROM t WHERE run_id = $r AND "
                                            "row_kind = 'summary'", {"r": r})["summary"][0].as_py())
                 for r in (base, cand)}
    answered = N - 1
    assert summaries[base]["exact_match_rate"] == 1.0 and summaries[base]["json_valid_rate"] == 1.0
    assert summaries[cand]["exact_match_rate"] == pytest.approx((answered - len(PROSE) - len(REWORDED)) / answered)
    assert summaries[cand]["json_valid_rate"] == pytest.approx((answered - len(PROSE)) / answered)
    for run_id in (base, cand):
        direct = _duckdb(lake, run_id)
        for key, value in direct.items():
            assert summaries[run_id][key] == pytest.approx(value), (run_id, key)
        assert direct["cost_usd_p95"] is not None and direct["cost_usd_p95"] > 0

    c = compare(lake, base, cand, SETTINGS)
    # Deltas over the matched examples (all twelve here) equal the difference of the independent numbers.
    db, dc = _duckdb(lake, base), _duckdb(lake, cand)
    for metric in ("exact_match_rate", "json_valid_rate", "output_chars_p50", "output_chars_p95", "cost_usd_p50",
                   "cost_usd_p95"):
        d = c.delta(metric)
        assert (d.baseline, d.candidate) == (pytest.approx(db[metric]), pytest.approx(dc[metric])), metric
        assert d.delta == pytest.approx(dc[metric] - db[metric]), metric
        assert d.low is not None and d.high is not None and d.low <= d.delta + 1e-12 and d.delta - 1e-12 <= d.high
    # 2 prose answers of 11: a resample may miss both, so the JSON interval's top can be 0
    assert c.delta("exact_match_rate").high < 0 and c.delta("json_valid_rate").high <= 0
    # Flips: what the baseline had and the candidate lost, the unanswered example included.
    assert set(c.flipped_exact_match) == PROSE | REWORDED | {UNANSWERED}
    assert set(c.flipped_json_valid) == PROSE | {UNANSWERED}
    out = json.loads(to_json(c))
    assert set(out["flipped_json_valid"]) == PROSE | {UNANSWERED}
    md = markdown(c)
    assert "| exact_match_rate | 1.000 |" in md and "| output_chars_p95 |" in md and "| cost_usd_p50 |" in md
    assert "3 examples flipped from valid to invalid JSON" in md
    assert f"{len(PROSE | REWORDED) + 1} examples flipped from an exact match to none" in md


def test_a_text_eval_set_reports_json_validity_as_not_applicable_not_as_zero(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    base, cand = _runs(lake, "text")
    got = tables.query(lake, TABLE, "SELECT count(*) AS n FROM t WHERE row_kind = 'example' AND json_valid "
                       "IS NOT NULL")
    assert got["n"][0].as_py() == 0
    summary = json.loads(tables.query(lake, TABLE, "SELECT summary FROM t WHERE run_id = $r AND row_kind = "
                                      "'summary'", {"r": cand})["summary"][0].as_py())
    assert summary["json_valid_rate"] is None and summary["exact_match_rate"] is not None
    c = compare(lake, base, cand, SETTINGS)
    d = c.delta("json_valid_rate")
    assert (d.baseline, d.candidate, d.delta) == (None, None, None)
    assert c.flipped_json_valid == () and set(c.flipped_exact_match) == PROSE | REWORDED | {UNANSWERED}
    assert "| json_valid_rate | not applicable | not applicable |" in markdown(c)


def test_an_unknown_output_format_is_refused() -> None:
    with pytest.raises(ValueError, match="output_format 'xml' is not one of text, json"):
        Example("e1", (("user", "hi"),), output_format="xml")


def test_on_a_json_set_an_invalid_json_answer_fails_and_the_gate_blocks_a_validity_drop(tmp_path: Path) -> None:
    """A truncated object is nearly the reference (its similarity passes) but is no JSON: it fails only where the
    eval set expects JSON, and the gate names the drop in valid JSON (and in exact matches) there."""
    from flywheel.warehouse.evaluation.compare import gate

    lake = tmp_path / "lake"
    verdicts = {}
    for fmt in ("json", "text"):
        examples = _examples(fmt)
        records = ([{"model": "base", "prompt": e.prompt, "output": str(e.reference)} for e in examples]
                   + [{"model": "cut", "prompt": e.prompt, "output": str(e.reference)[:-1]} for e in examples])
        with RecordedProvider.from_records(records) as p:
            base = run_eval(lake, f"cut-{fmt}@1", examples, Target("base", p.url, "base"), Secret(""), SETTINGS)
            cut = run_eval(lake, f"cut-{fmt}@1", examples, Target("cut", p.url, "cut"), Secret(""), SETTINGS)
        rows = tables.query(lake, TABLE, "SELECT passed, similarity FROM t WHERE run_id = $r AND row_kind = "
                            "'example'", {"r": cut.run_id}).to_pylist()
        assert len(rows) == N and all(r["similarity"] >= SETTINGS.pass_threshold for r in rows)
        assert all(r["passed"] is (fmt == "text") for r in rows), fmt
        verdicts[fmt] = gate(lake, cut.run_id, base.run_id, SETTINGS)
    json_reasons = " ".join(verdicts["json"].reasons)
    assert not verdicts["json"].passed and "valid JSON rate dropped: 1.000 -> 0.000" in json_reasons
    assert "exact-match rate dropped: 1.000 -> 0.000" in json_reasons and "pass rate dropped" in json_reasons
    assert not any("JSON" in r for r in verdicts["text"].reasons)
    assert any("exact-match rate dropped" in r for r in verdicts["text"].reasons)
    # the exact-match check can be turned off, for sets of long answers (latency: one double serves both)
    loose = EvalSettings(concurrency=4, bootstrap=400, max_exact_match_drop=1.0, max_similarity_drop=1.0,
                         max_latency_p95_ratio=1000)
    assert gate(lake, cut.run_id, base.run_id, loose).passed

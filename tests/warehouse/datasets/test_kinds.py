"""Each kind built from events derived from real data, sent through the embedded broker and landed: exact rows,
chosen and rejected, counts per step, split isolation, decontamination, PII never in any byte written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flywheel.config import Settings
from flywheel.warehouse.datasets import DatasetSettings, curate, load
from flywheel.warehouse.datasets.recipes import Recipe, parse_recipe

from .conftest import PII, Scenario

pytestmark = pytest.mark.broker


def recipe(name: str, kind: str, **over: Any) -> Recipe:
    data: dict[str, Any] = {"name": name, "kind": kind, **over}
    return parse_recipe(data, path=f"<test {name}>")


EVAL = {"source": {"app": ["ops-eval"]}, "eval": {"stratify_by": "app", "per_stratum": 10, "failure_share": 0.5},
        "exports": ["jsonl", "hf"]}
ALL = {"sft": ["openai_chat", "trl", "hf", "jsonl"], "preference": ["openai_dpo", "trl", "hf", "jsonl"],
       "kto": ["trl", "hf", "jsonl"]}


def build(lake: Settings, ds: DatasetSettings, kind: str, **over: Any) -> tuple[Any, list[dict[str, Any]]]:
    curate(lake, ds, recipe("ops-eval", "eval", **EVAL))
    res = curate(lake, ds, recipe(f"t-{kind}", kind, exports=ALL[kind], **over))
    out = []
    for split, _n in res.splits:
        out += [{**r, "split": split} for r in load(f"t-{kind}@{res.version}", split, settings=lake, ds=ds).to_pylist()]
    return res, out


def steps(res: Any) -> dict[str, tuple[int, int, dict[str, int]]]:
    return {s.step: (s.rows_in, s.rows_out, dict(s.reasons)) for s in res.steps}


def test_sft_rows_are_corrections_and_liked_answers_minus_what_each_step_removes(
        lake: Settings, ds: DatasetSettings, scenario: Scenario) -> None:
    res, rows = build(lake, ds, "sft", splits={"by": "session_id", "fractions": {"train": 0.6, "test": 0.4}})
    got = {r["inference_ids"][0]: r for r in rows}
    assert set(got) == scenario.sft and len(rows) == len(scenario.sft)
    for iid, completion in scenario.sft_completion.items():
        assert got[iid]["completion"] == completion, iid
    assert got["c-0"]["origin"] == "correction" and got["c-0"]["feedback_ids"] != []
    assert got["k-0"]["messages"][0]["role"] == "user"  # chat input kept as a conversation
    st = steps(res)
    assert st["flags"][2] == {"the kept answer's inference was flagged": 1}  # f-flagged
    assert st["exact_dedupe"][2] == {"same normalized text as an earlier row": 1}  # dup-exact
    assert st["near_dedupe"][2] == {"at least 0.9 similar (MinHash) to an earlier row": 1}  # dup-near
    assert st["decontaminate"][2] == {"prompt equals an eval prompt": 1,  # s-same
                                      "prompt at least 0.8 similar to an eval prompt": 1}  # s-near
    assert st["pii"][2]["email replaced by [EMAIL] (rows x columns)"] >= 2
    # Disagreement: the expert's thumbs down beats a later user thumbs up; between users the latest wins.
    assert "d-expert" not in got and "d-latest" in got
    pii = got["p-pii"]
    assert "[EMAIL]" in pii["prompt"] and "[PHONE]" in pii["prompt"]
    assert all(p in pii["completion"] for p in ("[CREDIT_CARD]", "[IP_ADDRESS]", "[SECRET]", "[EMAIL]"))
    _isolated(rows)


def _isolated(rows: list[dict[str, Any]]) -> None:
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["group_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {r["split"] for r in rows} == {"train", "test"}


def test_preference_pairs_come_from_corrections_explicit_preferences_and_opposite_feedback(
        lake: Settings, ds: DatasetSettings, scenario: Scenario) -> None:
    res, rows = build(lake, ds, "preference", splits={"by": "prompt", "fractions": {"train": 0.7, "test": 0.3}})
    got = {}
    for r in rows:
        ids = r["inference_ids"]
        got[(ids[0], ids[1] if len(ids) > 1 else ids[0])] = r["origin"]
    assert got == scenario.pairs
    by = {tuple(r["inference_ids"]): r for r in rows}
    for (win, lose), origin in scenario.pairs.items():
        r = by[(win,) if win == lose else (win, lose)]
        if origin == "correction":
            assert r["rejected"] == scenario.texts[win]["output"]
        else:
            assert r["chosen"] == scenario.texts[win]["output"] and r["rejected"] == scenario.texts[lose]["output"]
    reasons = steps(res)["select"][2]
    assert reasons["tie"] == 2 and reasons["different prompt"] == 1  # PandaLM ties; x-a vs x-b
    _isolated(rows)


def test_kto_labels_single_outputs_and_keeps_cross_prompt_preferences(
        lake: Settings, ds: DatasetSettings, scenario: Scenario) -> None:
    res, rows = build(lake, ds, "kto")
    got = {(r["inference_ids"][0], r["label"]): r["origin"] for r in rows}
    assert got == scenario.kto
    assert len(rows) == len(scenario.kto)
    corrected = [r for r in rows if r["inference_ids"] == ["c-0"] and r["label"]]
    assert corrected[0]["completion"] == scenario.sft_completion["c-0"]


def test_eval_keeps_failures_and_references(lake: Settings, ds: DatasetSettings, scenario: Scenario) -> None:
    res = curate(lake, ds, recipe("ops-eval", "eval", **EVAL))
    rows = load("ops-eval", "test", settings=lake, ds=ds).to_pylist()
    assert {r["inference_ids"][0] for r in rows} == scenario.eval_ids
    assert {r["inference_ids"][0] for r in rows if r["failure"]} == scenario.failures
    assert {r["stratum"] for r in rows} == {"ops-eval"} and res.splits == (("test", 2),)
    small = curate(lake, ds, recipe("ops-eval-1", "eval", **{**EVAL, "eval": {"per_stratum": 1,
                                                                              "failure_share": 1.0}}))
    one = load("ops-eval-1", "test", settings=lake, ds=ds).to_pylist()
    assert small.splits == (("test", 1),) and one[0]["inference_ids"] == ["e-fail"]  # the failure is kept


def test_planted_pii_is_in_no_byte_of_any_file_written(lake: Settings, ds: DatasetSettings, tmp_path: Path) -> None:
    from flywheel.warehouse.datasets import pull

    for kind in ("sft", "preference", "kto"):
        build(lake, ds, kind)
    for fmt, ref in (("openai_chat", "t-sft"), ("openai_dpo", "t-preference"), ("trl", "t-kto"),
                     ("parquet", "t-sft"), ("hf", "t-preference"), ("jsonl", "t-kto")):
        pull(ref, fmt, tmp_path / "pulled" / f"{ref}-{fmt}", settings=lake, ds=ds)
    files = [p for p in [*(Path(lake.lake) / "datasets").rglob("*"), *(tmp_path / "pulled").rglob("*")]
             if p.is_file() and "_delta_log" not in p.parts]
    assert len(files) > 40
    needles = [v.encode() for v in PII.values()] + [v.replace(" ", "").encode() for v in PII.values()]
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".parquet":  # compressed: check the decoded values too
            import pyarrow.parquet as pq

            data += pq.read_table(path).to_pandas().to_json().encode()
        for needle in needles:
            assert needle not in data, (path, needle)

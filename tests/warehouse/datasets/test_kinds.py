"""Each kind built from events derived from real data, sent through the embedded broker and landed: exact rows,
chosen and rejected, counts per step, split isolation, decontamination, PII never in any byte written; a recipe's
strings reach curation's SQL only as bound parameters or through a whitelist of names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import Settings
from flywheel.warehouse.datasets import CurationError, DatasetSettings, curate, load, load_recipe
from flywheel.warehouse.datasets.kinds import _source_filter
from flywheel.warehouse.datasets.recipes import Recipe, RecipeError, parse_recipe
from flywheel.warehouse.query import connect

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


def test_an_eval_sets_output_format_is_in_its_manifest_and_a_new_format_is_a_new_version(
        lake: Settings, ds: DatasetSettings) -> None:
    json_eval = {**EVAL, "eval": {**EVAL["eval"], "output_format": "json"}}
    text = curate(lake, ds, recipe("ops-eval", "eval", **EVAL))
    as_json = curate(lake, ds, recipe("ops-eval", "eval", **json_eval))
    # Same rows, but scored differently: a new version, whose manifest keeps the format and says why it exists.
    assert as_json.created and as_json.version == text.version + 1 and as_json.content_hash != text.content_hash
    manifest = json.loads((as_json.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"]["eval"]["output_format"] == "json" and "recipe changed" in manifest["reason"]
    old = json.loads((text.path / "manifest.json").read_text(encoding="utf-8"))
    assert old["recipe"]["eval"]["output_format"] == "text"
    again = curate(lake, ds, recipe("ops-eval", "eval", **json_eval))
    assert not again.created and again.version == as_json.version


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


# ---------------------------------------------------------------------------------------------- hostile values
RECIPES = Path(__file__).resolve().parents[3] / "infra" / "recipes"
HOSTILE = ("' OR 1=1 --", "x'); DROP TABLE inferences; --", '"; DROP TABLE inferences; --', "\\' OR ''='",
           "support-bot' UNION SELECT * FROM feedback --")


def test_hostile_filter_values_are_bound_never_written_into_the_sql() -> None:
    recipe = parse_recipe({"name": "h", "kind": "sft", "source": {
        "app": list(HOSTILE), "model": [HOSTILE[0]], "model_version": [HOSTILE[1]],
        "prompt_template": [HOSTILE[2]], "prompt_version": [HOSTILE[3]],
        "since": "2026-01-01T00:00:00Z", "until": "2027-01-01T00:00:00Z"}, "splits": {"seed": HOSTILE[0]}})
    sql, params = _source_filter(recipe)
    for value in HOSTILE:
        assert value not in sql and value.replace("'", "''") not in sql, sql
    assert set(params["app"]) == set(HOSTILE) and params["since"] == recipe.source.since


def test_a_recipe_filtering_on_hostile_values_matches_nothing_and_changes_nothing(
        lake: Settings, ds: DatasetSettings, tmp_path: Path) -> None:
    con = connect(lake)
    n = con.execute("SELECT count(*) FROM inferences").fetchone()
    con.close()
    for value in HOSTILE:
        recipe = tmp_path / "h.yaml"
        recipe.write_text(f"name: h\nkind: sft\nsource: {{app: [{json.dumps(value)}]}}\n")
        with pytest.raises(CurationError, match="the window has no inferences"):
            curate(lake, ds, load_recipe(recipe))
    con = connect(lake)
    assert con.execute("SELECT count(*) FROM inferences").fetchone() == n  # nothing dropped, nothing added
    con.close()
    # A quote in the split seed and in an allowed value is data: the curation of real rows still works.
    sft = (RECIPES / "support-sft.yaml").read_text().replace("by: session_id", "by: session_id\n  seed: \"it's\"")
    sft = sft.replace("app: [support-bot, writing-assistant]", "app: [support-bot, writing-assistant, \"o'brien\"]")
    sft = sft.replace("accept_signals: [accept, copy]", "accept_signals: [accept, copy, \"' OR 1=1 --\"]")
    assert sft.count("o'brien") == sft.count("' OR 1=1") == sft.count("it's") == 1
    path = tmp_path / "sft.yaml"
    path.write_text(sft)
    res = curate(lake, ds, load_recipe(path))
    assert load(f"support-sft@{res.version}", "train", settings=lake, ds=ds).num_rows > 0


@pytest.mark.parametrize("value", ["a'", "train; DROP", "Train", "x y"])
def test_split_names_reach_sql_only_through_the_name_whitelist(value: str) -> None:
    with pytest.raises(RecipeError, match="is not a dataset name"):
        parse_recipe({"name": "h", "kind": "sft", "splits": {"fractions": {value: 1.0}}})


# The content hash of every kind over the scenario, pinned: a change to how curation computes its rows (a faster
# join, another near-duplicate pass) must give the same rows, splits and ids, so the same version for the same lake.
# Only a deliberate change of what a dataset holds may change these, and its commit says so.
PINNED = {"ops-eval": "bef07c5df8d0d97e5e198e9c51c64722f6a6ea377ca51aeb7aef99b5ac232a0d",
          "t-sft": "fbd633b40c18616f423d665a71cf96bfe1f2e6e582f3f1a3129ffb8f71edb955",
          "t-preference": "81a2e9d6aa046ced20d731659fcdc197d2a50ae9ba09b82f0882c74651800a59",
          "t-kto": "e59d4a62c089ed572910dfb90745d080aba8460d180b182a95c47a45e23c0623",
          "support-sft": "a8e573f2ffb7d71a6c551bb4ce3c2e4ea441234c28177714832023121944d62e",
          "answers-preference": "7f4493ead2486e8f7f3084139c5998ceea027285393e75f5568425e2fa7b88e4"}


def test_the_content_hash_of_every_kind_over_the_same_lake_is_pinned(lake: Settings, ds: DatasetSettings) -> None:
    got = {}
    for kind in ("sft", "preference", "kto"):
        res, _rows = build(lake, ds, kind)  # builds ops-eval first, so sft, preference and kto are decontaminated
        got[res.name] = res.content_hash
    got["ops-eval"] = curate(lake, ds, recipe("ops-eval", "eval", **EVAL)).content_hash
    for name in ("support-sft", "answers-preference"):
        got[name] = curate(lake, ds, load_recipe(RECIPES / f"{name}.yaml")).content_hash
    assert got == PINNED


def test_two_landed_copies_with_the_same_coordinates_give_the_rows_of_one(
        tmp_path: Path, scenario: Scenario, ds: DatasetSettings) -> None:
    # The texts are grouped as they are read by the coordinates of the copy the view keeps; two copies with the
    # same coordinates (a commit replayed by hand) must neither count an inference twice nor lose it.
    from flywheel.infra.testing.land import land
    from flywheel.warehouse.lake import Lake

    from .conftest import T0

    hashes = []
    for copies in (1, 2):
        s = Settings(home=tmp_path / f"copies-{copies}")
        for _ in range(copies):
            land(Lake(s.lake), scenario.events, ingested_at=T0)
        got = {}
        for name in ("support-sft", "answers-preference"):
            res = curate(s, DatasetSettings(root=str(s.home / "datasets")), load_recipe(RECIPES / f"{name}.yaml"))
            got[name] = (res.content_hash, [(r.step, r.rows_in, r.rows_out) for r in res.steps])
        hashes.append(got)
    assert hashes[0] == hashes[1]
    assert all(steps[0][2] > 0 for _, steps in hashes[0].values())

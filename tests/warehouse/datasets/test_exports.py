"""Exports validate against their documented formats; the HF directory loads with the real `datasets` package;
`pull` writes only inside --out and refuses a non-empty directory unless forced."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from flywheel.config import Settings
from flywheel.warehouse.datasets import DatasetSettings, curate, load, pull, to_hf
from flywheel.warehouse.datasets.api import PullError
from flywheel.warehouse.datasets.exports import JSON_SCHEMAS, ExportError
from flywheel.warehouse.datasets.recipes import parse_recipe

pytestmark = pytest.mark.broker

FORMATS = {"sft": ["openai_chat", "trl", "hf", "jsonl"], "preference": ["openai_dpo", "trl", "hf", "jsonl"],
           "kto": ["trl", "hf", "jsonl"]}


@pytest.fixture
def built(lake: Settings, ds: DatasetSettings) -> Settings:
    for kind, formats in FORMATS.items():
        curate(lake, ds, parse_recipe({"name": f"x-{kind}", "kind": kind, "exports": formats,
                                       "splits": {"fractions": {"train": 0.7, "test": 0.3}}}))
    return lake


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_exports_validate_against_the_documented_formats(built: Settings, ds: DatasetSettings) -> None:
    root = Path(built.lake) / "datasets"
    checks = [("x-sft", "openai_chat", "openai_chat"), ("x-sft", "trl", "trl_sft"),
              ("x-preference", "openai_dpo", "openai_dpo"), ("x-preference", "trl", "trl_preference"),
              ("x-kto", "trl", "trl_kto")]
    for name, folder, schema in checks:
        n = 0
        for split in ("train", "test"):
            records = _lines(root / name / "v1" / folder / f"{split}.jsonl")
            assert len(records) == load(name, split, settings=built, ds=ds).num_rows
            for rec in records:
                jsonschema.validate(rec, JSON_SCHEMAS[schema])
            n += len(records)
        assert n > 5, name
    chat = _lines(root / "x-sft" / "v1" / "openai_chat" / "train.jsonl")[0]["messages"]
    assert chat[-1]["role"] == "assistant" and chat[0]["role"] in ("user", "system")  # type: ignore[index]
    kto = _lines(root / "x-kto" / "v1" / "trl" / "train.jsonl")
    assert {r["label"] for r in kto} == {True, False}


def test_the_hf_directory_loads_with_the_datasets_package(built: Settings, ds: DatasetSettings,
                                                           tmp_path: Path) -> None:
    import datasets

    for kind in FORMATS:
        loaded = datasets.load_dataset(str(Path(built.lake) / "datasets" / f"x-{kind}" / "v1" / "hf"),
                                       cache_dir=str(tmp_path / f"cache-{kind}"))
        assert set(loaded) == {"train", "test"}
        for split in ("train", "test"):
            assert loaded[split].num_rows == load(f"x-{kind}", split, settings=built, ds=ds).num_rows
    pref = datasets.load_dataset(str(Path(built.lake) / "datasets" / "x-preference" / "v1" / "hf"),
                                 cache_dir=str(tmp_path / "cache-preference"))["train"]
    assert set(pref.column_names) == {"id", "prompt", "chosen", "rejected"}
    assert pref[0]["chosen"][0]["role"] == "assistant"
    hf = to_hf("x-kto@1", "train", settings=built, ds=ds)
    assert set(hf.column_names) == {"id", "prompt", "completion", "label"}
    assert load("x-sft", "train", settings=built, ds=ds).to_pandas().shape[0] > 0
    # A version exported without `hf` still loads: the directory is built from its data, in a temporary place.
    plain = curate(built, ds, parse_recipe({"name": "x-plain", "kind": "sft"}))
    assert not (plain.path / "hf").exists()
    both = to_hf("x-plain", None, settings=built, ds=ds)
    assert {k: v.num_rows for k, v in both.items()} == {k: n for k, n in plain.splits if n}
    assert set(both["train"].column_names) == {"id", "messages"}


def test_pull_writes_only_inside_out_and_refuses_a_non_empty_directory(
        built: Settings, ds: DatasetSettings, tmp_path: Path) -> None:
    out = tmp_path / "work" / "out"
    written = pull("x-preference", "openai_dpo", out, settings=built, ds=ds)
    assert sorted(map(str, written)) == ["README.md", "manifest.json", "openai_dpo/test.jsonl",
                                         "openai_dpo/train.jsonl"]
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "work").rglob("*") if p.is_file()) == \
        sorted(f"work/out/{w}" for w in written)  # nothing outside --out, no staging left behind
    with pytest.raises(PullError, match="is not empty") as err:
        pull("x-preference", "trl", out, settings=built, ds=ds)
    assert err.value.out == str(out)
    (out / "mine.txt").write_text("keep me")
    again = pull("x-preference", "trl", out, force=True, settings=built, ds=ds)
    assert (out / "mine.txt").read_text() == "keep me" and (out / "trl" / "train.jsonl").is_file()
    assert "trl/train.jsonl" in map(str, again)
    # A format the version was not exported in is built from its data; one that does not fit the kind is refused.
    pull("x-kto", "parquet", tmp_path / "kto", settings=built, ds=ds)
    assert (tmp_path / "kto" / "data" / "train.parquet").is_file()
    with pytest.raises(ExportError, match="does not fit a kto dataset"):
        pull("x-kto", "openai_dpo", tmp_path / "kto-dpo", settings=built, ds=ds)
    assert not (tmp_path / "kto-dpo").exists()

"""Versions never change: an unchanged rebuild writes nothing, new feedback makes a version that says why, a
killed curation leaves nothing visible and its re-run gives the same version, bad input changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.testing.land import land
from flywheel.warehouse.datasets import (
    CurationError,
    DatasetNotFound,
    DatasetSettings,
    Registry,
    curate,
    diff,
    load,
    load_recipe,
)
from flywheel.warehouse.datasets.recipes import RecipeError
from flywheel.warehouse.lake import Lake

from .conftest import Scenario

pytestmark = pytest.mark.broker
RECIPES = Path(__file__).resolve().parents[3] / "infra" / "recipes"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_unchanged_rebuild_writes_nothing_and_new_feedback_makes_a_version_that_says_why(
        lake: Settings, ds: DatasetSettings, scenario: Scenario) -> None:
    recipe = load_recipe(RECIPES / "support-sft.yaml")
    first = curate(lake, ds, recipe)
    assert first.created and first.version == 1 and first.reason == "first version"
    before = _tree(Path(lake.lake) / "datasets")
    again = curate(lake, ds, recipe)
    assert not again.created and again.version == 1 and again.reason.startswith("unchanged")
    assert _tree(Path(lake.lake) / "datasets") == before  # not a byte written, the registry included
    # New feedback: an expert corrects k-4, whose output a user had disliked.
    land(Lake(lake.lake), [{"feedback_id": "fb-new-1", "inference_id": "k-4", "timestamp": "2026-11-20T10:00:00+00:00",
                            "kind": "correction", "correction": "A better answer, written by an expert.",
                            "source": "expert"}], start_offset=10_000)
    second = curate(lake, ds, recipe)
    assert second.created and second.version == 2
    assert "lake changed: feedback" in second.reason and "+1 -0" in second.reason
    manifest = json.loads((second.path / "manifest.json").read_text())
    assert manifest["reason"] == second.reason and manifest["version"] == 2
    assert manifest["lake_versions"]["feedback"] == first_lake_version(first) + 1
    assert manifest["recipe_sha256"] == recipe.sha256 and manifest["recipe"]["name"] == "support-sft"
    assert sum(manifest["splits"].values()) == manifest["rows"]
    assert [s["step"] for s in manifest["steps"]][:3] == ["select", "quality_gate", "flags"]
    from flywheel.warehouse.datasets.registry import sha256_file

    for rel, meta in manifest["files"].items():
        assert sha256_file(second.path / rel) == meta["sha256"]
    changes = {d.split: (len(d.added), len(d.removed)) for d in diff("support-sft@1", "support-sft@2",
                                                                      settings=lake, ds=ds)}
    assert sum(a for a, _ in changes.values()) == 1 and sum(r for _, r in changes.values()) == 0
    added = [r for s, _ in second.splits for r in load("support-sft@2", s, settings=lake, ds=ds).to_pylist()
             if r["inference_ids"] == ["k-4"]]
    assert added[0]["completion"] == "A better answer, written by an expert."
    assert added[0]["feedback_ids"] == ["fb-new-1"]
    assert [v.version for v in Registry(lake, ds).versions("support-sft")] == [1, 2]
    assert (first.path / "manifest.json").read_bytes() == before["support-sft/v1/manifest.json"]  # v1 untouched


def first_lake_version(res: object) -> int:
    return int(json.loads((res.path / "manifest.json").read_text())["lake_versions"]["feedback"])  # type: ignore[attr-defined]


_CHILD = """
import sys
from pathlib import Path
from flywheel.config import Settings
from flywheel.warehouse.datasets import DatasetSettings, curate, load_recipe
curate(Settings(home=Path(sys.argv[1])), DatasetSettings(), load_recipe(sys.argv[2]))
"""


def test_a_curation_killed_midway_leaves_no_version_and_its_rerun_gives_the_same_one(
        lake: Settings, ds: DatasetSettings, tmp_path: Path) -> None:
    recipe_path = RECIPES / "support-sft.yaml"
    base = Path(lake.lake) / "datasets" / "support-sft"
    killed_at = None
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(lake.home), str(recipe_path)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if base.is_dir() and any(".tmp-" in p.name for p in base.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = [p.name for p in base.iterdir()]
                break
            time.sleep(0.002)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), "the curation failed by itself"
        if killed_at:
            break
        # It finished before we caught it writing: drop the version and try again.
        import shutil

        shutil.rmtree(Path(lake.lake) / "datasets")
    assert killed_at and proc.returncode == -signal.SIGKILL
    assert Registry(lake, ds).versions() == []
    with pytest.raises(DatasetNotFound):
        load("support-sft", "train", settings=lake, ds=ds)
    rerun = curate(lake, ds, load_recipe(recipe_path))
    assert rerun.created and rerun.version == 1
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) == ["v1"]  # leftovers removed
    # The same version as an uninterrupted run on an identical lake: same content and same data bytes.
    import shutil

    other = Settings(home=tmp_path / "other")
    shutil.copytree(lake.lake, other.lake, ignore=shutil.ignore_patterns("datasets"))
    clean = curate(other, ds, load_recipe(recipe_path))
    assert (clean.version, clean.content_hash) == (rerun.version, rerun.content_hash)
    files = json.loads((rerun.path / "manifest.json").read_text())["files"]
    assert files == json.loads((clean.path / "manifest.json").read_text())["files"]


def test_bad_input_is_a_clear_error_and_changes_nothing(lake: Settings, ds: DatasetSettings, tmp_path: Path) -> None:
    curate(lake, ds, load_recipe(RECIPES / "support-sft.yaml"))
    before = _tree(Path(lake.lake))
    bad = {
        "unknown key": ("name: a\nkind: sft\nstepz: {}\n", "`stepz`: unknown key"),
        "unknown kind": ("name: a\nkind: rlhf\n", "`kind`: 'rlhf' is not one of sft, preference, kto, eval"),
        "unknown format": ("name: a\nkind: sft\nexports: [openai_dpo]\n",
                           "`exports`: 'openai_dpo' is not one of parquet, jsonl, openai_chat, trl, hf"),
        "unknown step key": ("name: a\nkind: sft\nsteps: {near_dedup: 0.9}\n", "`steps.near_dedup`: unknown key"),
        "path in name": ("name: ../../etc\nkind: sft\n", "`name`: '../../etc' is not a dataset name"),
        "fractions": ("name: a\nkind: sft\nsplits: {fractions: {train: 0.9, test: 0.2}}\n", "sum to 1.1"),
        "not yaml": ("name: [a\n", "not valid YAML"),
    }
    for case, (text, message) in bad.items():
        path = tmp_path / f"{case.replace(' ', '-')}.yaml"
        path.write_text(text)
        with pytest.raises(RecipeError) as err:
            load_recipe(path)
        assert str(path) in str(err.value) and message in str(err.value), (case, str(err.value))
        assert err.value.path == str(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\nkind: sft\nsource: {since: 2020-01-01T00:00:00Z, until: 2020-01-02T00:00:00Z}\n")
    with pytest.raises(CurationError, match="the window has no inferences") as cerr:
        curate(lake, ds, load_recipe(empty))
    assert cerr.value.dataset == "empty"
    for ref, message in (("nope", "no dataset named 'nope'"), ("support-sft@7", "support-sft has no version 7"),
                         ("a/b", "is not a dataset name"), ("support-sft@x", "is not a positive whole number")):
        with pytest.raises((DatasetNotFound, RecipeError), match=message):
            load(ref, "train", settings=lake, ds=ds)
    with pytest.raises(DatasetNotFound, match="has no split 'validation'"):
        load("support-sft", "validation", settings=lake, ds=ds)
    assert _tree(Path(lake.lake)) == before

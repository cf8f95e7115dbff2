"""Versions never change: an unchanged rebuild writes nothing, new feedback makes a version that says why, a
killed curation leaves nothing visible and its re-run gives the same version, bad input changes nothing; hostile
names, versions, splits and `pull --out` (traversal, NUL bytes, symlinks in the registry or in --out) are refused
with a reason, and nothing is written outside the directory asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.infra.testing.hostile import NASTY_STRINGS
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
    pull,
    to_hf,
)
from flywheel.warehouse.datasets.recipes import NAME, RecipeError, check_name
from flywheel.warehouse.datasets.registry import parse_ref
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


# ----------------------------------------------------------------------------------------------- hostile paths
TRAVERSAL = ("../x", "..", "a/../b", "/etc/passwd", "a\x00b", "a\n", "a/b", "A", ".hidden", "a" * 65, "²", "a@²",
             "a@v٣", "a@0", "a@-1", "a@1@2", "", " ")


@settings(max_examples=300, deadline=None, database=None)
@given(ref=st.text(max_size=40) | st.sampled_from(TRAVERSAL + NASTY_STRINGS)
       | st.tuples(st.sampled_from(["a", "support-sft"]), st.text(max_size=8)).map("@".join))
def test_a_dataset_reference_is_a_safe_name_and_version_or_a_clear_refusal(ref: str) -> None:
    try:
        name, version = parse_ref(ref)
    except RecipeError as exc:
        assert exc.key == "dataset" and str(exc)
        return
    assert NAME.fullmatch(name) and ".." not in name and Path(name).name == name, name
    assert version is None or (isinstance(version, int) and version >= 1)


@pytest.mark.parametrize("name", ["a\n", "../a", "a/b", "a\x00", "..", "."])
def test_a_name_that_is_not_one_directory_is_refused(name: str) -> None:
    with pytest.raises(RecipeError, match="is not a dataset name"):
        check_name(name)


@pytest.fixture
def published(lake: Settings, ds: DatasetSettings) -> Path:
    return curate(lake, ds, load_recipe(RECIPES / "support-sft.yaml")).path


def _outside(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_splits_and_out_directories_that_leave_their_place_are_refused(
        lake: Settings, ds: DatasetSettings, published: Path, tmp_path: Path) -> None:
    for split in ("../manifest", "/etc/passwd", "train\x00", "../../../../etc/passwd"):
        with pytest.raises(FlywheelError, match="has no split"):
            load("support-sft", split, settings=lake, ds=ds)
    before = _outside(tmp_path)
    for out in (str(tmp_path / "a\x00b"), ""):
        with pytest.raises(FlywheelError, match="--out"):
            pull("support-sft", "jsonl", out, settings=lake, ds=ds)
    assert _outside(tmp_path) == before


def test_a_tampered_manifest_cannot_make_pull_write_outside_out(
        lake: Settings, ds: DatasetSettings, published: Path, tmp_path: Path) -> None:
    manifest = published / "manifest.json"
    doc = json.loads(manifest.read_text())
    for rel in ("openai_chat/../../../../escaped.jsonl", "/tmp/absolute.jsonl"):
        doc["files"][rel] = {"sha256": "0" * 64, "bytes": 3}
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(doc))
    (published / "escaped.jsonl").write_text("{}\n")
    out = tmp_path / "deep" / "out"
    before = _outside(tmp_path)
    with pytest.raises(FlywheelError, match="outside"):
        pull("support-sft", "openai_chat", out, settings=lake, ds=ds)
    assert {p for p in _outside(tmp_path) - before if not p.startswith(str(out))} == set()
    assert not (tmp_path / "escaped.jsonl").exists() and not Path("/tmp/absolute.jsonl").exists()


def test_a_symlink_in_the_registry_is_not_followed_out_of_it(
        lake: Settings, ds: DatasetSettings, published: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the dataset's users\n")
    target = published / "openai_chat" / "train.jsonl"
    target.unlink()
    target.symlink_to(secret)
    out = tmp_path / "out"
    with pytest.raises(FlywheelError, match="outside"):
        pull("support-sft", "openai_chat", out, settings=lake, ds=ds)
    assert not any("not for the dataset" in p.read_text() for p in out.rglob("*") if p.is_file())
    data = published / "data" / "train.parquet"
    data.rename(tmp_path / "moved.parquet")
    data.symlink_to(tmp_path / "moved.parquet")
    with pytest.raises(FlywheelError, match="outside"):
        load("support-sft", "train", settings=lake, ds=ds)
    # the Hugging Face view reads every file of the version's hf/ directory: a link out of it is refused too
    hf = published / "hf"
    hf.mkdir(exist_ok=True)
    (hf / "train.jsonl").unlink(missing_ok=True)
    (hf / "train.jsonl").symlink_to(secret)
    with pytest.raises(FlywheelError, match="outside"):
        to_hf("support-sft", "train", settings=lake, ds=ds)


def test_pull_does_not_follow_a_symlink_in_out_to_elsewhere(
        lake: Settings, ds: DatasetSettings, published: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "openai_chat").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(FlywheelError, match="outside"):
        pull("support-sft", "openai_chat", out, force=True, settings=lake, ds=ds)
    assert list(elsewhere.iterdir()) == []

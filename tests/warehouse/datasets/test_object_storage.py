"""Datasets with the lake on an S3-compatible store (moto's server on 127.0.0.1): a curation writes its version and
registry there, and another host (another FLYWHEEL_HOME, nothing on its disk) lists, loads and pulls it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from flywheel.config import Settings
from flywheel.infra.testing.land import land
from flywheel.warehouse.datasets import DatasetSettings, curate, load, load_recipe, pull
from flywheel.warehouse.datasets.registry import Registry, RegistryError
from flywheel.warehouse.lake import Lake

from .conftest import Scenario

RECIPES = Path(__file__).resolve().parents[3] / "infra" / "recipes"


@pytest.mark.reliability
def test_a_version_curated_on_object_storage_is_read_from_another_host(
        s3_settings: Settings, scenario: Scenario, tmp_path: Path) -> None:
    ds = DatasetSettings()
    land(Lake(s3_settings.lake_location), scenario.events)
    recipe = load_recipe(RECIPES / "support-sft.yaml")
    first = curate(s3_settings, ds, recipe)
    assert first.created and first.version == 1
    # On the store: the version's files and the registry, under <lake>/datasets.
    fs, base = s3_settings.lake_location.filesystem()
    stored = {i.path.removeprefix(f"{base}/datasets/support-sft/v1/")
              for i in fs.get_file_info(pafs.FileSelector(f"{base}/datasets/support-sft/v1", recursive=True))
              if i.type == pafs.FileType.File}
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert set(manifest["files"]) | {"manifest.json", "README.md"} <= stored
    assert curate(s3_settings, ds, recipe).created is False  # unchanged: the registry on the store says so

    other = s3_settings.replace(home=tmp_path / "other-host")  # same lake, an empty disk
    assert not (other.home / "datasets-cache").exists()
    assert [v.version for v in Registry(other, ds).versions("support-sft")] == [1]
    rows = sum(load("support-sft@1", split, settings=other, ds=ds).num_rows for split, _ in first.splits)
    assert rows == manifest["rows"] > 0
    written = pull("support-sft", "trl", tmp_path / "out", settings=other, ds=ds)
    assert Path("manifest.json") in written and (tmp_path / "out" / "manifest.json").read_text() == json.dumps(
        manifest, indent=2) + "\n"

    # A version whose bytes on the store no longer match its manifest is refused, not handed out.
    third = s3_settings.replace(home=tmp_path / "third-host")
    victim = next(iter(manifest["files"]))
    with fs.open_output_stream(f"{base}/datasets/support-sft/v1/{victim}") as fh:
        fh.write(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        load("support-sft@1", "train", settings=third, ds=ds)

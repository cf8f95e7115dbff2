"""Settings of curation and the dataset registry, read from `FLYWHEEL_DATASETS_*` (and `FLYWHEEL_RECIPES_DIR`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from flywheel.config import Settings, env_settings
from flywheel.errors import ConfigError


@dataclass(frozen=True)
class DatasetSettings:
    """Where recipes and dataset versions live, and the near-duplicate detector's parameters."""

    ENV_NAMES: ClassVar[dict[str, str]] = {"recipes_dir": "FLYWHEEL_RECIPES_DIR"}

    recipes_dir: str = ""
    """FLYWHEEL_RECIPES_DIR: the directory of recipe files (`*.yaml`) that `flywheel curate NAME` and `--all`
    read. Default: the bundled examples (infra/recipes)."""

    root: str = ""
    """FLYWHEEL_DATASETS_ROOT: where dataset versions and the registry live, a local path (a URL is refused).
    Default: `$FLYWHEEL_LAKE/datasets`."""

    num_perm: int = 128
    """FLYWHEEL_DATASETS_NUM_PERM: MinHash permutations for near-duplicate removal and decontamination (more is
    more exact and slower)."""

    num_bands: int = 16
    """FLYWHEEL_DATASETS_NUM_BANDS: LSH bands (must divide NUM_PERM); more bands find less similar candidates."""

    seed: int = 42
    """FLYWHEEL_DATASETS_SEED: MinHash seed; changing it may change which near duplicate is kept."""

    memory_limit: str = "1536MB"
    """FLYWHEEL_DATASETS_MEMORY_LIMIT: DuckDB's memory limit for a curation; beyond it, intermediate tables spill to
    a temporary directory under the registry root (DuckDB's size syntax: 1536MB, 4GB)."""

    def __post_init__(self) -> None:
        if "://" in self.root:  # Path() would take `s3://b/datasets` for the local directory `s3:/b/datasets`
            raise ConfigError(f"FLYWHEEL_DATASETS_ROOT={self.root!r} is a URL: dataset versions live on a local path "
                              "today (object storage is not supported yet, see docs/PRODUCTION.md)",
                              variable="FLYWHEEL_DATASETS_ROOT")
        if self.num_perm <= 0 or self.num_bands <= 0 or self.num_perm % self.num_bands:
            raise ConfigError(f"FLYWHEEL_DATASETS_NUM_BANDS={self.num_bands} must divide "
                              f"FLYWHEEL_DATASETS_NUM_PERM={self.num_perm}", variable="FLYWHEEL_DATASETS_NUM_BANDS")

    def root_path(self, core: Settings) -> Path:
        return Path(self.root) if self.root else Path(core.lake) / "datasets"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DatasetSettings:
        return env_settings(cls, "FLYWHEEL_DATASETS_", environ)

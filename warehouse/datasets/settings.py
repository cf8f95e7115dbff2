"""Settings of curation and the dataset registry, read from `FLYWHEEL_DATASETS_*` (and `FLYWHEEL_RECIPES_DIR`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from flywheel.config import Settings, env_settings
from flywheel.durations import DurationError, parse_duration
from flywheel.errors import ConfigError
from flywheel.storage import LakeLocation


@dataclass(frozen=True)
class DatasetSettings:
    """Where recipes and dataset versions live, and the near-duplicate detector's parameters."""

    ENV_NAMES: ClassVar[dict[str, str]] = {"recipes_dir": "FLYWHEEL_RECIPES_DIR"}

    recipes_dir: str = ""
    """FLYWHEEL_RECIPES_DIR: the directory of recipe files (`*.yaml`) that `flywheel curate NAME` and `--all`
    read. Default: the bundled examples (infra/recipes)."""

    root: str = ""
    """FLYWHEEL_DATASETS_ROOT: where dataset versions and the registry live, a local path (a URL is refused).
    Default: `$FLYWHEEL_LAKE/datasets`, on object storage too when the lake is there."""

    num_perm: int = 128
    """FLYWHEEL_DATASETS_NUM_PERM: MinHash permutations for near-duplicate removal and decontamination (more is
    more exact and slower)."""

    num_bands: int = 16
    """FLYWHEEL_DATASETS_NUM_BANDS: LSH bands (must divide NUM_PERM); more bands find less similar candidates."""

    seed: int = 42
    """FLYWHEEL_DATASETS_SEED: MinHash seed; changing it may change which near duplicate is kept."""

    memory_limit: str = ""
    """FLYWHEEL_DATASETS_MEMORY_LIMIT: DuckDB's memory limit for a curation; beyond it, intermediate tables spill to
    a temporary directory under the registry root (DuckDB's size syntax: 1536MB, 4GB). Default: a quarter of the
    machine's memory (or of its cgroup's limit), at most 3GB; the curating process peaks at about this plus 1 GB.
    Spilling is slow (at 1M events a curation took 1.8x as long at 1536MB as at 3GB)."""

    stale_after: str = "2d"
    """FLYWHEEL_DATASETS_STALE_AFTER: `flywheel status` warns when a dataset's newest version is older than this
    (a duration: 36h, 2d, 1w). Default: two days, twice the daily curate schedule. A curation whose content did not
    change writes no version, so a dataset over quiet traffic looks stale too."""

    def __post_init__(self) -> None:
        try:
            parse_duration(self.stale_after)
        except DurationError as exc:
            raise ConfigError(f"FLYWHEEL_DATASETS_STALE_AFTER: {exc}",
                              variable="FLYWHEEL_DATASETS_STALE_AFTER") from exc
        if "://" in self.root:  # Path() would take `s3://b/datasets` for the local directory `s3:/b/datasets`
            raise ConfigError(f"FLYWHEEL_DATASETS_ROOT={self.root!r} is a URL: dataset versions live on a local path "
                              "today (object storage is not supported yet, see docs/PRODUCTION.md)",
                              variable="FLYWHEEL_DATASETS_ROOT")
        if self.num_perm <= 0 or self.num_bands <= 0 or self.num_perm % self.num_bands:
            raise ConfigError(f"FLYWHEEL_DATASETS_NUM_BANDS={self.num_bands} must divide "
                              f"FLYWHEEL_DATASETS_NUM_PERM={self.num_perm}", variable="FLYWHEEL_DATASETS_NUM_BANDS")

    @property
    def stale_bound(self) -> timedelta:
        """`stale_after` as a timedelta."""
        return parse_duration(self.stale_after)

    def duckdb_memory_limit(self) -> str:
        """`memory_limit` as given, or else the default derived from this machine (see the field)."""
        return self.memory_limit or f"{default_memory_limit_mb(machine_memory_bytes())}MB"

    def root_path(self, core: Settings) -> Path:
        """The registry's local directory: the registry itself, or, when it is on object storage
        (`remote_root`), this host's copy of the versions it read or wrote."""
        if self.root:
            return Path(self.root)
        where = core.lake_location
        if where.remote:
            return Path(core.home) / "datasets-cache" / where.uri.removeprefix("s3://").replace("/", "_")
        return Path(core.lake) / "datasets"

    def remote_root(self, core: Settings) -> LakeLocation | None:
        """Where the registry is on object storage (`<lake>/datasets` of an `s3://` lake); None when it is local."""
        where = core.lake_location
        if self.root or not where.remote:
            return None
        return LakeLocation(where.join("datasets"), where.options)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DatasetSettings:
        return env_settings(cls, "FLYWHEEL_DATASETS_", environ)


MAX_DEFAULT_MEMORY_MB = 3072
"""The default limit's ceiling: with it, curating 5M events stays under a 4 GB peak (bench/curate.py)."""


def default_memory_limit_mb(machine_bytes: int) -> int:
    """A quarter of `machine_bytes`, at most `MAX_DEFAULT_MEMORY_MB`, at least 256 MB (DuckDB needs some)."""
    return max(256, min(MAX_DEFAULT_MEMORY_MB, machine_bytes // 4 // 2**20))


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup's (v2, then v1) limit when that is lower: in a container, the machine's
    memory is not what the process may use."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            return min(physical, int(limit))
    return physical

"""Settings of evaluation runs and of the gate, typed and frozen, read from `FLYWHEEL_EVAL_*` variables at an edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import env_settings
from flywheel.errors import ConfigError


@dataclass(frozen=True)
class EvalSettings:
    targets_file: str = ""
    """FLYWHEEL_EVAL_TARGETS_FILE: the YAML file of evaluation targets (`targets: {name: {base_url, model, ...}}`).
    Default: `$FLYWHEEL_HOME/targets.yaml`."""

    concurrency: int = 32
    """FLYWHEEL_EVAL_CONCURRENCY: requests in flight at once per run."""

    attempts: int = 5
    """FLYWHEEL_EVAL_ATTEMPTS: tries per example before it is recorded as failed (429 and 5xx are retried,
    honouring Retry-After)."""

    pass_threshold: float = 0.5
    """FLYWHEEL_EVAL_PASS_THRESHOLD: an example with a reference passes when its similarity (chrF) reaches this."""

    save_every: int = 50
    """FLYWHEEL_EVAL_SAVE_EVERY: results are committed to `eval_runs` in batches of this many, so a killed run
    resumes after the last batch (no example is scored twice)."""

    max_similarity_drop: float = 0.02
    """FLYWHEEL_EVAL_MAX_SIMILARITY_DROP: the gate fails when the candidate's mean similarity is lower than the
    baseline's by more than this ..."""

    max_pass_rate_drop: float = 0.02
    """FLYWHEEL_EVAL_MAX_PASS_RATE_DROP: ... or its pass rate by more than this ..."""

    max_error_rate_rise: float = 0.01
    """FLYWHEEL_EVAL_MAX_ERROR_RATE_RISE: ... or its error rate rises by more than this ..."""

    max_refusal_rate_rise: float = 0.02
    """FLYWHEEL_EVAL_MAX_REFUSAL_RATE_RISE: ... or its refusal rate by more than this ..."""

    max_latency_p95_ratio: float = 1.5
    """FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO: ... or its latency p95 is more than this many times the baseline's."""

    bootstrap: int = 2000
    """FLYWHEEL_EVAL_BOOTSTRAP: resamples of the paired bootstrap behind the comparison's confidence intervals."""

    def targets_path(self, home: Path) -> Path:
        return Path(self.targets_file) if self.targets_file else Path(home) / "targets.yaml"

    def __post_init__(self) -> None:
        for name in ("concurrency", "attempts", "save_every", "bootstrap"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FLYWHEEL_EVAL_{name.upper()} must be positive, got {getattr(self, name)!r}",
                                  variable=f"FLYWHEEL_EVAL_{name.upper()}")
        if not 0 <= self.pass_threshold <= 1:
            raise ConfigError(f"FLYWHEEL_EVAL_PASS_THRESHOLD must lie in [0, 1], got {self.pass_threshold!r}",
                              variable="FLYWHEEL_EVAL_PASS_THRESHOLD")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EvalSettings:
        return env_settings(cls, "FLYWHEEL_EVAL_", environ)

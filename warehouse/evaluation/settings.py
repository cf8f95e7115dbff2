"""Settings of evaluation runs and of the gate, typed and frozen, read from `FLYWHEEL_EVAL_*` variables at an edge."""

from __future__ import annotations

import dataclasses
import math
import os
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
    baseline's by more than this (from 0 to 1, as are the next three) ..."""

    max_pass_rate_drop: float = 0.02
    """FLYWHEEL_EVAL_MAX_PASS_RATE_DROP: ... or its pass rate by more than this ..."""

    max_error_rate_rise: float = 0.01
    """FLYWHEEL_EVAL_MAX_ERROR_RATE_RISE: ... or its error rate rises by more than this ..."""

    max_refusal_rate_rise: float = 0.02
    """FLYWHEEL_EVAL_MAX_REFUSAL_RATE_RISE: ... or its refusal rate by more than this ..."""

    max_exact_match_drop: float = 0.02
    """FLYWHEEL_EVAL_MAX_EXACT_MATCH_DROP: ... or its exact-match rate drops by more than this (1 turns the check
    off, for an eval set of long answers where an exact match means little) ..."""

    max_json_valid_drop: float = 0.0
    """FLYWHEEL_EVAL_MAX_JSON_VALID_DROP: ... or, on an eval set that expects JSON, its rate of valid JSON answers
    drops by more than this (by default any drop) ..."""

    max_latency_p95_ratio: float = 1.5
    """FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO: ... or its latency p95 is more than this many times the baseline's (at
    least 1)."""

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
        for name, (low, high) in _TOLERANCES.items():
            value = getattr(self, name)
            # bool is an int: True as a tolerance is a mistake, not 1
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{_variable(name)}={value!r} is not a number: {_fix(name)}",
                                  variable=_variable(name))
            if not low <= value <= high:
                bound = "negative" if value < low and low == 0 else \
                    f"below {low:g}" if value < low else f"above {high:g}"
                raise ConfigError(f"{_variable(name)}={value!r} is {bound}: {_fix(name)}", variable=_variable(name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EvalSettings:
        env = os.environ if environ is None else environ
        # The generic reader would say only that a value does not parse; for a gate tolerance say what to set
        # (__post_init__ does for a number out of its range).
        for name in _TOLERANCES:
            raw = env.get(_variable(name))
            if raw:
                try:
                    ok = math.isfinite(float(raw))
                except ValueError:
                    ok = False
                if not ok:
                    raise ConfigError(f"{_variable(name)}={raw!r} is not a finite number: {_fix(name)}",
                                      variable=_variable(name))
        return env_settings(cls, "FLYWHEEL_EVAL_", environ)


_TOLERANCES: dict[str, tuple[float, float]] = {
    # A drop or a rise is of a mean or a rate in [0, 1]: a negative one would fail a candidate exactly as good as
    # its baseline, and above 1 no candidate can exceed it (1 turns the check off).
    "max_similarity_drop": (0.0, 1.0), "max_pass_rate_drop": (0.0, 1.0), "max_error_rate_rise": (0.0, 1.0),
    "max_refusal_rate_rise": (0.0, 1.0), "max_exact_match_drop": (0.0, 1.0), "max_json_valid_drop": (0.0, 1.0),
    # A ratio below 1 would fail a candidate exactly as fast as its baseline.
    "max_latency_p95_ratio": (1.0, math.inf),
}
"""The gate's tolerances and the range each must lie in."""


def _variable(name: str) -> str:
    return f"FLYWHEEL_EVAL_{name.upper()}"


def _fix(name: str) -> str:
    low, high = _TOLERANCES[name]
    default = next(f.default for f in dataclasses.fields(EvalSettings) if f.name == name)
    where = f"a number from {low:g} to {high:g}" if math.isfinite(high) else f"a number of at least {low:g}"
    return (f"set it to {where} (how much worse than its baseline the gate lets a candidate be), or unset it for "
            f"the default {default!r}; `flywheel config --stage evaluation` lists the tolerances")

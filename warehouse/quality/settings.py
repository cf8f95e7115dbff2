"""Settings of the quality gates, typed and frozen, read from `FLYWHEEL_QUALITY_*` environment variables.

Same pattern as `flywheel.config.Settings`: `from_env()` is the only reader of the environment, and every field
carries a docstring that `flywheel.config.describe()` turns into help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from flywheel.config import env_settings
from flywheel.errors import ConfigError
from flywheel.schemas.contract import FEEDBACK_KINDS, FEEDBACK_SOURCES
from flywheel.warehouse.query import ORPHAN_HORIZON_HOURS

@dataclass(frozen=True)
class QualitySettings:
    """Thresholds the expectation suites refer to as `${name}`, and where quality runs keep their reports."""

    future_skew_s: float = 300.0
    """FLYWHEEL_QUALITY_FUTURE_SKEW_S: an event may be stamped at most this many seconds after it landed."""

    horizon_days: float = 30.0
    """FLYWHEEL_QUALITY_HORIZON_DAYS: an event may be stamped at most this many days before it landed."""

    max_latency_ms: float = 600_000.0
    """FLYWHEEL_QUALITY_MAX_LATENCY_MS: largest sane `latency_ms`."""

    max_tokens: int = 2_000_000
    """FLYWHEEL_QUALITY_MAX_TOKENS: largest sane `input_tokens` / `output_tokens`."""

    max_cost_usd: float = 100.0
    """FLYWHEEL_QUALITY_MAX_COST_USD: largest sane `cost_usd` of one call."""

    max_empty_or_refusal_share: float = 0.05
    """FLYWHEEL_QUALITY_MAX_EMPTY_OR_REFUSAL_SHARE: largest share of empty or refusal-like outputs in a window."""

    min_known_inference_rate: float = 0.5
    """FLYWHEEL_QUALITY_MIN_KNOWN_INFERENCE_RATE: share of a window's feedback whose inference has landed, below
    which the (warning-level) referential expectation fails."""

    pii_max_share: float = 0.0
    """FLYWHEEL_QUALITY_PII_MAX_SHARE: share of texts with PII of one kind above which the PII expectation (a
    warning: it reports; `flywheel curate` scrubs PII from the datasets it writes) fails."""

    orphan_horizon_hours: float = ORPHAN_HORIZON_HOURS
    """FLYWHEEL_QUALITY_ORPHAN_HORIZON_HOURS: feedback whose inference has not landed this long after the feedback
    did is shown in the `orphan_feedback` view (before that, in `pending_feedback`)."""

    sample_size: int = 20
    """FLYWHEEL_QUALITY_SAMPLE_SIZE: unexpected values kept per expectation in `quality_runs`."""

    suites_dir: str = ""
    """FLYWHEEL_QUALITY_SUITES_DIR: a directory of extra suite files (`*.yaml`) merged into the built-in ones."""

    reports_dir: str = ""
    """FLYWHEEL_QUALITY_REPORTS_DIR: where HTML reports are written. Default: `$FLYWHEEL_HOME/quality`."""

    def __post_init__(self) -> None:
        for name in ("max_empty_or_refusal_share", "min_known_inference_rate", "pii_max_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"FLYWHEEL_QUALITY_{name.upper()} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("future_skew_s", "horizon_days", "orphan_horizon_hours", "sample_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"FLYWHEEL_QUALITY_{name.upper()} must not be negative, got {getattr(self, name)!r}")

    def params(self) -> dict[str, Any]:
        """The values suite files may name as `${name}`: every field, a few derived forms, the contract's sets."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(
            horizon_s=self.horizon_days * 86_400.0,
            min_ingest_lag_s=-self.future_skew_s,
            empty_or_refusal_mostly=1.0 - self.max_empty_or_refusal_share,
            pii_mostly=1.0 - self.pii_max_share,
            feedback_kinds=list(FEEDBACK_KINDS),
            feedback_sources=list(FEEDBACK_SOURCES),
        )
        return values

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "QualitySettings":
        return env_settings(cls, "FLYWHEEL_QUALITY_", environ)

"""Settings of drift detection, typed and frozen, read from `FLYWHEEL_DRIFT_*` environment variables here only.

Same pattern as `flywheel.config.Settings`: `from_env()` is the only reader of the environment and every field has
a docstring (shown by `flywheel.config.describe()`); `flywheel.config.env_settings()` reads them, as it does for
every stage's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Mapping

from flywheel.config import env_settings
from flywheel.durations import DurationError, parse_duration
from flywheel.errors import ConfigError

# Decision rule per descriptor: the effect-size method and the smallest effect that counts as drift.
# wasserstein: W1 distance / std of the reference (Evidently's default for numbers, same 0.1 threshold);
# psi: population stability index on reference deciles; js: Jensen-Shannon distance (base 2) of categories;
# prop_diff: absolute difference of two proportions; mean_diff: absolute difference of means (0-1 ratings).
DEFAULT_METHODS: dict[str, tuple[str, float]] = {
    "input_chars": ("wasserstein", 0.1), "input_tokens": ("wasserstein", 0.1), "input_words": ("wasserstein", 0.1),
    "input_sentences": ("wasserstein", 0.1), "input_non_letter": ("wasserstein", 0.1),
    "input_script": ("js", 0.1),
    "output_chars": ("wasserstein", 0.1), "output_tokens": ("wasserstein", 0.1),
    "output_words": ("wasserstein", 0.1), "output_sentences": ("wasserstein", 0.1),
    "output_non_letter": ("wasserstein", 0.1), "output_script": ("js", 0.1),
    "refusal": ("prop_diff", 0.05), "apology": ("prop_diff", 0.05), "has_code": ("prop_diff", 0.1),
    "has_json": ("prop_diff", 0.05), "has_link": ("prop_diff", 0.05),
    "latency_ms": ("wasserstein", 0.15), "cost_usd": ("wasserstein", 0.15),
    "thumbs_up_rate": ("prop_diff", 0.1), "rating": ("mean_diff", 0.1), "correction_rate": ("prop_diff", 0.05),
    "flag_rate": ("prop_diff", 0.05), "regenerate_abandon_rate": ("prop_diff", 0.1),
}


@dataclass(frozen=True)
class DriftSettings:
    window: str = "1d"
    """FLYWHEEL_DRIFT_WINDOW: length of the current window (`30m`, `6h`, `1d`, `7d`); `drift run` without
    --current checks the last complete window of this length."""

    reference: str = "7d"
    """FLYWHEEL_DRIFT_REFERENCE: default reference: this much time right before the current window, or an
    explicit window `START/END`, or a dataset (a Parquet/Delta path with the inferences' columns)."""

    by: str = "app,model,prompt_version"
    """FLYWHEEL_DRIFT_BY: segment levels, cumulative: `app,model` checks per app and per app+model."""

    min_samples: int = 200
    """FLYWHEEL_DRIFT_MIN_SAMPLES: a segment is checked only with this many events on both sides (per feature,
    counting events that have the feature, e.g. rated ones for the rating)."""

    alpha: float = 0.001
    """FLYWHEEL_DRIFT_ALPHA: a shift must also be statistically clear (p-value below this) to count: the effect
    size guards large samples against trivial shifts, the p-value small samples against noise."""

    sustain: int = 2
    """FLYWHEEL_DRIFT_SUSTAIN: consecutive drifted windows needed before an alert ..."""

    large_factor: float = 2.0
    """FLYWHEEL_DRIFT_LARGE_FACTOR: ... unless the effect is at least this many times its threshold (and its
    p-value below alpha divided by the run's number of checks: one window alone must be beyond doubt)."""

    feedback_maturity: str = "24h"
    """FLYWHEEL_DRIFT_FEEDBACK_MATURITY: feedback signals count only the feedback given within this long after
    each inference, in both windows, so a week-old reference that has collected late expert corrections is not
    compared with a current window that has not yet. Shortened to the age of the current window's end when that
    is younger (a run right after its window compares the first minutes of feedback); corrections arriving later
    than this are not counted at all: raise it if experts usually take longer."""

    thresholds: str = ""
    """FLYWHEEL_DRIFT_THRESHOLDS: per-feature overrides, `feature=threshold` or `feature=method:threshold`,
    comma-separated (e.g. `output_chars=psi:0.2,thumbs_up_rate=0.08`)."""

    report_sample: int = 5000
    """FLYWHEEL_DRIFT_REPORT_SAMPLE: rows per side (random sample) in each Evidently HTML report. Decisions use
    every row; the report is for people, and Evidently's cost grows with rows."""

    reports: str = "alerts"
    """FLYWHEEL_DRIFT_REPORTS: which segments get an Evidently report (of their drifted features): `alerts` (the
    segments that alert), `drifted` (also those that drifted without alerting), `all`, or `none`."""

    max_reports: int = 5
    """FLYWHEEL_DRIFT_MAX_REPORTS: at most this many Evidently reports per run (alerts first, then the largest
    effects); each costs about 1-5 s."""

    reports_dir: str = ""
    """FLYWHEEL_DRIFT_REPORTS_DIR: where reports go. Default: `$FLYWHEEL_HOME/drift_reports` (and, with the lake
    on object storage, a copy under `<lake>/drift_reports` there, which the run links)."""

    report_base_url: str = ""
    """FLYWHEEL_DRIFT_REPORT_BASE_URL: the URL that serves reports_dir, so alerts link their report as a URL
    (`<base>/<run id>/<segment>.html`) instead of a path on the worker's disk: `flywheel serve` serves it with
    FLYWHEEL_SERVE_REPORTS (e.g. `http://flywheel.internal:8765/`), or a bucket reports_dir is synced to."""

    shift_threshold: float = 0.1
    """FLYWHEEL_DRIFT_SHIFT_THRESHOLD: an alert names the values of its segment's model, model_version,
    prompt_template, prompt_version and provider whose share of the traffic moved by at least this much between
    the windows (0-1), and every value new in the current window (from 1% of it)."""

    cache: bool = True
    """FLYWHEEL_DRIFT_CACHE: keep each inference's descriptors in the lake table `descriptors`, so an inference is
    described once, not in every run whose windows include it."""

    threads: int = 2
    """FLYWHEEL_DRIFT_THREADS: threads for descriptors and DuckDB."""

    memory_limit: str = "512MB"
    """FLYWHEEL_DRIFT_MEMORY_LIMIT: DuckDB's memory limit during a run."""

    overrides: dict[str, tuple[str, float]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("min_samples", "sustain", "report_sample", "threads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FLYWHEEL_DRIFT_{name.upper()} must be positive, got {getattr(self, name)!r}")
        if not 0 < self.shift_threshold <= 1:
            raise ConfigError(f"FLYWHEEL_DRIFT_SHIFT_THRESHOLD must be in (0, 1], got {self.shift_threshold!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"FLYWHEEL_DRIFT_ALPHA must be in (0, 1), got {self.alpha!r}")
        if self.reports not in ("alerts", "drifted", "all", "none"):
            raise ConfigError(f"FLYWHEEL_DRIFT_REPORTS must be alerts, drifted, all or none, got {self.reports!r}")
        object.__setattr__(self, "overrides", _parse_thresholds(self.thresholds))
        try:
            parse_duration(self.feedback_maturity)
        except DurationError as exc:
            raise ConfigError(f"FLYWHEEL_DRIFT_FEEDBACK_MATURITY: {exc}") from exc

    @property
    def maturity(self) -> timedelta:
        """`feedback_maturity` as a timedelta."""
        return parse_duration(self.feedback_maturity)

    def method(self, feature: str) -> tuple[str, float]:
        """(method, threshold) deciding `feature`."""
        return self.overrides.get(feature) or DEFAULT_METHODS[feature]

    def levels(self, by: str | None = None) -> list[tuple[str, ...]]:
        cols = [c.strip() for c in (by if by is not None else self.by).split(",") if c.strip()]
        for c in cols:
            if c not in SEGMENT_COLUMNS:
                raise ConfigError(f"cannot segment by {c!r}; choose from {', '.join(SEGMENT_COLUMNS)}")
        return [tuple(cols[:i + 1]) for i in range(len(cols))] or [()]

    def reports_path(self, home: Path) -> Path:
        return Path(self.reports_dir) if self.reports_dir else Path(home) / "drift_reports"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DriftSettings":
        return env_settings(cls, "FLYWHEEL_DRIFT_", environ)


SEGMENT_COLUMNS = ("app", "model", "model_version", "prompt_template", "prompt_version", "provider")


def _parse_thresholds(spec: str) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in DEFAULT_METHODS or not value:
            raise ConfigError(f"FLYWHEEL_DRIFT_THRESHOLDS: {item!r} is not `feature=[method:]threshold` with a "
                              f"known feature ({', '.join(DEFAULT_METHODS)})")
        method, _, thr = value.rpartition(":")
        method = method or DEFAULT_METHODS[name][0]
        if method not in ("wasserstein", "psi", "js", "prop_diff", "mean_diff"):
            raise ConfigError(f"FLYWHEEL_DRIFT_THRESHOLDS: unknown method {method!r} in {item!r}")
        try:
            out[name] = (method, float(thr))
        except ValueError:
            raise ConfigError(f"FLYWHEEL_DRIFT_THRESHOLDS: {thr!r} in {item!r} is not a number") from None
    return out

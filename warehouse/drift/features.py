"""What a drift run compares: the features (descriptors and feedback signals), their kind (data or model drift),
and the stage's error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import FlywheelError
from flywheel.warehouse.drift.descriptors import SCRIPTS
from flywheel.warehouse.drift.settings import DEFAULT_METHODS

DATA_FEATURES = ("input_chars", "input_tokens", "input_words", "input_sentences", "input_non_letter",
                 "input_script")
MODEL_FEATURES = ("output_chars", "output_tokens", "output_words", "output_sentences", "output_non_letter",
                  "output_script", "refusal", "apology", "has_code", "has_json", "has_link", "latency_ms",
                  "cost_usd")
FEEDBACK_FEATURES = ("thumbs_up_rate", "rating", "correction_rate", "flag_rate", "regenerate_abandon_rate")
FEATURES = DATA_FEATURES + MODEL_FEATURES + FEEDBACK_FEATURES
CATEGORICAL = ("input_script", "output_script")
assert set(FEATURES) == set(DEFAULT_METHODS)


class DriftError(FlywheelError):
    """A drift run could not be done; the message says which window or table and what to do."""


def drift_kind(feature: str) -> str:
    return "data" if feature in DATA_FEATURES else "model"


def feature_values(table: pa.Table, name: str) -> np.ndarray:
    """One feature's column as numbers: script codes (index in `SCRIPTS`) for categories, floats otherwise."""
    col = table[name]
    if name in CATEGORICAL:
        codes = pc.index_in(pc.cast(col, pa.string()), value_set=pa.array(SCRIPTS))
        return np.asarray(pc.fill_null(codes, 0), dtype=np.int64)
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
